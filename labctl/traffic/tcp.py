"""TCP stream reassembly: segments in, two ordered byte streams per connection out.

Fed :class:`~labctl.traffic.packet.Segment` objects in capture order, a :class:`Reassembler`
keeps, for each connection, the bytes each side sent in sequence-number order (RFC 9293 §3.4),
with the capture time of every chunk so that a dialogue line gets the time its first octet was seen.

What a real capture brings, and what is done about it:

* retransmissions and overlapping segments: octets already delivered are dropped, so each
  appears once, with the time of its first copy;
* out-of-order segments: held until the hole before them is filled;
* a hole that is never filled (a packet the capture missed): at the end of the capture (or of
  what has been fed so far, see :meth:`Stream.view`) the held data is delivered after a
  recorded :class:`Gap`, never dropped and never a crash;
* a capture that starts mid-connection (no SYN seen): the stream starts at the first octet seen
  and the connection is marked :attr:`Connection.joined_midway`;
* a merged capture holding the same packet twice (seen on the client's host and on the server's):
  packets of the same connection are recognised by the 4-tuple and the client's initial sequence
  number (ISN), whatever interface they were captured on, and fed into the same streams, where
  the second copy is a retransmission like any other. Each conversation therefore appears once,
  timed by the vantage that saw each octet first, and a packet missed by one vantage is filled
  in by the other. :attr:`Connection.vantages` lists where it was seen;
* port reuse: a SYN with a new ISN on a 4-tuple starts a new connection.

It is incremental: :meth:`Reassembler.add` may be called again after the streams were read
(``labctl traffic --follow``); each :class:`Connection` has a :attr:`~Connection.version` that
changes whenever it does, so a caller re-decodes only what changed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from labctl.traffic.packet import ACK, FIN, RST, SYN, Segment

# Servers the lab runs: when no SYN was seen, the side using one of these ports is the server.
SERVER_PORTS = frozenset({25, 53, 110, 143, 465, 587, 993, 995})
# Out-of-order data held waiting for a hole to fill, per direction. Past this the capture has
# missed the packet for good (a lab round trip is well under a second of data): deliver with a gap.
MAX_PENDING = 8 * 1024 * 1024
_HALF = 1 << 31
_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class Gap:
    """Octets the capture missed: ``missing`` of them belong just before stream offset ``at``."""

    at: int
    missing: int


@dataclass(frozen=True)
class StreamView:
    """One direction's bytes as far as they are known, with their capture times and holes."""

    data: bytes
    starts: list[int]  # stream offsets where a chunk begins, ascending
    stamps: list[int]  # the capture time (ns) of each chunk
    gaps: list[Gap]

    def time_at(self, offset: int) -> int:
        """The capture time (ns) of the octet at ``offset``."""
        if not self.stamps:
            return 0
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.stamps[max(i, 0)]

    def gap_in(self, start: int, end: int) -> int:
        """How many octets the capture missed within ``data[start:end]`` (0: none)."""
        if not self.gaps:
            return 0
        return sum(g.missing for g in self.gaps if start <= g.at < end)


class Stream:
    """The bytes one side of a connection sent, in sequence order."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.starts: list[int] = []
        self.stamps: list[int] = []
        self.gaps: list[Gap] = []
        self.next_seq: int | None = None  # the sequence number of the next octet expected
        self.offset = 0  # sequence space consumed so far (octets delivered plus gaps); never wraps
        self.isn: int | None = None
        self.pending: dict[int, tuple[bytes | memoryview, int]] = {}  # offset where it starts -> (data, ts)
        self.pending_size = 0
        self.duplicates = 0  # octets seen again (retransmissions, the other vantage's copy)
        self.fin_ns: int | None = None

    def syn(self, isn: int) -> None:
        if self.isn is None and not self.data:
            self.isn = isn
            self.next_seq = (isn + 1) % _MOD  # the SYN takes one sequence number (RFC 9293 §3.4)

    def add(self, seq: int, payload: bytes | memoryview, ts: int) -> None:
        if self.next_seq is None:
            self.next_seq = seq  # joined mid-way: start at the first octet seen
        ahead = (seq - self.next_seq) % _MOD
        if ahead >= _HALF:  # behind: (partly) seen before
            behind = _MOD - ahead
            if behind >= len(payload):
                self.duplicates += len(payload)
                return
            self.duplicates += behind
            payload, ahead = payload[behind:], 0
        if ahead == 0:
            self._append(payload, ts)
            if self.pending:
                self._drain()
            return
        at = self.offset + ahead
        held = self.pending.get(at)
        if held is None or len(held[0]) < len(payload):
            self.pending_size += len(payload) - (len(held[0]) if held else 0)
            self.pending[at] = (payload, ts)
        else:
            self.duplicates += len(payload)
        if self.pending_size > MAX_PENDING:
            self.flush()

    def _append(self, payload: bytes | memoryview, ts: int) -> None:
        if not self.stamps or self.stamps[-1] != ts:
            self.starts.append(len(self.data))
            self.stamps.append(ts)
        self.data += payload
        self.offset += len(payload)
        assert self.next_seq is not None
        self.next_seq = (self.next_seq + len(payload)) % _MOD

    def _drain(self) -> None:
        """Deliver held segments the stream has now reached."""
        while self.pending:
            at = min(self.pending)
            if at > self.offset:
                return
            payload, ts = self.pending.pop(at)
            self.pending_size -= len(payload)
            overlap = self.offset - at
            self.duplicates += min(overlap, len(payload))
            if overlap < len(payload):
                self._append(payload[overlap:], ts)

    def flush(self) -> None:
        """Give up on every hole: deliver all held data, each hole recorded as a :class:`Gap`."""
        while self.pending:
            at = min(self.pending)
            missing = at - self.offset
            if missing > 0:
                self.gaps.append(Gap(len(self.data), missing))
                assert self.next_seq is not None
                self.next_seq = (self.next_seq + missing) % _MOD
                self.offset = at
            self._drain()

    def view(self) -> StreamView:
        """The stream as known now; data still held behind a hole is shown after a :class:`Gap`.

        Does not change the stream: more segments may still fill the hole (``--follow``).
        """
        if not self.pending:
            return StreamView(bytes(self.data), self.starts, self.stamps, self.gaps)
        copy = Stream()
        copy.data, copy.starts, copy.stamps, copy.gaps = (bytearray(self.data), list(self.starts),
                                                           list(self.stamps), list(self.gaps))
        copy.next_seq, copy.offset, copy.pending = self.next_seq, self.offset, dict(self.pending)
        copy.flush()
        return StreamView(bytes(copy.data), copy.starts, copy.stamps, copy.gaps)


Address = tuple[str, int]  # (IP address, port)


@dataclass
class Connection:
    """One TCP connection: its two endpoints, two streams, and how it opened and closed."""

    client: Address
    server: Address
    first_ns: int
    last_ns: int = 0
    joined_midway: bool = False  # the capture started after the SYN
    syn_ns: int | None = None  # the client's SYN
    accepted_ns: int | None = None  # the server's SYN-ACK
    reset_ns: int | None = None
    reset_by: str | None = None  # "client" or "server"
    # SYNs seen per capture interface, retransmissions included: one SYN captured on both ends
    # is one attempt, so the count is the most any one vantage saw (the sender's, which sees all).
    syns_seen: dict[str, int] = field(default_factory=dict)
    vantages: set[str] = field(default_factory=set)
    to_server: Stream = field(default_factory=Stream)
    to_client: Stream = field(default_factory=Stream)
    version: int = 0  # changes whenever a segment changed this connection

    @property
    def refused(self) -> bool:
        """The server answered the SYN with RST: nothing listens on that port (RFC 9293 §3.10.7.1)."""
        return self.accepted_ns is None and self.reset_by == "server" and self.syn_ns is not None

    @property
    def unanswered(self) -> bool:
        """SYNs that got no answer at all (the host is down or unreachable)."""
        return self.syn_ns is not None and self.accepted_ns is None and self.reset_ns is None

    @property
    def syn_attempts(self) -> int:
        """SYNs the client sent, retransmissions included, each counted once across captures."""
        return max(self.syns_seen.values(), default=0)

    @property
    def client_isn(self) -> int | None:
        return self.to_server.isn


def _canonical(a: Address, b: Address) -> tuple[Address, Address]:
    return (a, b) if a <= b else (b, a)


def guess_server(src: Address, dst: Address) -> bool:
    """With no SYN seen: is ``dst`` the server? By the well-known port, else the lower port."""
    if dst[1] in SERVER_PORTS and src[1] not in SERVER_PORTS:
        return True
    if src[1] in SERVER_PORTS and dst[1] not in SERVER_PORTS:
        return False
    return dst[1] <= src[1]


class Reassembler:
    """Every TCP connection in a capture, fed one segment at a time in capture order."""

    def __init__(self) -> None:
        self._current: dict[tuple[Address, Address], Connection] = {}
        self.connections: list[Connection] = []  # in order of their first packet

    def _new(self, key: tuple[Address, Address], client: Address, server: Address, ts: int,
             midway: bool) -> Connection:
        conn = Connection(client, server, ts, ts, joined_midway=midway)
        self._current[key] = conn
        self.connections.append(conn)
        return conn

    def add(self, seg: Segment) -> None:
        src, dst = (seg.src, seg.sport), (seg.dst, seg.dport)
        key = _canonical(src, dst)
        conn = self._current.get(key)
        flags = seg.flags
        if flags & SYN and not flags & ACK:  # a client opening (RFC 9293 §3.5)
            if conn is None or (conn.client_isn != seg.seq and (conn.client != src or conn.to_server.data
                                                                 or conn.reset_ns or conn.to_server.fin_ns)):
                conn = self._new(key, src, dst, seg.ts_ns, midway=False)
            if conn.client == src and conn.client_isn in (None, seg.seq):
                conn.to_server.syn(seg.seq)
                conn.syns_seen[seg.vantage] = conn.syns_seen.get(seg.vantage, 0) + 1
                if conn.syn_ns is None:
                    conn.syn_ns = seg.ts_ns
        elif conn is None:
            server_is_dst = not flags & SYN and guess_server(src, dst)  # a SYN-ACK comes from the server
            client, server = (src, dst) if server_is_dst else (dst, src)
            conn = self._new(key, client, server, seg.ts_ns, midway=True)
        from_client = src == conn.client
        stream = conn.to_server if from_client else conn.to_client
        if flags & SYN and flags & ACK and not from_client:
            stream.syn(seg.seq)
            if conn.accepted_ns is None:
                conn.accepted_ns = seg.ts_ns
        conn.vantages.add(seg.vantage)
        conn.last_ns = max(conn.last_ns, seg.ts_ns)
        conn.version += 1
        if seg.payload:
            stream.add(seg.seq + (1 if flags & SYN else 0), seg.payload, seg.ts_ns)
        if flags & FIN and stream.fin_ns is None:
            stream.fin_ns = seg.ts_ns
        if flags & RST and conn.reset_ns is None:
            conn.reset_ns = seg.ts_ns
            conn.reset_by = "client" if from_client else "server"

    def finish(self) -> None:
        """The capture is complete: every hole left is a gap for good."""
        for conn in self.connections:
            conn.to_server.flush()
            conn.to_client.flush()
