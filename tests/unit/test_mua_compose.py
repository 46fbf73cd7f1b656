"""Composing a message: RFC 5322 header, MIME tree, encodings; parsed back by the `email` package."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.mua import compose, view
from services.mua.compose import Attachment, ComposeError, Draft

HONG_KONG = timezone(timedelta(hours=8))
WHEN = datetime(2026, 5, 9, 15, 35, 12, tzinfo=HONG_KONG)
MSGID = "<20260509153512.3f2a@ouhk.example>"


def draft(**changes: object) -> Draft:
    base: dict[str, object] = {"sender": "andy@ouhk.example", "to": ("betty@stevenchoy.example",),
                               "subject": "Hello", "body": "Hi Betty,\nsee you.\n"}
    base.update(changes)
    return Draft(**base)  # type: ignore[arg-type]


def wire(d: Draft) -> bytes:
    return compose.to_wire(compose.compose(d, date=WHEN, msgid=MSGID))


def reparse(data: bytes) -> EmailMessage:
    return BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(data)


def lines(data: bytes) -> list[bytes]:
    assert b"\n" not in data.replace(b"\r\n", b""), "every line ends in CRLF, no bare LF or CR"
    return data.split(b"\r\n")


# -- the header ---------------------------------------------------------------------------------


def test_required_fields_are_present_and_well_formed() -> None:
    msg = reparse(wire(draft(cc=("Carol <carol@ouhk.example>",))))
    assert msg["Date"] == "Sat, 09 May 2026 15:35:12 +0800"
    assert msg["From"] == "andy@ouhk.example"
    assert msg["To"] == "betty@stevenchoy.example"
    assert msg["Cc"] == "Carol <carol@ouhk.example>"
    assert msg["Subject"] == "Hello"
    assert msg["Message-ID"] == MSGID
    assert msg["MIME-Version"] == "1.0"
    assert msg.defects == []


def test_message_id_is_under_the_senders_domain() -> None:
    assert compose.message_id("Andy <andy@ouhk.example>", "abc.123") == "<abc.123@ouhk.example>"


def test_date_needs_a_time_zone() -> None:
    with pytest.raises(ValueError):
        compose.compose(draft(), date=datetime(2026, 5, 9, 15, 0), msgid=MSGID)


def test_non_ascii_subject_and_name_are_rfc2047_encoded_and_decode_back() -> None:
    data = wire(draft(subject="Grüße aus 香港 – café", to=("Bétty Choy <betty@stevenchoy.example>",)))
    assert data.isascii()
    head = data.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"^Subject: =\?utf-8\?[qb]\?", head, re.M | re.I)
    msg = reparse(data)
    assert msg["Subject"] == "Grüße aus 香港 – café"
    assert msg["To"].addresses[0].display_name == "Bétty Choy"
    assert msg["To"].addresses[0].addr_spec == "betty@stevenchoy.example"


# Unicode text without the characters that break a line (refused) and without "=?" (which a
# reader cannot tell from an encoded-word, RFC 2047 §5). White space at either end is trimmed:
# after "Subject:" it is folding white space (RFC 5322 §2.2.3).
subjects = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=200).filter(
    lambda s: "=?" not in s)


@settings(max_examples=200, deadline=None)
@given(subjects)
def test_any_subject_round_trips(subject: str) -> None:
    data = wire(draft(subject=subject))
    assert data.isascii()
    assert all(len(line) <= 998 for line in lines(data))  # RFC 5322 §2.1.1 MUST
    assert view.header(reparse(data), "Subject") == subject.strip()


@pytest.mark.parametrize("subject", ["two\nlines", "two\r\nlines", "x\x0by", "para\u2029graph"])
def test_a_subject_with_a_line_break_is_refused(subject: str) -> None:
    with pytest.raises(ComposeError, match="one line"):
        wire(draft(subject=subject))


@pytest.mark.parametrize("address", ["betty", "@stevenchoy.example", "betty@", "a@b.example, c@d.example",
                                     "bétty@stevenchoy.example", "betty@steven choy.example",
                                     "betty@x.example\r\nBcc: eve@evil.example", ""])
def test_bad_addresses_are_refused_with_a_reason(address: str) -> None:
    with pytest.raises(ComposeError):
        wire(draft(to=(address,)))


def test_bcc_goes_in_the_envelope_only() -> None:
    d = draft(to=("betty@stevenchoy.example",), cc=("Carol <carol@ouhk.example>",),
              bcc=("boss@ouhk.example", "BETTY@stevenchoy.example"))
    assert d.recipients == ["betty@stevenchoy.example", "carol@ouhk.example", "boss@ouhk.example"]
    assert d.envelope_sender == "andy@ouhk.example"
    assert b"boss" not in wire(d)


# -- the body -----------------------------------------------------------------------------------


def test_ascii_body_is_7bit_utf8_text() -> None:
    msg = reparse(wire(draft()))
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert view.body_text(msg) == "Hi Betty,\nsee you.\n"


def test_non_ascii_body_is_encoded_and_decodes_back() -> None:
    body = "Grüße,\n香港的天氣很好。\n" * 3
    data = wire(draft(body=body))
    assert data.isascii()
    msg = reparse(data)
    assert msg["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert msg.get_content_charset() == "utf-8"
    assert view.body_text(msg) == body


def test_every_line_fits_in_78_characters() -> None:
    d = draft(
        subject="A rather long subject line that goes on and on, " * 4,
        to=tuple(f"User Number {i} <user{i}@stevenchoy.example>" for i in range(12)),
        body="a long line without a break " * 40 + "\n" + "x" * 500 + "\n",
        attachments=(Attachment("data.bin", bytes(range(256)) * 20),),
    )
    data = wire(d)
    assert max(len(line) for line in lines(data)) <= 78  # RFC 5322 §2.1.1 SHOULD
    msg = reparse(data)
    assert view.body_text(msg) == d.body
    assert msg["Subject"] == d.subject.strip()
    assert len(msg["To"].addresses) == 12


bodies = st.text(st.characters(blacklist_categories=("Cs", "Co")), max_size=2000)  # no lone surrogates


@settings(max_examples=200, deadline=None)
@given(bodies)
def test_any_body_round_trips_up_to_line_ends(body: str) -> None:
    data = wire(draft(body=body))
    assert data.isascii()
    assert all(len(line) <= 998 for line in lines(data))
    # Line ends are CR, LF or CRLF (RFC 5322 §2.3); U+2028, form feed and the like are text.
    body_lines = re.split("\r\n|\r|\n", body)
    if body_lines[-1] == "":
        body_lines.pop()
    expected = "".join(line + "\n" for line in body_lines) or "\n"  # the text ends with a line end
    assert view.body_text(reparse(data)) == expected


# -- attachments --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.binary(max_size=300))
def test_binary_attachments_round_trip_byte_identical(first: bytes, second: bytes) -> None:
    d = draft(attachments=(Attachment("photo.jpg", first), Attachment("random.bin", second)))
    data = wire(d)
    assert data.isascii()
    assert all(len(line) <= 78 for line in lines(data))
    msg = reparse(data)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["photo.jpg", "random.bin"]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["base64", "base64"]
    assert [p.get_content() for p in parts] == [first, second]
    assert view.body_text(msg) == d.body


def test_attachment_types_are_guessed_from_the_name() -> None:
    d = draft(attachments=(
        Attachment("report.pdf", b"%PDF-1.4"),
        Attachment("notes.txt", b"plain"),
        Attachment("backup.tar.gz", b"\x1f\x8b"),
        Attachment("mystery.zz9", b"?"),
        Attachment("noextension", b"?"),
        Attachment("given.dat", b"?", content_type="image/png"),
    ))
    types = [p.get_content_type() for p in reparse(wire(d)).iter_attachments()]
    assert types == ["application/pdf", "text/plain", "application/gzip", "application/octet-stream",
                     "application/octet-stream", "image/png"]


def test_non_ascii_filename_is_encoded_and_decodes_back() -> None:
    d = draft(attachments=(Attachment("Übersicht 2026.pdf", b"x"),))
    data = wire(d)
    assert data.isascii()
    (part,) = reparse(data).iter_attachments()
    assert part.get_filename() == "Übersicht 2026.pdf"


def test_mime_version_only_in_the_message_header() -> None:
    data = wire(draft(attachments=(Attachment("a.bin", b"\x00"),)))
    assert data.count(b"MIME-Version:") == 1
