"""The readiness probe's DNS check, built by hand (no dnspython import on `up`'s path), read by dnspython."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from services.probe import check_soa_reply, soa_query


def test_the_query_is_an_soa_question_for_the_zone() -> None:
    query = dns.message.from_wire(soa_query("stevenchoy.example", 4660))
    assert query.id == 4660 and not query.flags & dns.flags.RD
    [question] = query.question
    assert question.name.to_text() == "stevenchoy.example." and question.rdtype == dns.rdatatype.SOA
    assert dns.message.from_wire(soa_query(".", 1)).question[0].name.to_text() == "."


def test_only_an_authoritative_noerror_reply_to_the_same_question_passes() -> None:
    wire = soa_query("lab.example", 7)
    query = dns.message.from_wire(wire)
    good = dns.message.make_response(query)
    good.flags |= dns.flags.AA
    assert check_soa_reply(good.to_wire(), wire) is None
    not_aa = dns.message.make_response(query)
    assert check_soa_reply(not_aa.to_wire(), wire) == "rcode 0, not an authoritative answer"
    refused = dns.message.make_response(query)
    refused.set_rcode(dns.rcode.REFUSED)
    assert "rcode 5" in (check_soa_reply(refused.to_wire(), wire) or "")
    other = dns.message.make_response(dns.message.from_wire(soa_query("other.example", 7)))
    other.flags |= dns.flags.AA
    assert check_soa_reply(other.to_wire(), wire) == "a reply to another question"
    assert check_soa_reply(wire, wire) == "no reply to the query"  # QR clear: not a response
    assert check_soa_reply(good.to_wire()[:5], wire) == "no reply to the query"
