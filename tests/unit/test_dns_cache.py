"""Answers remembered per question, and a query log that a flood cannot drown."""

from __future__ import annotations

import logging

import dns.message
import dns.rcode
import pytest

from services.dns import server
from services.dns.answer import respond
from services.dns.cache import Answerer
from services.dns.zones import Zones, parse

ZONE = """$ORIGIN stevenchoy.example.
$TTL 300
@ IN SOA ns.lab.example. hostmaster.lab.example. 1 3600 600 86400 300
@ IN NS ns.lab.example.
@ IN MX 10 mail.stevenchoy.example.
mail IN A 10.89.0.110
"""


def zones(text: str = ZONE) -> Zones:
    return Zones.of([parse(text, "stevenchoy.example.zone")])


def query(name: str, rdtype: str, qid: int) -> bytes:
    q = dns.message.make_query(name, rdtype)
    q.id = qid
    return q.to_wire()


def test_a_repeated_question_gets_the_same_answer_under_its_own_id() -> None:
    answerer = Answerer(zones())
    first = answerer.respond(query("stevenchoy.example", "MX", 1), transport="udp")
    again = answerer.respond(query("stevenchoy.example", "MX", 4242), transport="udp")
    fresh = respond(query("stevenchoy.example", "MX", 4242), zones(), transport="udp")
    assert again.wire == fresh.wire  # byte for byte what answering afresh gives
    assert dns.message.from_wire(again.wire).id == 4242
    assert first.wire is not None and first.wire[2:] == again.wire[2:]
    assert (again.qname, again.qtype, again.rcode) == (fresh.qname, fresh.qtype, fresh.rcode)


def test_new_zones_come_with_a_new_cache() -> None:
    old = Answerer(zones())
    old.respond(query("mail.stevenchoy.example", "A", 1), transport="udp")
    changed = Answerer(zones(ZONE.replace("10.89.0.110", "10.89.0.111")))
    reply = dns.message.from_wire(changed.respond(query("mail.stevenchoy.example", "A", 2), transport="udp").wire)
    assert reply.answer[0][0].address == "10.89.0.111"


def test_malformed_queries_are_answered_but_never_kept() -> None:
    answerer = Answerer(zones(), entries=2)
    for i in range(50):
        reply = answerer.respond(b"\x00\x01\x00\x00\x00\x01" + bytes([i]) * 20, transport="udp")
        assert reply.rcode == "FORMERR"
    assert len(answerer._replies) == 0


def test_the_least_recently_asked_question_goes_first() -> None:
    answerer = Answerer(zones(), entries=2)
    a, b, c = (query(n, "A", 1) for n in ("mail.stevenchoy.example", "x.stevenchoy.example", "stevenchoy.example"))
    for q in (a, b, a, c):
        answerer.respond(q, transport="udp")
    assert [key[1] for key in answerer._replies] == [a[2:], c[2:]]


def test_udp_and_tcp_answers_are_kept_apart() -> None:
    answerer = Answerer(zones())
    answerer.respond(query("stevenchoy.example", "MX", 1), transport="udp")
    answerer.respond(query("stevenchoy.example", "MX", 1), transport="tcp")
    assert {key[0] for key in answerer._replies} == {"udp", "tcp"}


def test_the_query_log_counts_what_it_does_not_show(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    qlog = server._QueryLog(clock=lambda: now[0])
    reply = respond(query("stevenchoy.example", "MX", 1), zones(), transport="udp")
    with caplog.at_level(logging.INFO, "services.dns"):
        for _ in range(server.QUERY_LOG_PER_SECOND + 30):
            qlog("udp", ("10.89.0.25", 5353), reply)
        now[0] = 101.2
        qlog("udp", ("10.89.0.25", 5353), reply)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("stevenchoy.example. MX NOERROR" in line for line in lines) == server.QUERY_LOG_PER_SECOND + 1
    assert f"... and 30 more queries in that second (the log shows at most {server.QUERY_LOG_PER_SECOND}" in lines[-2]
