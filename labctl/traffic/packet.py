"""From a link-layer frame to the TCP segment, UDP datagram or ARP message it carries.

Pure functions of bytes. Anything that is not IP or ARP over a known link, or TCP/UDP over IP
(ICMP, a non-first IP fragment, a header cut short by the snap length), gives ``None``: the
decoder skips it, it never raises. ARP is kept because a host that is switched off shows only
there: its neighbours ask for its hardware address and nobody answers, so no SYN ever leaves.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from labctl.traffic.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    Frame,
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_ARP = 0x0806
# RFC 826 for IPv4 over Ethernet: hardware type 1, protocol 0x0800, address lengths 6 and 4.
ARP_ETHERNET_IPV4 = b"\x00\x01\x08\x00\x06\x04"
ARP_REQUEST, ARP_REPLY = 1, 2
ETHERTYPE_VLAN = (0x8100, 0x88A8)  # 802.1Q, 802.1ad: 4 more octets before the real type
PROTO_TCP = 6
PROTO_UDP = 17
# IPv6 extension headers that may precede TCP/UDP (RFC 8200 §4): hop-by-hop, routing, destination.
IPV6_EXTENSIONS = frozenset({0, 43, 60})
IPV6_FRAGMENT = 44
# BSD loopback address families for IPv6 differ by OS (NetBSD/Linux 24, FreeBSD 28, Darwin 30).
AF_IPV4 = 2
AF_IPV6 = frozenset({24, 28, 30})

# TCP flags (RFC 9293 §3.1)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True, slots=True)
class Segment:
    """A TCP segment, with where and when it was captured."""

    ts_ns: int
    vantage: str  # the capture interface (the host it was captured on)
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes | memoryview  # a view into the capture, copied only into the stream


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP datagram."""

    ts_ns: int
    vantage: str
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Arp:
    """An ARP request ("who has TARGET? tell SENDER") or reply ("SENDER is at ...", RFC 826)."""

    ts_ns: int
    vantage: str
    op: int  # ARP_REQUEST or ARP_REPLY
    sender: str  # the IPv4 address of the host asking (request) or answering (reply)
    target: str  # the IPv4 address asked about (request) or the asker's (reply)


_addr_cache: dict[bytes, str] = {}


def _addr(view: bytes | memoryview) -> str:
    raw = bytes(view)
    text = _addr_cache.get(raw)
    if text is None:
        text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        if len(_addr_cache) < 65_536:  # a capture of a lab has a handful of addresses; bound it anyway
            _addr_cache[raw] = text
    return text


def link_payload(linktype: int, data: bytes | memoryview) -> tuple[int, int] | None:
    """(EtherType, offset of what it carries) in a frame of a link type with EtherTypes, or None."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return None
        off = 12
        etype = (data[off] << 8) | data[off + 1]
        while etype in ETHERTYPE_VLAN and len(data) >= off + 6:
            off += 4
            etype = (data[off] << 8) | data[off + 1]
        off += 2
    elif linktype == LINKTYPE_LINUX_SLL:  # 16-octet cooked header, protocol in the last two
        if len(data) < 16:
            return None
        etype, off = (data[14] << 8) | data[15], 16
    elif linktype == LINKTYPE_LINUX_SLL2:  # 20-octet cooked header, protocol first
        if len(data) < 20:
            return None
        etype, off = (data[0] << 8) | data[1], 20
    else:
        return None
    return etype, off


def network_payload(linktype: int, data: bytes | memoryview) -> tuple[int, int] | None:
    """(IP version, offset of the IP header) in a frame of this link type, or None if not IP."""
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(data) < 4:
            return None
        # NULL: the family in the capturing host's byte order, unknown here; a family is small,
        # so whichever order gives a small number is right. LOOP is always big-endian.
        le, be = struct.unpack_from("<I", data)[0], struct.unpack_from(">I", data)[0]
        family = be if linktype == LINKTYPE_LOOP else min(le, be)
        if family == AF_IPV4:
            return (4, 4)
        return (6, 4) if family in AF_IPV6 else None
    if linktype == LINKTYPE_RAW:
        if not data:
            return None
        version = data[0] >> 4
        return (version, 0) if version in (4, 6) else None
    if linktype == LINKTYPE_ETHERNET and len(data) >= 14:  # nearly every frame: no call for it
        etype = (data[12] << 8) | data[13]
        if etype == ETHERTYPE_IPV4:
            return (4, 14)
        if etype == ETHERTYPE_IPV6:
            return (6, 14)
    link = link_payload(linktype, data)
    if link is None:
        return None
    etype, off = link
    if etype == ETHERTYPE_IPV4:
        return (4, off)
    if etype == ETHERTYPE_IPV6:
        return (6, off)
    return None


def parse_arp(frame: Frame, off: int) -> Arp | None:
    """The IPv4-over-Ethernet ARP message at ``off``, or None (RFC 826's packet layout)."""
    data = frame.data
    if len(data) < off + 28 or bytes(data[off:off + 6]) != ARP_ETHERNET_IPV4:
        return None
    op = (data[off + 6] << 8) | data[off + 7]
    if op not in (ARP_REQUEST, ARP_REPLY):
        return None
    return Arp(frame.ts_ns, frame.interface, op, _addr(data[off + 14:off + 18]), _addr(data[off + 24:off + 28]))


def parse_frame(frame: Frame) -> Segment | Datagram | Arp | None:
    """The TCP segment, UDP datagram or ARP message in ``frame``, or None."""
    where = network_payload(frame.linktype, frame.data)
    if where is None:
        link = link_payload(frame.linktype, frame.data)
        return parse_arp(frame, link[1]) if link is not None and link[0] == ETHERTYPE_ARP else None
    version, off = where
    data = frame.data
    if version == 4:
        if len(data) < off + 20 or data[off] >> 4 != 4:
            return None
        ihl = (data[off] & 0x0F) * 4
        total = (data[off + 2] << 8) | data[off + 3]
        frag = ((data[off + 6] << 8) | data[off + 7]) & 0x1FFF
        if frag:  # a later fragment of a datagram: no transport header here (the lab sees none)
            return None
        proto = data[off + 9]
        src, dst = _addr(data[off + 12:off + 16]), _addr(data[off + 16:off + 20])
        start = off + ihl
        end = min(len(data), off + total) if total >= ihl else len(data)  # Ethernet pads short frames
    elif version == 6:
        if len(data) < off + 40:
            return None
        plen = (data[off + 4] << 8) | data[off + 5]
        proto = data[off + 6]
        src, dst = _addr(data[off + 8:off + 24]), _addr(data[off + 24:off + 40])
        start = off + 40
        end = min(len(data), start + plen) if plen else len(data)  # 0: a jumbogram
        while proto in IPV6_EXTENSIONS or proto == IPV6_FRAGMENT:
            if len(data) < start + 8:
                return None
            if proto == IPV6_FRAGMENT:
                if ((data[start + 2] << 8) | data[start + 3]) & 0xFFF8:
                    return None  # not the first fragment
                proto, start = data[start], start + 8
            else:
                proto, start = data[start], start + 8 + data[start + 1] * 8
    else:
        return None
    if proto == PROTO_TCP:
        if end - start < 20:
            return None
        sport, dport, seq, ack, off_flags = struct.unpack_from(">HHIIH", data, start)
        hlen = (off_flags >> 12) * 4
        if hlen < 20 or start + hlen > end:
            return None
        return Segment(frame.ts_ns, frame.interface, src, sport, dst, dport, seq, ack, off_flags & 0x3F,
                       data[start + hlen:end])
    if proto == PROTO_UDP:
        if end - start < 8:
            return None
        sport, dport = struct.unpack_from(">HH", data, start)
        return Datagram(frame.ts_ns, frame.interface, src, sport, dst, dport, bytes(data[start + 8:end]))
    return None
