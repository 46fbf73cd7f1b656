"""ARP in a capture: unanswered lookups (a neighbour switched off), counted once across captures."""

from __future__ import annotations

import socket
import struct

from labctl.traffic.arp import lookups
from labctl.traffic.packet import ARP_REPLY, ARP_REQUEST, Arp, parse_frame
from labctl.traffic.pcap import Frame
from tests.unit.packets import MAIL, SMTP, ether

NS = 1_000_000_000


def arp_frame(op: int, sender: str, target: str) -> bytes:
    return ether(struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, b"\x02\x42\x0a\x59\x00\x19",
                             socket.inet_aton(sender), bytes(6), socket.inet_aton(target)), 0x0806)


def test_an_arp_request_and_reply_are_parsed() -> None:
    frame = arp_frame(ARP_REQUEST, SMTP, MAIL)
    assert parse_frame(Frame(5, 1, frame, "smtp", len(frame))) == Arp(5, "smtp", ARP_REQUEST, SMTP, MAIL)
    bad = frame[:14] + b"\x00\x06" + frame[16:]  # a hardware type that is not Ethernet
    assert parse_frame(Frame(5, 1, bad, "smtp", len(bad))) is None


def test_lookups_group_requests_count_them_once_and_see_the_answer() -> None:
    heard = [Arp(k * NS, host, ARP_REQUEST, SMTP, MAIL) for k in range(3) for host in ("smtp", "mx2")]
    retry = [Arp((5 + k) * NS, "smtp", ARP_REQUEST, SMTP, MAIL) for k in range(2)]
    answer = [Arp(int(6.1 * NS), "smtp", ARP_REPLY, MAIL, SMTP)]
    found = lookups(heard + retry + answer, {SMTP: "smtp.ouhk.example", MAIL: "mail.stevenchoy.example"})
    assert [(x.start, x.requests, x.answered) for x in found] == [(0.0, 3, False), (5.0, 2, True)]
    assert (found[0].asker_host, found[0].target_host) == ("smtp.ouhk.example", "mail.stevenchoy.example")
    gratuitous = lookups([Arp(0, "smtp", ARP_REQUEST, SMTP, SMTP)])
    assert gratuitous == []
