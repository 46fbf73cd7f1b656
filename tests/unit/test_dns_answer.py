"""The DNS answering core: query wire built with dnspython in, the reply parsed back and checked.

The zones are the fixture set in data/zones: the lab's (stevenchoy.example, ouhk.example,
lab.example, the reverse zone) plus edge.example, which holds the corner cases.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Literal

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dns.answer import EDNS_PAYLOAD_MAX, UDP_CLASSIC_MAX, answer, respond
from services.dns.zones import Zone, Zones, load_dir

ZONES = load_dir(Path(__file__).parent / "data" / "zones")
Rcode = dns.rcode.Rcode
Transport = Literal["udp", "tcp"]


def ask(qname: str, rdtype: str = "A", *, transport: Transport = "udp", **query: object) -> dns.message.Message:
    """Ask ZONES one question; ``query`` goes to dns.message.make_query (use_edns, payload, rdclass...)."""
    q = dns.message.make_query(qname, rdtype, **query)  # type: ignore[arg-type]
    return reply_to(q.to_wire(), transport=transport, expect_id=q.id)


def reply_to(wire: bytes, *, transport: Transport = "udp", expect_id: int | None = None) -> dns.message.Message:
    out = answer(wire, ZONES, transport=transport)
    assert out is not None
    reply = dns.message.from_wire(out)
    assert reply.flags & dns.flags.QR
    if expect_id is not None:
        assert reply.id == expect_id
    return reply


def texts(section: list[dns.rrset.RRset]) -> list[str]:
    return [line for rrset in section for line in rrset.to_text().splitlines()]


def rdtypes(section: list[dns.rrset.RRset]) -> list[str]:
    return [dns.rdatatype.to_text(r.rdtype) for r in section]


def flags(reply: dns.message.Message) -> set[str]:
    return set(dns.flags.to_text(reply.flags).split())


# -- authoritative answers -------------------------------------------------------------------------


def test_an_address_is_an_authoritative_answer() -> None:
    reply = ask("mail.stevenchoy.example", "A")
    assert reply.rcode() == Rcode.NOERROR
    assert flags(reply) == {"QR", "AA", "RD"}  # RD copied from the query, RA never: we do not recurse
    assert texts(reply.answer) == ["mail.stevenchoy.example. 300 IN A 10.89.0.110"]
    assert reply.authority == [] and reply.additional == []
    assert [q.to_text() for q in reply.question] == ["mail.stevenchoy.example. IN A"]


def test_names_match_without_regard_to_case() -> None:
    reply = ask("MAIL.StevenChoy.Example", "A")
    assert reply.rcode() == Rcode.NOERROR
    assert [r.to_text() for r in reply.answer[0]] == ["10.89.0.110"]
    assert reply.question[0].name.to_text() == "MAIL.StevenChoy.Example."  # the question comes back as asked


def test_rd_clear_in_the_query_stays_clear() -> None:
    reply = ask("smtp.ouhk.example", "A", flags=0)
    assert flags(reply) == {"QR", "AA"}


def test_mx_carries_the_exchange_address_in_additional() -> None:
    reply = ask("stevenchoy.example", "MX")
    assert texts(reply.answer) == ["stevenchoy.example. 300 IN MX 10 mail.stevenchoy.example."]
    assert texts(reply.additional) == ["mail.stevenchoy.example. 300 IN A 10.89.0.110"]
    reply = ask("ouhk.example", "MX")
    assert texts(reply.additional) == ["smtp.ouhk.example. 300 IN A 10.89.0.25"]


def test_mx_additional_has_a_and_aaaa_from_any_lab_zone_and_nothing_from_outside() -> None:
    reply = ask("mx.edge.example", "MX")
    assert len(reply.answer[0]) == 3
    assert sorted(texts(reply.additional)) == [
        "host.edge.example. 300 IN A 10.89.0.200",
        "host.edge.example. 300 IN AAAA fd00:89::200",
        "mail.stevenchoy.example. 300 IN A 10.89.0.110",
    ]  # elsewhere.example.com is not ours to answer for


def test_a_null_mx_has_no_additional() -> None:
    reply = ask("nomail.edge.example", "MX")
    assert texts(reply.answer) == ["nomail.edge.example. 300 IN MX 0 ."]  # RFC 7505: no mail here
    assert reply.additional == []


def test_ns_carries_the_server_address_in_additional() -> None:
    reply = ask("ouhk.example", "NS")
    assert texts(reply.answer) == ["ouhk.example. 300 IN NS ns.lab.example."]
    assert texts(reply.additional) == ["ns.lab.example. 300 IN A 10.89.0.53"]


def test_soa_at_the_apex() -> None:
    reply = ask("lab.example", "SOA")
    assert texts(reply.answer) == [
        "lab.example. 300 IN SOA ns.lab.example. hostmaster.lab.example. 1 3600 600 86400 300"]


def test_ptr_in_the_reverse_zone() -> None:
    reply = ask("110.0.89.10.in-addr.arpa", "PTR")
    assert flags(reply) >= {"AA"}
    assert texts(reply.answer) == ["110.0.89.10.in-addr.arpa. 300 IN PTR mail.stevenchoy.example."]


def test_aaaa_and_txt() -> None:
    assert texts(ask("host.edge.example", "AAAA").answer) == ["host.edge.example. 300 IN AAAA fd00:89::200"]
    assert len(ask("medium.edge.example", "TXT", transport="tcp").answer[0]) == 8


# -- negative answers ------------------------------------------------------------------------------


def test_a_name_that_does_not_exist_is_nxdomain_with_the_soa() -> None:
    reply = ask("nobody.stevenchoy.example", "A")
    assert reply.rcode() == Rcode.NXDOMAIN
    assert "AA" in flags(reply)
    assert reply.answer == []
    assert texts(reply.authority) == [
        "stevenchoy.example. 300 IN SOA ns.lab.example. hostmaster.stevenchoy.example. 1 3600 600 86400 300"]


def test_the_negative_ttl_is_the_soa_minimum_when_smaller() -> None:
    reply = ask("nobody.edge.example", "A")
    assert reply.authority[0].ttl == 60  # RFC 2308 §3


def test_a_name_below_a_leaf_does_not_exist() -> None:
    assert ask("x.mail.stevenchoy.example", "A").rcode() == Rcode.NXDOMAIN


def test_a_name_without_the_type_is_nodata_with_the_soa() -> None:
    reply = ask("mail.stevenchoy.example", "AAAA")
    assert reply.rcode() == Rcode.NOERROR
    assert "AA" in flags(reply)
    assert reply.answer == []
    assert rdtypes(reply.authority) == ["SOA"]
    assert reply.authority[0].name == dns.name.from_text("stevenchoy.example.")


def test_an_empty_non_terminal_is_nodata_not_nxdomain() -> None:
    reply = ask("ent.edge.example", "A")  # only leaf.ent.edge.example has records
    assert reply.rcode() == Rcode.NOERROR
    assert reply.answer == []
    assert rdtypes(reply.authority) == ["SOA"]


# -- CNAME -----------------------------------------------------------------------------------------


def test_a_cname_is_followed_to_the_address() -> None:
    reply = ask("www.edge.example", "A")
    assert reply.rcode() == Rcode.NOERROR
    assert texts(reply.answer) == ["www.edge.example. 300 IN CNAME host.edge.example.",
                                   "host.edge.example. 300 IN A 10.89.0.200"]


def test_a_chain_of_cnames_is_followed() -> None:
    reply = ask("alias-alias.edge.example", "A")
    assert rdtypes(reply.answer) == ["CNAME", "CNAME", "A"]


def test_a_cname_is_followed_into_another_lab_zone() -> None:
    reply = ask("alias-out.edge.example", "A")
    assert texts(reply.answer) == ["alias-out.edge.example. 300 IN CNAME mail.stevenchoy.example.",
                                   "mail.stevenchoy.example. 300 IN A 10.89.0.110"]


def test_a_cname_to_a_missing_name_is_nxdomain_after_the_cname() -> None:
    reply = ask("alias-gone.edge.example", "A")
    assert reply.rcode() == Rcode.NXDOMAIN  # RFC 6604: the rcode of the last name in the chain
    assert rdtypes(reply.answer) == ["CNAME"]
    assert rdtypes(reply.authority) == ["SOA"]


def test_a_cname_to_a_name_without_the_type_is_nodata_after_the_cname() -> None:
    reply = ask("www.edge.example", "MX")
    assert reply.rcode() == Rcode.NOERROR
    assert rdtypes(reply.answer) == ["CNAME"]
    assert rdtypes(reply.authority) == ["SOA"]


def test_a_cname_out_of_the_lab_is_given_but_not_followed() -> None:
    reply = ask("alias-internet.edge.example", "A")
    assert reply.rcode() == Rcode.NOERROR
    assert texts(reply.answer) == ["alias-internet.edge.example. 300 IN CNAME www.example.com."]
    assert reply.authority == []


def test_a_cname_loop_ends() -> None:
    reply = ask("loop1.edge.example", "A")
    assert reply.rcode() == Rcode.NOERROR
    assert rdtypes(reply.answer) == ["CNAME", "CNAME"]


def test_asking_for_the_cname_itself_does_not_follow_it() -> None:
    assert texts(ask("www.edge.example", "CNAME").answer) == ["www.edge.example. 300 IN CNAME host.edge.example."]


# -- ANY (all rrsets at the name; see answer.py) ---------------------------------------------------


def test_any_gives_every_rrset_at_the_name() -> None:
    reply = ask("stevenchoy.example", "ANY")
    assert sorted(rdtypes(reply.answer)) == ["MX", "NS", "SOA"]
    assert sorted(texts(reply.additional)) == ["mail.stevenchoy.example. 300 IN A 10.89.0.110",
                                               "ns.lab.example. 300 IN A 10.89.0.53"]


def test_any_at_a_missing_name_is_nxdomain() -> None:
    assert ask("nobody.ouhk.example", "ANY").rcode() == Rcode.NXDOMAIN


# -- not ours to answer ----------------------------------------------------------------------------


@pytest.mark.parametrize("qname", ["example.com", "www.google.com", "example", ".", "xstevenchoy.example"])
def test_names_outside_the_lab_zones_are_refused(qname: str) -> None:
    reply = ask(qname, "A")
    assert reply.rcode() == Rcode.REFUSED
    assert flags(reply) == {"QR", "RD"}  # no AA: not ours; no RA: we resolve nothing
    assert reply.answer == [] and reply.authority == []


def test_another_class_is_refused() -> None:
    reply = ask("version.bind", "TXT", rdclass=dns.rdataclass.CH)
    assert reply.rcode() == Rcode.REFUSED
    assert "AA" not in flags(reply)
    assert ask("mail.stevenchoy.example", "A", rdclass=dns.rdataclass.ANY).rcode() == Rcode.REFUSED


@pytest.mark.parametrize(("qtype", "rcode"), [
    ("AXFR", Rcode.REFUSED), ("IXFR", Rcode.REFUSED),
    ("OPT", Rcode.FORMERR), ("TSIG", Rcode.FORMERR), ("TKEY", Rcode.FORMERR),
    ("MAILA", Rcode.NOTIMP), ("MAILB", Rcode.NOTIMP),
])
def test_meta_qtypes(qtype: str, rcode: dns.rcode.Rcode) -> None:
    q = dns.message.make_query("stevenchoy.example", "A")
    wire = bytearray(q.to_wire())
    struct.pack_into("!H", wire, len(wire) - 4, dns.rdatatype.from_text(qtype))  # the question's QTYPE
    reply = reply_to(bytes(wire), expect_id=q.id)
    assert reply.rcode() == rcode
    assert reply.answer == []


# -- malformed and unusual messages ----------------------------------------------------------------


def header(qid: int = 0x1234, flag_bits: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flag_bits, qd, an, ns, ar)


@pytest.mark.parametrize("size", range(12))
def test_less_than_a_header_is_dropped(size: int) -> None:
    assert answer(bytes(size), ZONES, transport="udp") is None
    assert respond(bytes(size), ZONES, transport="tcp").rcode == "dropped"


def test_a_response_is_never_answered() -> None:
    reply = dns.message.make_response(dns.message.make_query("stevenchoy.example", "MX"))
    assert answer(reply.to_wire(), ZONES, transport="udp") is None  # or two servers could loop


MAIL_A = b"\x04mail\x0astevenchoy\x07example\x00\x00\x01\x00\x01"  # mail.stevenchoy.example IN A


@pytest.mark.parametrize(("wire", "why"), [
    (header(qd=0), "no question"),
    (header(qd=1), "the question is missing"),
    (header(qd=1) + MAIL_A[:-3], "the question is cut short"),
    (header(qd=1) + b"\x40abc\x00\x00\x01\x00\x01", "label type 01 (extended labels, RFC 6891 §5)"),
    (header(qd=1) + b"\xc0\x0c\x00\x01\x00\x01", "a compression pointer to itself"),
    (header(qd=1) + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
     + b"\x00\x00\x01\x00\x01", "a name longer than 255 octets"),
    (header(qd=1, an=1) + MAIL_A, "an answer count with no answer"),
])
def test_a_malformed_query_gets_formerr_with_its_id(wire: bytes, why: str) -> None:
    reply = reply_to(wire, expect_id=0x1234)
    assert reply.rcode() == Rcode.FORMERR, why
    assert flags(reply) == {"QR", "RD"}


def test_a_wellformed_header_built_by_hand_is_answered() -> None:
    reply = reply_to(header(qd=1) + MAIL_A, expect_id=0x1234)  # the control for the cases above
    assert texts(reply.answer) == ["mail.stevenchoy.example. 300 IN A 10.89.0.110"]


def test_trailing_junk_is_formerr() -> None:
    q = dns.message.make_query("mail.stevenchoy.example", "A")
    out = respond(q.to_wire() + b"\x00\x01", ZONES, transport="udp")
    assert out.rcode == "FORMERR"
    assert "TrailingJunk" in out.note


def test_two_questions_are_formerr() -> None:
    q = dns.message.make_query("mail.stevenchoy.example", "A")
    q.question.append(dns.rrset.RRset(dns.name.from_text("smtp.ouhk.example"), dns.rdataclass.IN, dns.rdatatype.A))
    reply = reply_to(q.to_wire(), expect_id=q.id)
    assert reply.rcode() == Rcode.FORMERR
    assert reply.answer == []


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY])
def test_other_opcodes_are_not_implemented(opcode: dns.opcode.Opcode) -> None:
    q = dns.message.make_query("stevenchoy.example", "SOA")
    q.set_opcode(opcode)
    reply = reply_to(q.to_wire(), expect_id=q.id)
    assert reply.rcode() == Rcode.NOTIMP
    assert reply.opcode() == opcode
    assert reply.answer == []


def test_update_is_not_implemented() -> None:
    update = dns.update.UpdateMessage("stevenchoy.example")
    update.add("evil", 300, "A", "10.89.0.66")
    out = answer(update.to_wire(), ZONES, transport="tcp")
    assert out is not None
    reply = dns.message.from_wire(out)
    assert reply.rcode() == Rcode.NOTIMP
    assert ask("evil.stevenchoy.example").rcode() == Rcode.NXDOMAIN


def test_an_unassigned_opcode_is_notimp_and_echoed() -> None:
    out = answer(header(flag_bits=0x7900) + b"\xff\xff", ZONES, transport="udp")  # opcode 15, RD
    assert out == header(flag_bits=0xF904, qd=0)  # dnspython cannot parse opcode 15: check the octets


# -- EDNS ------------------------------------------------------------------------------------------


def test_an_edns_query_gets_an_opt_record_and_a_plain_one_does_not() -> None:
    with_edns = ask("mail.stevenchoy.example", use_edns=0, payload=1232)
    assert with_edns.edns == 0
    assert with_edns.payload == EDNS_PAYLOAD_MAX  # what we advertise we can take
    assert ask("mail.stevenchoy.example").edns == -1


def test_edns_flags_and_options_we_do_not_implement_are_not_echoed() -> None:
    reply = ask("mail.stevenchoy.example", use_edns=0, want_dnssec=True)
    assert reply.edns == 0
    assert not reply.ednsflags & dns.flags.DO  # we sign nothing


def test_a_later_edns_version_gets_badvers() -> None:
    q = dns.message.make_query("mail.stevenchoy.example", "A")
    q.use_edns(1)
    reply = reply_to(q.to_wire(), expect_id=q.id)
    assert reply.rcode() == Rcode.BADVERS  # RFC 6891 §6.1.3
    assert reply.edns == 0  # the version we do speak
    assert reply.answer == []


def test_two_opt_records_are_formerr() -> None:
    q = dns.message.make_query("mail.stevenchoy.example", "A", use_edns=0)
    wire = bytearray(q.to_wire())
    opt = bytes(wire[-11:])
    struct.pack_into("!H", wire, 10, 2)  # ARCOUNT
    reply = reply_to(bytes(wire) + opt, expect_id=q.id)
    assert reply.rcode() == Rcode.FORMERR  # RFC 6891 §6.1.1


# -- size limits and truncation --------------------------------------------------------------------


def test_a_big_answer_over_classic_udp_is_truncated() -> None:
    out = answer(dns.message.make_query("medium.edge.example", "TXT").to_wire(), ZONES, transport="udp")
    assert out is not None and len(out) <= UDP_CLASSIC_MAX
    reply = dns.message.from_wire(out)
    assert flags(reply) >= {"TC", "AA"}
    assert reply.rcode() == Rcode.NOERROR
    assert reply.answer == []  # emptied: the client asks again over TCP (RFC 7766 §5)
    assert [q.to_text() for q in reply.question] == ["medium.edge.example. IN TXT"]


def test_the_same_answer_over_tcp_is_whole() -> None:
    reply = ask("big.edge.example", "TXT", transport="tcp")
    assert "TC" not in flags(reply)
    assert len(reply.answer[0]) == 20


def test_an_edns_payload_size_is_honoured() -> None:
    assert "TC" not in flags(ask("medium.edge.example", "TXT", use_edns=0, payload=4096))
    assert len(ask("medium.edge.example", "TXT", use_edns=0, payload=4096).answer[0]) == 8
    assert "TC" in flags(ask("medium.edge.example", "TXT", use_edns=0, payload=1232))


def test_an_edns_payload_below_512_counts_as_512() -> None:
    reply = ask("stevenchoy.example", "MX", use_edns=0, payload=100)
    assert "TC" not in flags(reply)  # RFC 6891 §6.2.5
    assert reply.additional  # and the whole answer fitted


def test_an_edns_payload_above_our_cap_is_capped() -> None:
    q = dns.message.make_query("big.edge.example", "TXT", use_edns=0, payload=65000)
    out = answer(q.to_wire(), ZONES, transport="udp")
    assert out is not None and len(out) <= EDNS_PAYLOAD_MAX
    assert "TC" in flags(dns.message.from_wire(out))


def test_additional_data_is_dropped_before_the_answer_is_truncated() -> None:
    reply = ask("many.edge.example", "MX")  # 20 MX fit 512 octets; their 20 addresses do not
    assert "TC" not in flags(reply)  # RFC 2181 §9: missing additional data needs no TC
    assert len(reply.answer[0]) == 20
    assert reply.additional == []
    assert len(ask("many.edge.example", "MX", use_edns=0, payload=4096).additional) == 20


# -- our own bugs ----------------------------------------------------------------------------------


class BrokenZones(Zones):
    def find(self, name: dns.name.Name) -> Zone | None:
        raise RuntimeError("a bug of ours")


def test_our_bug_is_servfail_with_the_traceback_kept_for_the_log() -> None:
    q = dns.message.make_query("mail.stevenchoy.example", "A", use_edns=0)
    out = respond(q.to_wire(), BrokenZones(ZONES.by_origin), transport="udp")
    assert out.rcode == "SERVFAIL"
    assert out.bug is not None and "RuntimeError: a bug of ours" in out.bug
    assert out.wire is not None
    reply = dns.message.from_wire(out.wire)
    assert reply.id == q.id and reply.rcode() == Rcode.SERVFAIL
    assert "a bug of ours" not in out.wire.decode("latin-1")  # the peer never sees the cause
    assert "AA" not in flags(reply)


def test_the_log_fields_of_a_reply() -> None:
    out = respond(dns.message.make_query("nobody.ouhk.example", "MX").to_wire(), ZONES, transport="udp")
    assert (out.qname, out.qtype, out.rcode, out.bug) == ("nobody.ouhk.example.", "MX", "NXDOMAIN", None)


# -- fuzzing: never an exception, always nothing or a well-formed reply ----------------------------

VALID_QUERIES = [
    dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
    for name, rdtype in [("stevenchoy.example", "MX"), ("mail.stevenchoy.example", "A"),
                         ("www.edge.example", "A"), ("nobody.ouhk.example", "AAAA"),
                         ("example.com", "A"), ("big.edge.example", "TXT"), ("many.edge.example", "MX")]
    for edns in (None, 0)
]


ASSIGNED_OPCODES = {int(op) for op in dns.opcode.Opcode}


def check_reply(query: bytes) -> None:
    transport: Transport
    for transport in ("udp", "tcp"):
        out = respond(query, ZONES, transport=transport)
        assert out.bug is None, out.bug  # garbage is the peer's fault, never a SERVFAIL
        if out.wire is None:
            assert len(query) < 12 or query[2] & 0x80  # dropped only without a header, or a response
            continue
        qid, reply_flags = struct.unpack_from("!HH", out.wire)
        assert reply_flags & dns.flags.QR
        assert qid == struct.unpack_from("!H", query)[0]
        if (query[2] >> 3) & 0xF not in ASSIGNED_OPCODES:
            # dnspython cannot parse an unassigned opcode, so the reply is the bare header.
            assert len(out.wire) == 12 and reply_flags & 0xF == Rcode.NOTIMP
            continue
        dns.message.from_wire(out.wire)
        assert len(out.wire) <= (EDNS_PAYLOAD_MAX if transport == "udp" else 65535)


@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    check_reply(data)


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(st.sampled_from(VALID_QUERIES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(wire) - 1, 0)))
        if kind == "set" and wire:
            wire[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del wire[at:]
        elif kind == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif wire:
            del wire[at]
    return bytes(wire)


@given(mutated_queries())
def test_mutated_queries_never_raise(query: bytes) -> None:
    check_reply(query)


@given(st.sampled_from(VALID_QUERIES), st.integers(2, 3), st.integers(0, 255))
def test_mutated_header_bits_never_raise(query: bytes, at: int, value: int) -> None:
    wire = bytearray(query)
    wire[at] = value  # every combination of flags, opcode and rcode in the query
    check_reply(bytes(wire))
