"""The trace headers the SMTP servers prepend: Received (every hop) and Return-Path (final delivery)."""

from __future__ import annotations

import email
import email.policy
import email.utils
import functools

import pytest

from services.smtp import trace
from tests.labconfig import lab_config

WHEN = 1_128_073_403.0  # Fri, 30 Sep 2005 09:43:23 UTC: the article's session, give or take a zone

CFG = lab_config("mail")

MESSAGE = b"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: hi\r\n\r\nHello.\r\n..dots\r\n"


# The MX's Received for a message relayed by the MTA; each test changes what it is about.
received = functools.partial(
    trace.received,
    helo="smtp.ouhk.example",
    peer_ip="10.89.0.25",
    peer_name="smtp.ouhk.example",
    by="mail.stevenchoy.example",
    with_protocol="ESMTP",
    queue_id="1xXXAAbPgTC3",
    recipients=("betty@stevenchoy.example",),
    when=WHEN,
)


def stamp() -> str:
    return trace.date(WHEN)


def test_received_names_both_hosts_the_protocol_the_id_and_the_recipient() -> None:
    assert received() == (
        "Received: from smtp.ouhk.example (smtp.ouhk.example [10.89.0.25])\r\n"
        "\tby mail.stevenchoy.example (maillab) with ESMTP id 1xXXAAbPgTC3\r\n"
        f"\tfor <betty@stevenchoy.example>; {stamp()}\r\n"
    ).encode()


def test_the_date_is_rfc_5322_and_the_right_instant() -> None:
    parsed = email.utils.parsedate_to_datetime(stamp())
    assert parsed.timestamp() == WHEN
    assert parsed.tzinfo is not None


@pytest.mark.parametrize(
    ("helo", "peer_ip", "peer_name", "expected"),
    [
        (None, "10.89.0.10", None, "from [10.89.0.10] ([10.89.0.10])"),  # the article: no HELO
        ("my laptop", "10.89.0.10", None, "from [10.89.0.10] ([10.89.0.10])"),  # not a domain
        ("[10.89.0.10]", "10.89.0.10", "andy.ouhk.example", "from [10.89.0.10] (andy.ouhk.example [10.89.0.10])"),
        ("andy", "fd00::10", None, "from andy ([IPv6:fd00::10])"),
        ("evil\rX-Injected: 1", "10.89.0.10", None, "from [10.89.0.10] ([10.89.0.10])"),
    ],
)
def test_the_from_clause(helo: str | None, peer_ip: str, peer_name: str | None, expected: str) -> None:
    first_line = received(helo=helo, peer_ip=peer_ip, peer_name=peer_name).split(b"\r\n")[0]
    assert first_line == f"Received: {expected}".encode()


def test_for_only_with_a_single_recipient() -> None:
    two = received(recipients=("betty@stevenchoy.example", "carol@stevenchoy.example"))
    assert b"for <" not in two and b"carol" not in two
    assert two.endswith(f"id 1xXXAAbPgTC3; {stamp()}\r\n".encode())


@pytest.mark.parametrize(
    ("esmtp", "authenticated", "tls", "name"),
    [(False, False, False, "SMTP"), (True, False, False, "ESMTP"), (True, True, False, "ESMTPA"),
     (True, False, True, "ESMTPS"), (True, True, True, "ESMTPSA"),  # RFC 3848
     (False, False, True, "SMTP")],  # HELO under TLS: RFC 3848 names no SMTPS
)
def test_with_protocol(esmtp: bool, authenticated: bool, tls: bool, name: str) -> None:
    assert trace.protocol(esmtp=esmtp, authenticated=authenticated, tls=tls) == name


def test_the_tls_comment_has_a_line_of_its_own_as_postfix_writes_it() -> None:
    using = "using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
    lines = received(tls=using, with_protocol="ESMTPS").split(b"\r\n")
    assert lines[1] == f"\t({using})".encode()
    assert lines[2].startswith(b"\tby mail.stevenchoy.example (maillab) with ESMTPS id ")
    msg = email.message_from_bytes(trace.prepend(MESSAGE, received(tls=using)), policy=email.policy.default)
    assert not msg.defects and "(using TLSv1.3 with cipher" in str(msg["Received"])


def test_return_path() -> None:
    assert trace.return_path("andy@ouhk.example") == b"Return-Path: <andy@ouhk.example>\r\n"
    assert trace.return_path("") == b"Return-Path: <>\r\n"  # a bounce


def test_prepending_leaves_the_message_untouched_and_parses() -> None:
    stored = trace.prepend(MESSAGE, trace.return_path("andy@ouhk.example"), received())
    assert stored.endswith(MESSAGE)
    assert all(line.endswith(b"\r") for line in stored.split(b"\n")[:-1])  # CRLF only, no bare LF
    assert all(len(line) <= 998 for line in stored.split(b"\r\n"))  # RFC 5322 §2.1.1
    msg = email.message_from_bytes(stored, policy=email.policy.default)
    assert list(msg.keys())[:3] == ["Return-Path", "Received", "From"]
    assert msg["Return-Path"] == "<andy@ouhk.example>"
    assert " ".join(str(msg["Received"]).split()) == (
        "from smtp.ouhk.example (smtp.ouhk.example [10.89.0.25]) by mail.stevenchoy.example (maillab) "
        f"with ESMTP id 1xXXAAbPgTC3 for <betty@stevenchoy.example>; {stamp()}"
    )
    assert not msg.defects


def test_a_second_hop_goes_on_top() -> None:
    first = trace.prepend(MESSAGE, received(by="smtp.ouhk.example", helo="andy.ouhk.example", peer_ip="10.89.0.10",
                                            peer_name="andy.ouhk.example", with_protocol="ESMTPA"))
    final = trace.prepend(first, trace.return_path("andy@ouhk.example"), received())
    msg = email.message_from_bytes(final, policy=email.policy.default)
    hops = [" ".join(str(h).split()) for h in msg.get_all("Received", [])]
    assert [h.split(" by ")[1].split(" ")[0] for h in hops] == ["mail.stevenchoy.example", "smtp.ouhk.example"]


def test_reverse_name_is_the_lab_host_at_that_address() -> None:
    assert trace.reverse_name(CFG, "10.89.0.25") == "smtp.ouhk.example"
    assert trace.reverse_name(CFG, "192.0.2.1") is None
    assert trace.address_literal("10.89.0.25") == "[10.89.0.25]"
    assert trace.address_literal("fd00::1") == "[IPv6:fd00::1]"
