"""Captured traffic, explained: from pcap bytes to dialogues and to the journey of a message.

Pure (bytes in, objects out; no socket, no file opened, no clock read), one module per concern:

- :mod:`~labctl.traffic.pcap`: read pcap/pcapng (:class:`CaptureReader`, :func:`read_frames`),
  merge hosts' captures into one pcapng (:func:`write_merged_pcapng`, :func:`merge_frames`);
- :mod:`~labctl.traffic.packet`: link layer, IPv4/IPv6, TCP/UDP;
- :mod:`~labctl.traffic.tcp`: TCP stream reassembly;
- :mod:`~labctl.traffic.smtp`, :mod:`~labctl.traffic.pop3`, :mod:`~labctl.traffic.dns`: the dialogue
  decoders (SMTP and POP3 framing shared with the lab's servers: services.textwire,
  services.smtp.wire, services.pop3.core);
- :mod:`~labctl.traffic.decode`: :class:`TrafficDecoder`, frames in, conversations out (incremental);
- :mod:`~labctl.traffic.model`: conversations, events, messages, and their JSON;
- :mod:`~labctl.traffic.render`: text as in the reference article, JSON, filters;
- :mod:`~labctl.traffic.follow`: what is new when a live capture grows;
- :mod:`~labctl.traffic.journey`, :mod:`~labctl.traffic.diagram`: the six steps, Mermaid and SVG;
- :mod:`~labctl.traffic.cli`: ``labctl traffic`` and ``labctl trace``.
"""
