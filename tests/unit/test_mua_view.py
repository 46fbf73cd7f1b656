"""Reading a message: decoded headers and text, the MIME tree, attachments, safe file names."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.mua import view

PNG = bytes(range(256)) + b"\x89PNG\r\n\x1a\n"
PDF = b"%PDF-1.4\n" + bytes(range(200, 256)) * 3
HTML = ("<html><head><title>Hidden title</title><style>p { color: red }</style></head><body>"
        "<p>Hello <b>Betty</b> &amp; friends,</p><ul><li>one</li><li>two</li></ul>"
        "<script>alert('x')</script><p>Caf\u00e9 &lt;open&gt;</p></body></html>")


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data)


# The shape Thunderbird sends: text and HTML alternatives, an inline image, an attachment with an
# RFC 2231 file name, and a forwarded message.
NESTED = b"""From: =?iso-8859-1?q?J=F6rg?= <joerg@ouhk.example>
To: betty@stevenchoy.example
Subject: =?utf-8?b?5L2g5aW9?= and more
Date: Sat, 09 May 2026 15:35:12 +0800
Message-ID: <x@ouhk.example>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Gr=FC=DFe, Betty!
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

""" + b64(HTML.encode()) + b"""
--inner--

--outer
Content-Type: image/png; name="cat.png"
Content-Disposition: inline; filename="cat.png"
Content-Transfer-Encoding: base64

""" + b64(PNG) + b"""
--outer
Content-Type: application/pdf
Content-Disposition: attachment; filename*=utf-8''R%C3%A9sum%C3%A9.pdf
Content-Transfer-Encoding: base64

""" + b64(PDF) + b"""
--outer
Content-Type: message/rfc822

From: someone@else.example
Subject: inner

inner body
--outer--
"""


def test_nested_tree_is_described_part_by_part() -> None:
    got = [(p.number, p.depth, p.content_type, p.encoding, p.charset, p.size, p.filename, p.disposition)
           for p in view.tree(view.parse(NESTED))]
    assert got == [
        ("", 0, "multipart/mixed", "7bit", None, None, None, None),
        ("1", 1, "multipart/alternative", "7bit", None, None, None, None),
        ("1.1", 2, "text/plain", "quoted-printable", "iso-8859-1", len("Grüße, Betty!"), None, None),
        ("1.2", 2, "text/html", "base64", "utf-8", len(HTML.encode()), None, None),
        ("2", 1, "image/png", "base64", None, len(PNG), "cat.png", "inline"),
        ("3", 1, "application/pdf", "base64", None, len(PDF), "Résumé.pdf", "attachment"),
        ("4", 1, "message/rfc822", "7bit", None, None, None, None),
        ("4.1", 2, "text/plain", "7bit", None, len("inner body"), None, None),
    ]


def test_headers_are_decoded_from_rfc2047() -> None:
    assert view.headers(view.parse(NESTED)) == {
        "From": "Jörg <joerg@ouhk.example>",
        "To": "betty@stevenchoy.example",
        "Date": "Sat, 09 May 2026 15:35:12 +0800",
        "Subject": "你好 and more",
        "Message-ID": "<x@ouhk.example>",
    }


def test_plain_text_is_preferred_and_decoded_from_its_charset() -> None:
    assert view.body_text(view.parse(NESTED)) == "Grüße, Betty!"


def test_attachments_come_back_byte_identical() -> None:
    found = view.attachments(view.parse(NESTED))
    assert [(p.number, p.filename, data) for p, data in found] == [("2", "cat.png", PNG), ("3", "Résumé.pdf", PDF)]


def test_any_leaf_part_can_be_taken_by_number() -> None:
    msg = view.parse(NESTED)
    found = view.part(msg, "1.2")
    assert found is not None and found[1] == HTML.encode()
    assert view.part(msg, "1") is None  # a multipart has no bytes of its own
    assert view.part(msg, "9") is None


def test_rendered_message_shows_headers_text_and_tree() -> None:
    out = view.render_message(view.parse(NESTED))
    assert out.startswith("From: Jörg <joerg@ouhk.example>\nTo: betty@stevenchoy.example\n")
    assert "\n\nGrüße, Betty!\n\nMIME tree:\n" in out
    assert "  3       application/pdf  (base64, 177 bytes, filename=\"Résumé.pdf\")" in out
    assert "  1.1       text/plain  (quoted-printable, charset=iso-8859-1, 13 bytes)" in out


def test_json_form_is_what_labctl_parses() -> None:
    obj = json.loads(json.dumps(view.message_json(view.parse(NESTED))))
    assert obj["headers"]["Subject"] == "你好 and more"
    assert obj["text"] == "Grüße, Betty!"
    assert obj["parts"][5] == {"number": "3", "depth": 1, "content_type": "application/pdf", "encoding": "base64",
                               "charset": None, "size": 177, "filename": "Résumé.pdf", "disposition": "attachment",
                               "sha256": "69c4bc1dfa6a13d62aec61ab6db1111f39b9c8ffca5661c331cb94b78496a4ba"}


def test_html_only_message_is_rendered_as_text() -> None:
    raw = (b"From: a@ouhk.example\nSubject: html\nMIME-Version: 1.0\n"
           b"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + b64(HTML.encode()))
    text = view.body_text(view.parse(raw))
    assert text == "Hello Betty & friends,\n\none\ntwo\n\nCafé <open>"
    assert "alert" not in text and "Hidden" not in text and "color" not in text


def test_html_to_text_keeps_words_apart() -> None:
    assert view.html_to_text("a<br>b<div>c</div>d") == "a\nb\nc\nd"
    assert view.html_to_text("<h1>Title</h1>text<p>para</p>") == "Title\n\ntext\n\npara"
    assert view.html_to_text("<p>one\n   two</p>") == "one two"


def test_unknown_charset_falls_back_to_utf8() -> None:
    raw = "Content-Type: text/plain; charset=x-klingon\n\nqapla\u2019\n".encode()
    assert view.body_text(view.parse(raw)) == "qapla\u2019\n"


def test_crlf_message_reads_with_plain_line_ends() -> None:
    raw = b"Subject: crlf\r\nContent-Type: text/plain\r\n\r\nline one\r\nline two\r\n"
    assert view.body_text(view.parse(raw)) == "line one\nline two\n"


def test_message_without_text_says_so() -> None:
    raw = (b"Subject: only a file\nMIME-Version: 1.0\nContent-Type: application/zip\n"
           b"Content-Disposition: attachment; filename=a.zip\nContent-Transfer-Encoding: base64\n\nUEsFBg==\n")
    msg = view.parse(raw)
    assert view.body_text(msg) == ""
    assert "(no text part" in view.render_message(msg)
    ((part, data),) = view.attachments(msg)
    assert (part.number, part.filename, data) == ("1", "a.zip", b"PK\x05\x06")


def test_summary_and_list() -> None:
    row = view.summarize(3, "1778312112.M1P2Q3.betty", NESTED)
    assert row == view.Summary(3, "1778312112.M1P2Q3.betty", "2026-05-09 15:35 +0800",
                               "Jörg <joerg@ouhk.example>", "你好 and more", len(NESTED))
    table = view.render_list([row]).splitlines()
    assert table[0].split() == ["#", "date", "from", "size", "subject"]
    assert table[1].split()[0] == "3" and table[1].endswith("你好 and more")


def test_bad_date_is_shown_as_written() -> None:
    assert view.short_date("yesterday-ish") == "yesterday-ish"
    assert view.short_date(None) == ""


# -- file names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "_._etc_passwd"),
    ("..\\..\\boot.ini", "_._boot.ini"),
    ("/etc/shadow", "_etc_shadow"),
    ("..", "fallback.bin"),
    (".bashrc", "bashrc"),
    ("a..b.txt", "a.b.txt"),
    ("evil\x00name\n.txt", "evilname.txt"),
    ("", "fallback.bin"),
    (None, "fallback.bin"),
    ("Résumé 2026.pdf", "Résumé 2026.pdf"),
])
def test_safe_filename(name: str | None, expected: str) -> None:
    assert view.safe_filename(name, "fallback.bin") == expected


def test_overlong_filename_is_cut_keeping_its_extension() -> None:
    cut = view.safe_filename("é" * 300 + ".pdf", "x")
    assert cut.endswith(".pdf") and len(cut.encode()) <= view.MAX_FILENAME_BYTES


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_filename_stays_in_its_folder(name: str) -> None:
    safe = view.safe_filename(name, "part-1.bin")
    assert safe and "/" not in safe and "\\" not in safe and ".." not in safe
    assert not safe.startswith(".") and safe.isprintable()
    assert len(safe.encode("utf-8", "surrogatepass")) <= view.MAX_FILENAME_BYTES
    folder = Path("/srv/save")
    assert (folder / safe).resolve().parent == folder


def test_default_filename_from_type() -> None:
    p = view.Part("2.1", 2, "image/png", "base64", None, 10, None, None)
    assert view.default_filename(p) == "part-2.1.png"


# -- anything a peer may send ------------------------------------------------------------------

HEADER_WORDS = [b"Content-Type: ", b"multipart/mixed; boundary=b", b"text/plain; charset=", b"utf-7", b"idna",
                b"Content-Transfer-Encoding: ", b"base64", b"quoted-printable", b"x-uuencode",
                b"Content-Disposition: attachment; filename*=", b"''%ff%fe", b"=?utf-8?b?", b"=?x?q?=FF?=",
                b"Subject: ", b"From: ", b"<", b">", b"\"", b"\n", b"\r\n", b"\n\n", b"--b\n", b"--b--\n",
                b"message/rfc822", b"=", b"==", b"\xff", b"\x00"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(HEADER_WORDS), st.binary(max_size=20)), max_size=40))
def test_viewing_never_raises_on_garbage(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    msg = view.parse(data)
    text = view.render_message(msg)
    json.dumps(view.message_json(msg), ensure_ascii=False).encode("utf-8")  # printable, encodable
    text.encode("utf-8")
    view.summarize(1, "k", data)
    for p, content in view.attachments(msg):
        assert p.size == len(content)


def test_read_shows_the_path_oldest_hop_first() -> None:
    raw = (b"Return-Path: <andy@ouhk.example>\r\n"
           b"Received: from smtp.ouhk.example (smtp.ouhk.example [10.89.0.25])\r\n"
           b"\tby mail.stevenchoy.example (maillab) with ESMTP id B; Sun, 29 Nov 2026 05:16:42 +0000\r\n"
           b"Received: from andy.ouhk.example (andy.ouhk.example [10.89.0.10])\r\n"
           b"\tby smtp.ouhk.example (maillab) with ESMTP id A; Sun, 29 Nov 2026 05:16:42 +0000\r\n"
           b"Subject: hi\r\n\r\nbody\r\n")
    shown = view.render_message(view.parse(raw))
    path = shown.split("Path (Received headers, oldest first):\n")[1].splitlines()
    assert path[0].startswith("  1. from andy.ouhk.example") and "by smtp.ouhk.example" in path[0]
    assert path[1].startswith("  2. from smtp.ouhk.example") and "by mail.stevenchoy.example" in path[1]
    assert path[2] == "  Return-Path: <andy@ouhk.example>"
    assert "Path" not in view.render_message(view.parse(b"Subject: no trace\r\n\r\nx\r\n"))


def test_a_bounce_s_delivery_status_is_one_part_showing_its_fields() -> None:
    """message/delivery-status (RFC 3464) was shown as two empty text/plain parts; its fields are its text."""
    from services.smtp.bounce import build_bounce
    from services.smtp.spool import RecipientState, Status

    failed = RecipientState("betty@stevenchoy.example", Status.BOUNCED, attempts=8, last_attempt=1_700_000_600.0,
                            dsn_status="4.4.7", remote_mta="mail.stevenchoy.example",
                            diagnostic="450 4.2.0 Mailbox busy")
    raw = build_bounce(original=b"Subject: lunch\r\n\r\nShall we?\r\n", sender="andy@ouhk.example", failed=[failed],
                       reporting_mta="smtp.ouhk.example", queue_id="Q1", arrival=1_700_000_000.0,
                       now=1_700_000_601.0)
    msg = view.parse(raw)
    parts = view.tree(msg)
    assert [(p.number, p.content_type) for p in parts] == [
        ("", "multipart/report"), ("1", "text/plain"), ("2", "message/delivery-status"), ("3", "text/rfc822-headers")]
    report = parts[2]
    assert report.report[1] == (
        ("Final-Recipient", "rfc822; betty@stevenchoy.example"), ("Action", "failed"), ("Status", "4.4.7"),
        ("Remote-MTA", "dns; mail.stevenchoy.example"), ("Diagnostic-Code", "smtp; 450 4.2.0 Mailbox busy"),
        ("Last-Attempt-Date", "Tue, 14 Nov 2023 22:23:20 +0000"))
    found = view.part(msg, "2")
    assert found is not None and b"Diagnostic-Code: smtp; 450 4.2.0 Mailbox busy\n" in found[1]
    assert report.size == len(found[1])
    rendered = view.render_tree(parts)
    assert "  2       message/delivery-status  (7bit, 302 bytes)\n" in rendered
    assert "\n            Reporting-MTA: dns; smtp.ouhk.example\n" in rendered
    assert "\n            Status: 4.4.7\n            Remote-MTA: dns; mail.stevenchoy.example\n" in rendered
    assert json.loads(json.dumps(view.message_json(msg)))["parts"][2]["report"][1][2] == ["Status", "4.4.7"]
