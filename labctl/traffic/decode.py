"""From captured frames to conversations: the one entry point the CLI and the lab use.

>>> decoder = TrafficDecoder(names={"10.89.0.10": "andy"})
>>> decoder.feed_captures({"smtp": [pcap_bytes]})     # or feed_capture(bytes), feed_frames(frames)
>>> conversations = decoder.conversations()

or, for whole captures, :func:`decode_sources`.

Which decoder a connection gets is decided by the server's port (:data:`PROTOCOLS`); traffic on
that port that turns out not to be that protocol is kept, marked undecodable, with a preview.

TLS (:mod:`labctl.traffic.tls`): after an accepted STARTTLS/STLS, and from the start on the
implicit-TLS ports (:data:`IMPLICIT_TLS`), the records are read with the key log the decoder was
given (:meth:`TrafficDecoder.add_keys`); the plaintext inside goes to the same dialogue decoder,
resumed after the clear part, and its events are marked ``decrypted``. Without keys, or with
``decrypt=False``, the records themselves are the events: what an outsider sees.

Incremental: ``feed_*`` may be called again later (``--follow``). TCP reassembly is incremental;
the dialogue of a connection is re-decoded from its streams when it changed since the last call
to :meth:`TrafficDecoder.conversations` (each dialogue decoder is one linear pass, and a lab's
connections are short), and cached otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from labctl.traffic import arp, imap, pop3, smtp, tls
from labctl.traffic import dns as dns_decoder
from labctl.traffic.dialogue import gap
from labctl.traffic.model import CLIENT, NOTE, SERVER, Conversation, Endpoint, Event, MailMessage, TlsSummary, preview
from labctl.traffic.packet import Arp, Datagram, Segment, parse_frame
from labctl.traffic.payload import TlsStart, Unanswered, Undecoded
from labctl.traffic.pcap import CaptureReader, Frame, merge_frames
from labctl.traffic.tcp import Address, Connection, Reassembler, StreamView

Decoder = Callable[..., tuple[list[Event], list[MailMessage], bool]]

# The protocol a server port speaks in the lab (SMTP relay 25 and submission 587, POP3 110, IMAP 143, DNS 53;
# under implicit TLS: submission 465, RFC 8314; POP3 995 and IMAP 993, RFC 8314 §5.1).
PROTOCOLS: Mapping[int, str] = {25: "smtp", 587: "smtp", 110: "pop3", 143: "imap", 53: "dns",
                                465: "smtp", 995: "pop3", 993: "imap"}
IMPLICIT_TLS = frozenset({465, 993, 995})
TCP_DECODERS: Mapping[str, Decoder] = {"smtp": smtp.decode, "pop3": pop3.decode, "imap": imap.decode}


@dataclass
class _UdpFlow:
    client: Address
    server: Address
    first_ns: int
    last_ns: int = 0
    datagrams: list[tuple[int, bool, bytes]] = field(default_factory=list)  # (ts, from client, payload)
    seen: set[tuple[bool, bytes]] = field(default_factory=set)
    vantages: set[str] = field(default_factory=set)


class TrafficDecoder:
    """Feed it frames (in capture order), ask it for conversations, as often as you like."""

    def __init__(self, names: Mapping[str, str] | None = None, *, show_bodies: bool = False,
                 decrypt: bool = True) -> None:
        self.names = dict(names or {})
        self.show_bodies = show_bodies
        self.decrypt = decrypt  # False: TLS shown as records only (--no-decrypt)
        self.keys = tls.KeyLog()  # the lab's TLS secrets known so far
        self.tcp = Reassembler()
        self._udp: dict[tuple[Address, Address], _UdpFlow] = {}
        self._udp_order: list[_UdpFlow] = []
        self._cache: dict[int, tuple[int, Conversation]] = {}
        self.latest_ns = 0  # the capture time of the newest frame fed so far
        self.problems: list[str] = []  # why a capture fed so far was read only up to some point
        self._arp: list[Arp] = []

    # -- input --------------------------------------------------------------------------------------

    def feed_capture(self, data: bytes, source: str = "") -> int:
        """Feed one pcap/pcapng file's bytes; the number of frames read."""
        reader = CaptureReader(data, source)
        count = self.feed_frames(reader)
        if reader.problem is not None:
            self.problems.append(reader.problem)
        for text in reader.secrets:
            self.add_keys(text)
        return count

    def feed_captures(self, sources: Mapping[str, Iterable[bytes]], since: float | None = None) -> int:
        """Feed several hosts' capture files ({host: [file bytes, ...]}), merged in time order;
        without their frames captured before ``since`` (seconds since the epoch)."""
        secrets: list[str] = []
        count = self.feed_frames(merge_frames(sources, since, self.problems, secrets))
        for text in secrets:
            self.add_keys(text)
        return count

    def wants_keys(self) -> bool:
        """Is there TLS so far that more key log may open? (A caller reads the hosts' key logs only then:
        a clear lab's never.)"""
        return self.decrypt and any(c.tls is not None and not c.tls.decrypted for c in self.conversations())

    def add_keys(self, text: str) -> int:
        """Add key log text (NSS key log format: the hosts' key logs, a pcapng's Decryption Secrets
        Block); how many secrets were new. New secrets re-decode the TLS connections they open."""
        return self.keys.add_text(text)

    def feed_frames(self, frames: Iterable[Frame]) -> int:
        count = 0
        latest = self.latest_ns
        add_tcp = self.tcp.add
        for frame in frames:
            count += 1
            if frame.ts_ns > latest:
                latest = frame.ts_ns
            packet = parse_frame(frame)
            if isinstance(packet, Segment):
                add_tcp(packet)
            elif isinstance(packet, Datagram):
                self._add_udp(packet)
            elif isinstance(packet, Arp):
                self._arp.append(packet)
        self.latest_ns = latest
        return count

    @property
    def latest(self) -> float:
        """The capture time of the newest frame fed so far (seconds since the epoch; 0: none yet)."""
        return self.latest_ns / 1e9

    def _add_udp(self, d: Datagram) -> None:
        src, dst = (d.src, d.sport), (d.dst, d.dport)
        flow = self._udp.get((src, dst))
        from_client = True
        if flow is None:
            flow = self._udp.get((dst, src))
            from_client = False
        if flow is None:
            # The side on a known server port (53) is the server; else the receiver of the first datagram.
            client, server = (dst, src) if d.sport in PROTOCOLS and d.dport not in PROTOCOLS else (src, dst)
            from_client = client == src
            flow = _UdpFlow(client, server, d.ts_ns)
            self._udp[(client, server)] = flow
            self._udp_order.append(flow)
        # The same datagram captured on both hosts: keep the first copy (UDP has no sequence
        # number to tell a copy from a resend; the lab's resolver never resends identical bytes
        # within one flow, it changes the query id).
        if (from_client, d.payload) in flow.seen:
            return
        flow.seen.add((from_client, d.payload))
        flow.datagrams.append((d.ts_ns, from_client, d.payload))
        flow.last_ns = max(flow.last_ns, d.ts_ns)
        flow.vantages.add(d.vantage)

    # -- output -------------------------------------------------------------------------------------

    def endpoint(self, addr: Address) -> Endpoint:
        return Endpoint(addr[0], addr[1], self.names.get(addr[0]))

    def conversations(self) -> list[Conversation]:
        """Every conversation so far, in order of their start."""
        out = [self._tcp_conversation(c) for c in self.tcp.connections]
        out += [self._udp_conversation(f) for f in self._udp_order]
        out.sort(key=lambda c: c.start)
        return out

    def _tcp_conversation(self, conn: Connection) -> Conversation:
        version = conn.version + (len(self.keys) << 40)  # a new key re-decodes (it may open this one)
        cached = self._cache.get(id(conn))
        if cached is not None and cached[0] == version:
            return cached[1]
        conv = decode_connection(conn, self.endpoint, show_bodies=self.show_bodies, keys=self.keys,
                                 decrypt=self.decrypt)
        self._cache[id(conn)] = (version, conv)
        return conv

    def neighbour_lookups(self) -> list[arp.NeighbourLookup]:
        """Every ARP lookup so far (an unanswered one: a neighbour switched off or unplugged)."""
        return arp.lookups(self._arp, self.names)

    def _udp_conversation(self, flow: _UdpFlow) -> Conversation:
        protocol = PROTOCOLS.get(flow.server[1], "udp")
        events: list[Event] = []
        decodable = True
        for ts, from_client, payload in flow.datagrams:
            if protocol == "dns":
                event = dns_decoder.describe(payload, ts / 1e9, from_client)
                decodable = decodable and event.kind != "undecodable"
            else:
                event = Event(ts / 1e9, CLIENT if from_client else SERVER, "data", f"<{len(payload)} octets>")
            events.append(event)
        return Conversation(protocol, "udp", self.endpoint(flow.client), self.endpoint(flow.server),
                            flow.first_ns / 1e9, flow.last_ns / 1e9, events, [], tuple(sorted(flow.vantages)),
                            decodable=decodable, state="closed")


def _state(conn: Connection) -> str:
    if conn.refused:
        return "refused"
    if conn.unanswered:
        return "unanswered"
    if conn.reset_ns is not None:
        return "reset"
    if conn.to_server.fin_ns is not None or conn.to_client.fin_ns is not None:
        return "closed"
    return "open"


def decode_connection(conn: Connection, endpoint: Callable[[Address], Endpoint], *, show_bodies: bool = False,
                      keys: tls.KeyLog | None = None, decrypt: bool = True) -> Conversation:
    """The conversation of one TCP connection: its dialogue, framed by how it opened and closed."""
    protocol = PROTOCOLS.get(conn.server[1], "tcp")
    to_server, to_client = conn.to_server.view(), conn.to_client.view()
    events: list[Event] = []
    messages: list[MailMessage] = []
    decodable = True
    summary: TlsSummary | None = None
    state = _state(conn)
    t0 = conn.first_ns / 1e9
    if state == "refused":
        events.append(Event(t0, NOTE, "refused", f"connection refused: RST in answer to SYN "
                            f"(nothing listens on port {conn.server[1]})"))
    elif state == "unanswered":
        tries = conn.syn_attempts
        events.append(Event(t0, NOTE, "unanswered", f"connection attempt unanswered: {tries} SYN"
                            f"{'s' if tries != 1 else ''}, no reply (host down or unreachable)",
                            payload=Unanswered(tries)))
    elif conn.joined_midway:
        events.append(Event(t0, NOTE, "connect", "capture joined the connection mid-way (no SYN seen)"))
    if to_server.data or to_client.data:
        decoder = TCP_DECODERS.get(protocol)
        if protocol == "dns":
            events += _dns_tcp(to_server, to_client)
        elif decoder is not None and conn.server[1] in IMPLICIT_TLS:
            inside = _inside_tls(decoder, to_server, to_client, None, t0, keys, decrypt, show_bodies, state)
            events += inside.events
            messages, decodable, summary = inside.messages, inside.decodable, inside.summary
        elif decoder is not None:
            dialogue, messages, decodable = decoder(to_server, to_client, midway=conn.joined_midway,
                                                    show_bodies=show_bodies)
            start = next((e for e in dialogue if e.kind == "tls" and isinstance(e.payload, TlsStart)), None)
            if start is not None:
                inside = _inside_tls(decoder, to_server, to_client, start, t0, keys, decrypt, show_bodies, state)
                dialogue = [e for e in dialogue if e is not start] + inside.events
                messages, summary = messages + inside.messages, inside.summary
            events += dialogue
        else:
            events += _summary(to_server, to_client)
    for hole in to_server.gaps + to_client.gaps:
        if protocol not in TCP_DECODERS:
            events.append(gap(t0, hole.missing))
    if conn.reset_ns is not None and state == "reset":
        events.append(Event(conn.reset_ns / 1e9, NOTE, "reset", f"connection reset by the {conn.reset_by}"))
    events.sort(key=lambda e: e.time)
    return Conversation(protocol, "tcp", endpoint(conn.client), endpoint(conn.server), t0, conn.last_ns / 1e9,
                        events, messages, tuple(sorted(conn.vantages)), conn.joined_midway, decodable, state,
                        summary)


@dataclass
class _Inside:
    events: list[Event]
    messages: list[MailMessage]
    decodable: bool
    summary: TlsSummary


def _inside(text: str) -> str:
    """A login line's note, for a secret that crossed inside TLS (the decoders' notes say clear text)."""
    return text.replace("a password in clear text", "a password, decrypted from TLS").replace(
        ": clear text)", ": decrypted from TLS)")


def _inside_tls(decoder: Decoder, to_server: StreamView, to_client: StreamView, start: Event | None, t0: float,
                keys: tls.KeyLog | None, decrypt: bool, show_bodies: bool, state: str) -> _Inside:
    """A connection's TLS: the note saying what it was, then the dialogue inside (decrypted, by the
    same decoder, resumed after STARTTLS), or the records an outsider sees; ``start``: the tls event
    of an accepted STARTTLS/STLS (None: an implicit-TLS port, TLS from the first octet)."""
    at = start.payload if start is not None and isinstance(start.payload, TlsStart) else TlsStart(0, 0)
    session = tls.decode(to_server, to_client, keys, started="starttls" if start else "implicit",
                         client_at=at.client_at, server_at=at.server_at, decrypt=decrypt)
    summary = session.summary
    if start is None and not session.records and (to_server.data or to_client.data):
        events = [Event(view.time_at(0) / 1e9, direction, "undecodable", f"<not TLS: {preview(view.data)}>",
                        payload=Undecoded(len(view.data)), complete=False)
                  for view, direction in ((to_server, CLIENT), (to_client, SERVER)) if view.data]
        return _Inside(events, [], False, replace(summary, problem="not TLS"))
    # While the connection is open the note may still change (a key may still come, the certificate
    # is still in the encrypted handshake), and so may the records shown for want of keys: partial,
    # so --follow prints nothing past them until they are settled, and no line is taken back.
    settled = state != "open" or not decrypt or summary.decrypted
    noted = state != "open" or (summary.version is not None and (not decrypt or (
        summary.decrypted and session.handshake_done)))
    when = start.time if start is not None else (session.records[0].time if session.records else t0)
    events = [Event(when, NOTE, "tls", tls.note(summary), complete=noted)]
    if session.clear_before:
        clear = to_server.data[at.client_at:at.client_at + session.clear_before]
        events.append(Event(to_server.time_at(at.client_at) / 1e9, CLIENT, "undecodable",
                            f"<sent in clear after STARTTLS, before the TLS handshake (a server must discard "
                            f"it, RFC 3207 §4.2): {preview(clear)}>", payload=Undecoded(len(clear))))
    messages: list[MailMessage] = []
    decodable = True
    opened = decrypt and session.keys_found and summary.decrypted
    if opened and (session.to_server.data or session.to_client.data):
        inner, messages, decodable = decoder(session.to_server, session.to_client, midway=False,
                                             show_bodies=show_bodies, resumed=start is not None)
        events += [replace(e, decrypted=True, text=_inside(e.text) if e.secrets else e.text) for e in inner]
    for record in session.records:
        # An alert is shown too, opened or not: the end of a session, or why its handshake failed.
        if not opened or record.problem is not None or (record.sealed and record.inner is None) or (
                record.inner or "").startswith("alert"):
            events.append(Event(record.time, CLIENT if record.from_client else SERVER, "record", record.describe(),
                                complete=settled and record.complete))
    return _Inside(events, messages, decodable, summary)


def _summary(to_server: StreamView, to_client: StreamView) -> list[Event]:
    events = []
    for view, direction in ((to_server, CLIENT), (to_client, SERVER)):
        if view.data:
            events.append(Event(view.time_at(0) / 1e9, direction, "data", f"<{len(view.data)} octets>",
                                complete=False))  # the count grows with the connection
    return events


def _dns_tcp(to_server: StreamView, to_client: StreamView) -> list[Event]:
    events = []
    for view, from_client in ((to_server, True), (to_client, False)):
        for offset, message in dns_decoder.tcp_messages(view.data):
            events.append(dns_decoder.describe(message, view.time_at(offset) / 1e9, from_client))
    return events


def decode_sources(sources: Mapping[str, Iterable[bytes]], names: Mapping[str, str] | None = None, *,
                   since: float | None = None, show_bodies: bool = False) -> TrafficDecoder:
    """A decoder fed whole captures ({host: [file bytes, ...]}, see :meth:`TrafficDecoder.feed_captures`)
    to their end: ask it for :meth:`~TrafficDecoder.conversations`, and for its ``problems``."""
    decoder = TrafficDecoder(names, show_bodies=show_bodies)
    decoder.feed_captures(sources, since)
    decoder.tcp.finish()
    return decoder
