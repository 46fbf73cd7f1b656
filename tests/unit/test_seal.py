"""The seal check the lab tests judge a capture with (tests/seal.py), on made frames."""

from __future__ import annotations

import ipaddress

from labctl.traffic.pcap import Frame
from tests.seal import outside_addresses


def _ipv4(src: str, dst: str) -> Frame:
    addresses = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    header = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]) + addresses
    return Frame(ts_ns=0, linktype=101, data=header, interface="andy", orig_len=20)  # LINKTYPE_RAW


def test_outside_addresses_counts_what_left_the_lab_and_nothing_that_stays_on_the_bridge() -> None:
    lab = ipaddress.IPv4Network("10.89.0.0/24")
    frames = [
        _ipv4("10.89.0.10", "10.89.0.25"),  # inside
        _ipv4("10.89.0.10", "224.0.0.22"),  # IGMP report as an interface comes up
        _ipv4("10.89.0.10", "255.255.255.255"),  # limited broadcast
        _ipv4("127.0.0.1", "127.0.0.1"),  # a host's own loopback
        _ipv4("10.89.0.10", "198.51.100.7"),  # out: what a sealed lab never shows
        _ipv4("10.89.0.10", "198.51.100.7"),
    ]
    assert outside_addresses(frames, lab) == {"198.51.100.7": 2}
