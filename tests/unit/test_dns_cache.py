"""Replies made at zone load and kept per question, and a query log that a flood cannot drown.

What the Answerer promises is that it is invisible: whatever the query, its reply is byte for byte
what :func:`services.dns.answer.respond` gives, the first time and every time after.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Literal

import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dns import server
from services.dns.answer import respond
from services.dns.cache import PRECOMPUTED_PAYLOADS, PRECOMPUTED_TYPES, Answerer
from services.dns.zones import Zones, load_dir, parse
from tests.unit.test_dns_answer import mutated_queries

Transport = Literal["udp", "tcp"]

ZONE = """$ORIGIN stevenchoy.example.
$TTL 300
@ IN SOA ns.lab.example. hostmaster.lab.example. 1 3600 600 86400 300
@ IN NS ns.lab.example.
@ IN MX 10 mail.stevenchoy.example.
mail IN A 10.89.0.110
"""


def zones(text: str = ZONE) -> Zones:
    return Zones.of([parse(text, "stevenchoy.example.zone")])


def query(name: str, rdtype: str, qid: int, **options: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **options)  # type: ignore[arg-type]
    q.id = qid
    return q.to_wire()


def unrecursive(name: str, rdtype: str, qid: int) -> bytes:
    """A query in a shape not made at load (RD clear), so it is learned."""
    wire = bytearray(query(name, rdtype, qid))
    wire[2] &= ~0x01
    return bytes(wire)


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
    assert len(answerer._learned) == 0


def test_the_least_recently_asked_question_goes_first() -> None:
    answerer = Answerer(zones(), entries=2)
    names = ("mail.stevenchoy.example", "x.stevenchoy.example", "stevenchoy.example")
    a, b, c = (unrecursive(n, "A", 1) for n in names)
    for q in (a, b, a, c):
        answerer.respond(q, transport="udp")
    assert [key[1] for key in answerer._learned] == [a[2:], c[2:]]


def test_udp_and_tcp_answers_are_kept_apart() -> None:
    answerer = Answerer(zones())
    answerer.respond(unrecursive("stevenchoy.example", "MX", 1), transport="udp")
    answerer.respond(unrecursive("stevenchoy.example", "MX", 1), transport="tcp")
    assert {key[0] for key in answerer._learned} == {"udp", "tcp"}


def test_every_question_the_zones_answer_is_made_at_load() -> None:
    answerer = Answerer(zones())
    # mail and the apex, each with every served type and ANY, without EDNS and with it.
    assert len(answerer._made) == 2 * len(PRECOMPUTED_TYPES) * len(PRECOMPUTED_PAYLOADS)
    assert len(answerer._learned) == 0
    reply = answerer.respond(query("MAIL.StevenChoy.example", "AAAA", 7, use_edns=0, payload=1232), transport="udp")
    assert len(answerer._learned) == 0  # found among those made: NODATA, in the case asked
    assert reply.wire == respond(query("MAIL.StevenChoy.example", "AAAA", 7, use_edns=0, payload=1232), zones(),
                                 transport="udp").wire
    assert (reply.qname, reply.qtype, reply.rcode) == ("MAIL.StevenChoy.example.", "AAAA", "NOERROR")


def test_a_truncated_reply_made_at_load_keeps_its_note() -> None:
    many = ZONE + "".join(f"@ IN TXT \"{'x' * 200} {i}\"\n" for i in range(4))
    answerer = Answerer(zones(many))
    reply = answerer.respond(query("stevenchoy.example", "TXT", 9), transport="udp")
    fresh = respond(query("stevenchoy.example", "TXT", 9), zones(many), transport="udp")
    assert reply == fresh and "truncated" in reply.note
    assert dns.message.from_wire(reply.wire).flags & dns.flags.TC


# -- the Answerer is invisible ---------------------------------------------------------------------

LAB_ZONES = load_dir(Path(__file__).parent / "data" / "zones")
LAB = Answerer(LAB_ZONES)
NAMES = sorted({n.to_text() for z in LAB_ZONES for n in z.names}) + ["nobody.ouhk.example.", "example.com."]


@st.composite
def recased(draw: st.DrawFn, wire: bytes) -> bytes:
    """``wire`` with the case of any letters flipped (those of the name, and of anything else)."""
    out = bytearray(wire)
    for i in draw(st.sets(st.integers(0, max(len(out) - 1, 0)), max_size=12)):
        if i < len(out) and chr(out[i]).isalpha() and out[i] < 0x80:
            out[i] ^= 0x20
    return bytes(out)


@st.composite
def client_queries(draw: st.DrawFn) -> bytes:
    """Queries as clients send them, in every shape: any name, type, flags, EDNS, and case."""
    name = draw(st.sampled_from(NAMES))
    rdtype = draw(st.sampled_from(["A", "AAAA", "MX", "NS", "SOA", "TXT", "PTR", "CNAME", "ANY", "SRV", "AXFR"]))
    payload = draw(st.sampled_from([None, 512, 1232, 4096]))
    wire = bytearray(query(name, rdtype, draw(st.integers(0, 0xFFFF)), use_edns=payload is not None,
                           payload=payload or 0, want_dnssec=draw(st.booleans())))
    if draw(st.booleans()):
        wire[2:4] = struct.pack("!H", draw(st.integers(0, 0xFFFF)) & ~0x8000)
    return bytes(draw(recased(bytes(wire))))


@settings(max_examples=400)
@given(st.one_of(client_queries(), mutated_queries().flatmap(recased), st.binary(max_size=80)),
       st.sampled_from(["udp", "tcp"]), st.integers(0, 0xFFFF))
def test_every_reply_is_what_respond_gives(query_wire: bytes, transport: Transport, other_id: int) -> None:
    fresh = respond(query_wire, LAB_ZONES, transport=transport)
    assert LAB.respond(query_wire, transport=transport) == fresh  # made at load, learned, or neither
    assert LAB.respond(query_wire, transport=transport) == fresh  # and again, now that it may be kept
    again = struct.pack("!H", other_id) + query_wire[2:]
    assert LAB.respond(again, transport=transport) == respond(again, LAB_ZONES, transport=transport)


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


def test_a_question_outside_the_lab_zones_is_kept_with_its_note() -> None:
    answerer = Answerer(zones())
    first = answerer.respond(query("www.example.com", "A", 1), transport="udp")
    assert (first.rcode, first.note) == ("REFUSED", "outside the lab zones")
    assert len(answerer._learned) == 1
    again = answerer.respond(query("WWW.Example.com", "A", 2), transport="udp")
    assert again == respond(query("WWW.Example.com", "A", 2), zones(), transport="udp")
    # Refused for another reason (a class, a transfer): answered afresh each time, as before.
    answerer.respond(query("stevenchoy.example", "AXFR", 3), transport="udp")
    assert len(answerer._learned) == 1
