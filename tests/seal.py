"""The lab's seal, judged from its packets (tests/lab/test_traffic_decode.py; unit-tested on made frames)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from labctl.traffic.packet import network_payload
from labctl.traffic.pcap import Frame


def outside_addresses(frames: Iterable[Frame], lab: ipaddress.IPv4Network) -> Counter[str]:
    """Addresses outside the lab (and outside each host's loopback) that captured IP packets carry.

    The seal, shown from the packets: in a sealed lab this is empty, however hard a host tried
    to reach out (a connect to an outside address fails inside the host, before any packet).
    """
    seen: Counter[str] = Counter()
    for frame in frames:
        where = network_payload(frame.linktype, frame.data)
        if where is None:
            continue  # ARP and other link-layer frames carry no IP address
        version, off = where
        data = bytes(frame.data[off:off + 40])
        if version == 4 and len(data) >= 20:
            pair = (ipaddress.IPv4Address(data[12:16]), ipaddress.IPv4Address(data[16:20]))
            # Multicast (an interface joining IGMP groups as it comes up) and the limited broadcast
            # stay on the lab's own bridge: no router forwards them.
            outside: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
                a for a in pair if a not in lab and not (a.is_loopback or a.is_multicast or a.is_link_local
                                                         or a == ipaddress.IPv4Address("255.255.255.255"))]
        elif version == 6 and len(data) >= 40:
            pair6 = (ipaddress.IPv6Address(data[8:24]), ipaddress.IPv6Address(data[24:40]))
            # Link-local, multicast and the unspecified source of duplicate address detection:
            # the neighbour discovery of an interface coming up, which never leaves the bridge.
            outside = [a for a in pair6 if not (a.is_loopback or a.is_link_local or a.is_multicast
                                                or a.is_unspecified)]
        else:
            continue
        seen.update(str(a) for a in outside)
    return seen
