"""Typed payloads: what the decoders put in them, and the JSON ``info`` made from them."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rrset
import pytest

from labctl.traffic import dns as dns_decoder
from labctl.traffic.model import CLIENT, SERVER, Event
from labctl.traffic.payload import (
    FLAG_TC,
    CommandLine,
    Credentials,
    DnsAnswer,
    DnsQuery,
    MessageSummary,
    Pop3Status,
    Question,
    Record,
    Reply,
    Unanswered,
    Undecoded,
    info,
    reply_line,
)

MX = Question("stevenchoy.example", "MX")
EXCHANGE = Record("stevenchoy.example", "MX", 300, "10 mail.stevenchoy.example", "mail.stevenchoy.example")
GLUE = Record("mail.stevenchoy.example", "A", 300, "10.89.0.110")


def _answer(**kw: object) -> DnsAnswer:
    fields: dict[str, object] = {"id": 7, "flags": 0x8180, "questions": (MX,), "rcode": "NOERROR",
                                 "answers": (EXCHANGE,), "additional": (GLUE,)}
    fields.update(kw)
    return DnsAnswer(**fields)  # type: ignore[arg-type]


def test_a_dns_query_and_answer_decoded_into_fields() -> None:
    query = dns.message.make_query("stevenchoy.example", "MX")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("stevenchoy.example.", 300, "IN", "MX", "10 mail.stevenchoy.example."))
    response.additional.append(dns.rrset.from_text("mail.stevenchoy.example.", 60, "IN", "A", "10.89.0.110"))
    asked = dns_decoder.describe(query.to_wire(), 1.0).payload
    assert asked == DnsQuery(query.id, query.flags, (MX,))
    answered = dns_decoder.describe(response.to_wire(), 2.0, from_client=False).payload
    assert isinstance(answered, DnsAnswer)
    assert (answered.id, answered.rcode, answered.truncated) == (query.id, "NOERROR", False)
    assert answered.answers == (EXCHANGE,)
    assert answered.additional == (Record("mail.stevenchoy.example", "A", 60, "10.89.0.110"),)  # no OPT
    assert answered.exchanges == ("mail.stevenchoy.example",)
    assert answered.summary == "MX 10 mail.stevenchoy.example"


def test_an_answer_s_summary_is_its_records_error_or_emptiness_without_the_additional_section() -> None:
    assert _answer().summary == "MX 10 mail.stevenchoy.example"
    assert _answer(answers=(EXCHANGE, GLUE)).summary == ("MX 10 mail.stevenchoy.example; "
                                                         "mail.stevenchoy.example A 10.89.0.110")
    assert _answer(rcode="NXDOMAIN", answers=()).summary == "NXDOMAIN (MX? stevenchoy.example)"
    assert _answer(answers=()).summary == "no MX record (NOERROR, empty answer)"
    assert _answer(flags=0x8180 | FLAG_TC).summary.endswith("   (truncated: ask again over TCP)")
    assert FLAG_TC == dns.flags.TC
    # The owner is left out where it is the name asked about, whatever its case (RFC 4343 §3), or
    # when nothing was asked.
    shouted = Record("STEVENCHOY.example", "MX", 300, "10 mail.stevenchoy.example", "mail.stevenchoy.example")
    assert _answer(answers=(shouted,)).answer_texts() == ["MX 10 mail.stevenchoy.example"]
    assert _answer(questions=()).answer_texts() == ["MX 10 mail.stevenchoy.example"]


def test_a_txt_record_that_looks_like_the_additional_note_stays_whole() -> None:
    odd = Record("stevenchoy.example", "TXT", 60, '"a   [b]"')
    answer = _answer(questions=(Question("stevenchoy.example", "TXT"),), answers=(odd,), additional=())
    assert answer.summary == 'TXT "a   [b]"'


@pytest.mark.parametrize(("code", "text", "status", "rest", "line"), [
    (250, "2.0.0 Q1 Message accepted", "2.0.0", "Q1 Message accepted", "250 2.0.0 Q1 Message accepted"),
    (451, "4.3.0 try again later", "4.3.0", "try again later", "451 4.3.0 try again later"),
    (220, "smtp.ouhk.example ESMTP", "", "smtp.ouhk.example ESMTP", "220 smtp.ouhk.example ESMTP"),
    (250, "2.1.5", "2.1.5", "", "250 2.1.5"),
    (550, "2.0.0 not a 5xx status", "", "2.0.0 not a 5xx status", "550 2.0.0 not a 5xx status"),  # RFC 3463 §2
    (221, "", "", "", "221"),
])
def test_a_reply_line_keeps_its_enhanced_status_apart(code: int, text: str, status: str, rest: str,
                                                       line: str) -> None:
    reply = Reply.parse(code, [text])
    assert reply == Reply(code, status, rest)
    assert reply_line(reply) == line


def test_info_has_the_keys_the_json_always_had() -> None:
    summary = MessageSummary("<a@b>", "Hi", 3, 42)
    message = {"message_id": "<a@b>", "subject": "Hi", "lines": 3, "octets": 42}
    assert info(DnsQuery(7, 0x100, (MX,))) == {"id": 7, "questions": ["MX? stevenchoy.example"]}
    assert info(_answer()) == {"id": 7, "questions": ["MX? stevenchoy.example"], "rcode": "NOERROR",
                               "answers": ["MX 10 mail.stevenchoy.example"],
                               "additional": ["mail.stevenchoy.example A 10.89.0.110"]}
    assert info(Reply(250, "2.0.0", "ok")) == {"code": 250}
    assert info(summary) == message
    assert info(Pop3Status("-ERR")) == {"status": "-ERR"}
    assert list(info(Pop3Status("+OK", summary))) == ["status", *message]
    assert info(Credentials("PLAIN", "andy", "pw")) == {"mechanism": "PLAIN", "user": "andy", "password": "pw"}
    assert info(Credentials(secret="pw")) == {"password": "pw"}
    assert info(Undecoded(9)) == {"octets": 9}
    assert info(Unanswered(3)) == {"syn": 3}
    assert info(CommandLine("NOOP", "")) == {} and info(None) == {}


def test_an_event_s_info_and_json_come_from_its_payload() -> None:
    login = Event(1.0, CLIENT, "auth", "PASS pw   (a password in clear text)", ("pw",), Credentials(secret="pw"))
    assert login.info == {"password": "pw"}
    assert login.to_json()["info"] == {"password": "pw"}
    assert login.to_json(hide_secrets=True)["info"] == {"password": "********"}
    assert "info" not in Event(1.0, CLIENT, "command", "NOOP", payload=CommandLine("NOOP", "")).to_json()
    assert Event(2.0, SERVER, "reply", "250 ok", payload=Reply(250, "", "ok")).to_json()["info"] == {"code": 250}
