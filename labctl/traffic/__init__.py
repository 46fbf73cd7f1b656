"""Captured traffic, explained: from pcap bytes to dialogues and to the journey of a message.

Pure (bytes in, objects out; no socket, no file opened, no clock read), one module per concern:

- :mod:`~labctl.traffic.pcap`: read pcap/pcapng (:class:`CaptureReader`), merge hosts' captures
  in time order (:func:`merge_frames`) and into one pcapng (:func:`write_merged_pcapng`);
- :mod:`~labctl.traffic.packet`: link layer, IPv4/IPv6, TCP/UDP;
- :mod:`~labctl.traffic.tcp`: TCP stream reassembly;
- :mod:`~labctl.traffic.smtp`, :mod:`~labctl.traffic.pop3`, :mod:`~labctl.traffic.dns`: the dialogue
  decoders (SMTP and POP3 framing shared with the lab's servers: services.textwire,
  services.smtp.wire, services.pop3.core),
  the first two over :mod:`~labctl.traffic.dialogue` (reading lines, events, credentials);
  :mod:`~labctl.traffic.message`: a message's Message-ID, Subject and size;
- :mod:`~labctl.traffic.decode`: :class:`TrafficDecoder`, frames in, conversations out (incremental);
- :mod:`~labctl.traffic.model`: conversations, events, messages, and their JSON;
  :mod:`~labctl.traffic.payload`: what each event carried, typed (DNS questions and records, SMTP
  reply, POP3 status, credentials, message summary);
- :mod:`~labctl.traffic.render`: text as in the reference article, JSON, filters;
- :mod:`~labctl.traffic.follow`: what is new when a live capture grows;
- :mod:`~labctl.traffic.journey`, :mod:`~labctl.traffic.diagram`: the six steps, Mermaid and SVG;
- :mod:`~labctl.traffic.cli`: ``labctl traffic`` and ``labctl trace``.
"""

# What the decoders explain (the rest of the capture is summarised with --all): `traffic --proto`.
PROTOCOL_CHOICES = ("smtp", "pop3", "imap", "dns")
