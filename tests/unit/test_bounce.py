"""Bounces, parsed back with the stdlib ``email`` package as a mail client would read them."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.smtp.bounce import build_bounce, original_headers
from services.smtp.spool import RecipientState, Status

T0 = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
ORIGINAL = (
    b"Received: from andy.ouhk.test by smtp.ouhk.test; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Andy <andy@ouhk.test>\r\n"
    b"To: betty@stevenchoy.test, nobody@nowhere.test\r\n"
    b"Subject: Lunch?\r\n"
    b"Message-ID: <1@andy.ouhk.test>\r\n"
    b"\r\n"
    b"Shall we?\r\n"
)
BETTY = RecipientState(
    "betty@stevenchoy.test", Status.BOUNCED, attempts=1, last_attempt=T0 + 60,
    last_error="host mail.stevenchoy.test[10.0.0.3] said: 550 5.1.1 <betty@stevenchoy.test>: No such user",
    dsn_status="5.1.1", remote_mta="mail.stevenchoy.test",
    diagnostic="550 5.1.1 <betty@stevenchoy.test>: No such user",
)
NOBODY = RecipientState(
    "nobody@nowhere.test", Status.BOUNCED, attempts=1, last_attempt=T0 + 61,
    last_error="domain nowhere.test does not exist (DNS: NXDOMAIN)", dsn_status="5.1.2",
)


def bounce(failed: list[RecipientState], original: bytes = ORIGINAL) -> bytes:
    return build_bounce(original=original, sender="andy@ouhk.test", failed=failed,
                        reporting_mta="smtp.ouhk.test", queue_id="Ab3dEf9hIjKl", arrival=T0, now=T0 + 62)


def parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def report_blocks(msg: EmailMessage) -> list[Message]:
    part = msg.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return blocks


def test_envelope_headers() -> None:
    msg = parse(bounce([BETTY]))
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@smtp.ouhk.test>"
    assert msg["To"] == "andy@ouhk.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(msg["Date"]).timestamp() == T0 + 62
    assert re.fullmatch(r"<[^<>@\s]+@smtp\.ouhk\.test>", msg["Message-ID"])
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_human_readable_part_explains_each_failure() -> None:
    msg = parse(bounce([BETTY, NOBODY]))
    text = msg.get_payload()[0].get_content()
    assert "smtp.ouhk.test" in text and "Ab3dEf9hIjKl" in text
    assert "<betty@stevenchoy.test>: host mail.stevenchoy.test[10.0.0.3] said: 550 5.1.1" in text
    assert "MX host tried: mail.stevenchoy.test" in text
    assert "<nobody@nowhere.test>: domain nowhere.test does not exist (DNS: NXDOMAIN)" in text


def test_delivery_status_fields() -> None:
    per_message, betty, nobody = report_blocks(parse(bounce([BETTY, NOBODY])))
    assert per_message["Reporting-MTA"] == "dns; smtp.ouhk.test"
    assert parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == T0
    assert dict(betty.items()) == {
        "Final-Recipient": "rfc822; betty@stevenchoy.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mail.stevenchoy.test",
        "Diagnostic-Code": "smtp; 550 5.1.1 <betty@stevenchoy.test>: No such user",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 22:14:20 +0000",
    }
    # No remote host answered for this one, so there is no Remote-MTA or Diagnostic-Code.
    assert dict(nobody.items()) == {
        "Final-Recipient": "rfc822; nobody@nowhere.test",
        "Action": "failed",
        "Status": "5.1.2",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 22:14:21 +0000",
    }


EXPIRED = RecipientState(
    "betty@stevenchoy.test", Status.BOUNCED, attempts=8, last_attempt=T0 + 600,
    last_error="delivery time expired after 8 attempts; last error: mail.stevenchoy.test[10.0.0.3]:25: "
               "connection refused",
    dsn_status="4.4.7", remote_mta="mail.stevenchoy.test",
    attempt_error="mail.stevenchoy.test[10.0.0.3]:25: connection refused",
)


def test_an_expired_recipient_reports_the_last_attempt_s_error() -> None:
    """RFC 3464 §2.3.6: no SMTP reply came, so the error goes in a private diagnostic-type, unfolded."""
    _, betty = report_blocks(parse(bounce([EXPIRED])))
    assert dict(betty.items()) == {
        "Final-Recipient": "rfc822; betty@stevenchoy.test",
        "Action": "failed",
        "Status": "4.4.7",
        "Remote-MTA": "dns; mail.stevenchoy.test",
        "Diagnostic-Code": "X-maillab; mail.stevenchoy.test[10.0.0.3]:25: connection refused",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 22:23:20 +0000",
    }
    text = parse(bounce([EXPIRED])).get_payload()[0].get_content()
    assert "delivery time expired after 8 attempts; last error: mail.stevenchoy.test[10.0.0.3]:25" in text


def test_a_long_remote_reply_stays_on_one_line() -> None:
    reply = "450 4.2.0 <betty@stevenchoy.test>: Recipient address rejected: greylisted, come back in 300 seconds"
    busy = RecipientState("betty@stevenchoy.test", Status.BOUNCED, dsn_status="4.4.7", diagnostic=reply)
    raw = bounce([busy])
    assert f"Diagnostic-Code: smtp; {reply}\r\n".encode() in raw
    assert report_blocks(parse(raw))[1]["Diagnostic-Code"] == f"smtp; {reply}"


def test_original_headers_are_returned_without_the_body() -> None:
    part = parse(bounce([BETTY])).get_payload()[2]
    text = part.get_content().replace("\r\n", "\n")
    assert text == ORIGINAL.split(b"\r\n\r\n")[0].decode().replace("\r\n", "\n") + "\n"
    assert "Shall we?" not in text


def test_wire_form_is_smtp_ready() -> None:
    raw = bounce([BETTY, NOBODY])
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998  # RFC 5322 §2.1.1


def test_pure_same_input_same_bytes() -> None:
    assert bounce([BETTY]) == bounce([BETTY])


def test_non_ascii_original_headers_are_encoded_and_come_back() -> None:
    original = "Subject: Grüße aus Hongkong 你好\r\nFrom: andy@ouhk.test\r\n\r\nbody\r\n".encode()
    raw = bounce([BETTY], original)
    assert raw.isascii()
    assert "Grüße aus Hongkong 你好" in parse(raw).get_payload()[2].get_content()


def test_boundary_never_collides_with_the_content() -> None:
    trap = b"X-Trap: --Ab3dEf9hIjKl.1700000062/smtp.ouhk.test\r\nFrom: a@b.test\r\n\r\n"
    msg = parse(bounce([BETTY], trap))
    assert len(msg.get_payload()) == 3
    assert "X-Trap" in msg.get_payload()[2].get_content()


def test_needs_a_failed_recipient() -> None:
    with pytest.raises(ValueError):
        bounce([])


def test_original_headers_of_a_message_without_body() -> None:
    assert original_headers(b"Subject: x\r\nFrom: y") == "Subject: x\nFrom: y\n"
    assert original_headers(b"Subject: x\n\nbody") == "Subject: x\n"


@settings(max_examples=200, deadline=None)
@given(
    original=st.binary(max_size=600),
    reasons=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=120), min_size=1,
                     max_size=3),
)
def test_any_original_and_reasons_give_a_parseable_report(original: bytes, reasons: list[str]) -> None:
    failed = [
        RecipientState(f"u{i}@stevenchoy.test", Status.BOUNCED, attempts=1, last_attempt=T0, last_error=reason,
                       dsn_status="5.0.0", remote_mta="mail.stevenchoy.test", diagnostic=f"550 {reason.strip()}")
        for i, reason in enumerate(reasons)
    ]
    raw = bounce(failed, original)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    blocks = msg.get_payload()[1].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == [f"rfc822; u{i}@stevenchoy.test" for i in range(len(reasons))]
    assert all(b["Action"] == "failed" for b in blocks[1:])


def test_a_hostile_reply_cannot_add_fields_to_the_report() -> None:
    evil = RecipientState("betty@stevenchoy.test", Status.BOUNCED, attempts=1, dsn_status="5.0.0",
                          last_error="host said: 550 no\r\nX-Injected: yes", remote_mta="mail.stevenchoy.test",
                          diagnostic="550 no\r\nX-Injected: yes\x85Status: 2.0.0")
    raw = bounce([evil])
    _, block = report_blocks(parse(raw))
    assert block["Status"] == "5.0.0" and "X-Injected" not in block
    assert block["Diagnostic-Code"] == "smtp; 550 no  X-Injected: yes Status: 2.0.0"
    assert b"\r\nX-Injected" not in raw
