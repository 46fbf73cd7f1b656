"""DNS queries and answers, one line each, over UDP and TCP."""

from __future__ import annotations

import struct

import dns.message
import dns.rcode
import dns.rrset

from labctl.traffic import render
from labctl.traffic.decode import TrafficDecoder
from labctl.traffic.model import Conversation
from tests.unit.packets import NAMES, NS, SMTP, T0, Packet, Tcp, pcapng, udp_packet


def decode(packets: list[Packet]) -> list[Conversation]:
    d = TrafficDecoder(NAMES)
    d.feed_capture(pcapng(packets))  # pcapng: each packet keeps the host it was captured on
    d.tcp.finish()
    return d.conversations()


def _mx() -> tuple[bytes, bytes]:
    query = dns.message.make_query("stevenchoy.example", "MX")
    query.id = 4242
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("stevenchoy.example.", 300, "IN", "MX", "10 mail.stevenchoy.example."))
    response.additional.append(dns.rrset.from_text("mail.stevenchoy.example.", 300, "IN", "A", "10.89.0.110"))
    return query.to_wire(), response.to_wire()


def test_mx_query_and_answer_over_udp() -> None:
    q, r = _mx()
    packets = [udp_packet(T0, SMTP, 40000, NS, 53, q), udp_packet(T0 + 0.001, NS, 53, SMTP, 40000, r)]
    [conv] = decode(packets)
    assert (conv.protocol, conv.transport, conv.client.port) == ("dns", "udp", 40000)
    assert render.text([conv]).splitlines() == [
        "smtp.ouhk.example -> ns.lab.example: MX? stevenchoy.example",
        "ns.lab.example -> smtp.ouhk.example: MX 10 mail.stevenchoy.example   "
        "[additional: mail.stevenchoy.example A 10.89.0.110]",
    ]
    assert conv.events[1].info["answers"] == ["MX 10 mail.stevenchoy.example"]


def test_the_same_datagram_seen_on_two_hosts_appears_once() -> None:
    q, r = _mx()
    packets = [udp_packet(T0, SMTP, 40000, NS, 53, q, host="smtp"), udp_packet(T0 + 0.0001, SMTP, 40000, NS, 53, q,
                                                                               host="ns"),
               udp_packet(T0 + 0.001, NS, 53, SMTP, 40000, r, host="ns"),
               udp_packet(T0 + 0.0011, NS, 53, SMTP, 40000, r, host="smtp")]
    [conv] = decode(packets)
    assert len(conv.events) == 2 and conv.vantages == ("ns", "smtp")


def test_nxdomain_empty_answer_and_garbage() -> None:
    query = dns.message.make_query("nowhere.example", "A")
    nx = dns.message.make_response(query)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    empty = dns.message.make_response(dns.message.make_query("mail.stevenchoy.example", "AAAA"))
    packets = [udp_packet(T0, SMTP, 40001, NS, 53, query.to_wire()),
               udp_packet(T0 + 0.001, NS, 53, SMTP, 40001, nx.to_wire()),
               udp_packet(T0 + 0.002, SMTP, 40002, NS, 53, empty.to_wire()),
               udp_packet(T0 + 0.003, SMTP, 40003, NS, 53, b"\x00\x01not dns")]
    convs = decode(packets)
    texts = [e.text for c in convs for e in c.events]
    assert texts[1] == "NXDOMAIN (A? nowhere.example)"
    assert texts[2] == "no AAAA record (NOERROR, empty answer)"
    assert texts[3].startswith("<malformed DNS message")
    assert not convs[-1].decodable


def test_dns_over_tcp() -> None:
    q, r = _mx()
    t = Tcp(SMTP, 40010, NS, 53).handshake()
    t.c(struct.pack(">H", len(q)) + q).s(struct.pack(">H", len(r)) + r).close()
    [conv] = decode(t.packets)
    assert [e.text.split("   ")[0] for e in conv.events] == ["MX? stevenchoy.example", "MX 10 mail.stevenchoy.example"]
