"""Build captures for the traffic tests: Ethernet/IPv4/TCP/UDP frames, pcap and pcapng files.

Written independently of labctl.traffic.pcap's writer (struct by hand, from the file-format
specifications), so the reader is checked against something it did not produce.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
T0 = 1_790_000_000.0  # a fixed capture start (2026), so tests never read the clock

ANDY, SMTP, NS, MAIL, BETTY = "10.89.0.10", "10.89.0.25", "10.89.0.53", "10.89.0.110", "10.89.0.20"
NAMES = {ANDY: "andy", SMTP: "smtp.ouhk.example", NS: "ns.lab.example", MAIL: "mail.stevenchoy.example",
         BETTY: "betty"}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq % 2**32, ack % 2**32, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ether(ip_packet: bytes, ethertype: int = 0x0800) -> bytes:
    return b"\x02\x42\x0a\x59\x00\x19" + b"\x02\x42\x0a\x59\x00\x6e" + struct.pack("!H", ethertype) + ip_packet


@dataclass
class Packet:
    time: float
    frame: bytes  # Ethernet
    host: str = "h"  # where it was captured


def pcap(packets: Iterable[Packet], *, big_endian: bool = False, nanos: bool = False, linktype: int = 1,
         frames: Sequence[bytes] | None = None) -> bytes:
    """A classic pcap file (libpcap format)."""
    o = ">" if big_endian else "<"
    out = [struct.pack(o + "IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for p in packets:
        sec = int(p.time)
        frac = round((p.time - sec) * (1e9 if nanos else 1e6))
        out.append(struct.pack(o + "IIII", sec, frac, len(p.frame), len(p.frame)) + p.frame)
    return b"".join(out)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng(packets: Iterable[Packet], *, tsresol: int | None = None, linktype: int = 1) -> bytes:
    """A pcapng file: one interface per distinct ``Packet.host`` (if_name), then EPBs."""
    units = 10 ** 6 if tsresol is None else (2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10 ** tsresol)
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    ids: dict[str, int] = {}
    blocks = [shb]
    for p in packets:
        if p.host not in ids:
            ids[p.host] = len(ids)
            opts = _opt(2, p.host.encode())
            if tsresol is not None:
                opts += _opt(9, bytes([tsresol]))
            blocks.append(_block(1, struct.pack("<HHI", linktype, 0, 0) + opts + _opt(0, b"")))
        ts = round(p.time * units)
        blocks.append(_block(6, struct.pack("<IIIII", ids[p.host], ts >> 32, ts & 0xFFFFFFFF, len(p.frame),
                                            len(p.frame)) + p.frame))
    return b"".join(blocks)


@dataclass
class Tcp:
    """One TCP connection's packets, written as a script: handshake, data each way, close."""

    client: str
    cport: int
    server: str
    sport: int
    isn_c: int = 1000
    isn_s: int = 5000
    host: str = "h"
    t: float = T0
    step: float = 0.001
    packets: list[Packet] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cseq = self.isn_c + 1
        self.sseq = self.isn_s + 1

    def _emit(self, from_client: bool, seq: int, flags: int, payload: bytes = b"", at: float | None = None) -> Packet:
        src, sp, dst, dp = ((self.client, self.cport, self.server, self.sport) if from_client
                            else (self.server, self.sport, self.client, self.cport))
        ack = self.sseq if from_client else self.cseq
        self.t = at if at is not None else self.t + self.step
        p = Packet(self.t, ether(ipv4(src, dst, 6, tcp(sp, dp, seq, ack, flags, payload))), self.host)
        self.packets.append(p)
        return p

    def handshake(self) -> Tcp:
        self._emit(True, self.isn_c, SYN)
        self._emit(False, self.isn_s, SYN | ACK)
        self._emit(True, self.cseq, ACK)
        return self

    def segment(self, from_client: bool, data: bytes) -> Packet:
        """One data segment, advancing that side's sequence number."""
        seq = self.cseq if from_client else self.sseq
        p = self._emit(from_client, seq, PSH | ACK, data)
        if from_client:
            self.cseq += len(data)
        else:
            self.sseq += len(data)
        return p

    def c(self, data: bytes) -> Tcp:
        self.segment(True, data)
        return self

    def s(self, data: bytes) -> Tcp:
        self.segment(False, data)
        return self

    def close(self) -> Tcp:
        self._emit(True, self.cseq, FIN | ACK)
        self._emit(False, self.sseq, FIN | ACK)
        self.cseq += 1
        self.sseq += 1
        self._emit(True, self.cseq, ACK)
        return self

    def refuse(self) -> Tcp:
        self._emit(True, self.isn_c, SYN)
        self._emit(False, 0, RST | ACK)
        return self

    def unanswered(self, tries: int = 3) -> Tcp:
        for _ in range(tries):
            self._emit(True, self.isn_c, SYN)
        return self


def udp_packet(t: float, src: str, sport: int, dst: str, dport: int, payload: bytes, host: str = "h") -> Packet:
    return Packet(t, ether(ipv4(src, dst, 17, udp(sport, dport, payload))), host)
