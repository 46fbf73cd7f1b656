"""IMAP under TLS on 127.0.0.1 (RFC 3501 §6.2.1, RFC 9051, RFC 8314): STARTTLS with imaplib,
IMAPS on its own port, LOGINDISABLED and NO [PRIVACYREQUIRED] in clear where passwords need TLS,
and the STARTTLS injection refused: a tagged command sent in clear in the same packet as STARTTLS
is never answered under TLS (the CVE-2024-34083 class)."""

from __future__ import annotations

import imaplib

import pytest

from services.smtp.session import TlsOffer
from tests.component.accesstls import HOST, PASSWORD, TIMEOUT, AccessLab, lab, lines

__all__ = ["lab"]  # the fixture


def test_starttls_then_login_with_imaplib(lab: AccessLab) -> None:
    ports = lab.serve()
    client = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=TIMEOUT)
    try:
        assert "STARTTLS" in client.capabilities and "LOGINDISABLED" in client.capabilities
        assert "AUTH=PLAIN" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login("betty", PASSWORD)
        status, _ = client.starttls(lab.client_context())  # imaplib asks CAPABILITY again itself
        assert status == "OK"
        assert "STARTTLS" not in client.capabilities and "AUTH=PLAIN" in client.capabilities
        assert client.login("betty", PASSWORD)[0] == "OK"
        assert client.select("INBOX") == ("OK", [b"1"])
        assert b"Subject: one" in client.fetch("1", "(BODY.PEEK[HEADER])")[1][0][1]  # type: ignore[index]
    finally:
        client.logout()
    assert b"CLIENT_TRAFFIC_SECRET_0" in lab.keylog()


def test_imaps_is_tls_from_the_first_byte(lab: AccessLab) -> None:
    ports = lab.serve()
    client = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], timeout=TIMEOUT, ssl_context=lab.client_context())
    try:
        assert "STARTTLS" not in client.capabilities and "AUTH=PLAIN" in client.capabilities
        assert client.login("betty", PASSWORD)[0] == "OK"
    finally:
        client.logout()


def test_a_tagged_command_pipelined_after_starttls_is_never_run_under_tls(lab: AccessLab) -> None:
    ports = lab.serve(auth_needs_tls=False)
    raw = lab.raw(ports["imap"])
    assert lines(raw, b"\r\n").startswith(b"* OK [CAPABILITY ")
    raw.sendall(f'a STARTTLS\r\nb LOGIN betty "{PASSWORD}"\r\n'.encode())  # ONE write: the injection
    assert lines(raw, b"\r\n") == b"a OK Begin TLS negotiation now\r\n"
    with lab.client_context().wrap_socket(raw, server_hostname=HOST) as secure:
        secure.sendall(b"c SELECT INBOX\r\nd LOGOUT\r\n")
        got = lines(secure, b"d OK LOGOUT completed\r\n")
    # Nothing tagged b, ever; and SELECT finds the session not logged in.
    assert got == (b"c BAD SELECT is not allowed before login\r\n"
                   b"* BYE IMAP4rev1 server logging out\r\nd OK LOGOUT completed\r\n")


def test_starttls_in_the_wrong_state_or_with_tls_off_is_bad(lab: AccessLab) -> None:
    ports = lab.serve(TlsOffer.OFF)
    assert set(ports) == {"pop3", "imap"}
    raw = lab.raw(ports["imap"])
    greeting = lines(raw, b"\r\n")
    assert b"STARTTLS" not in greeting and b"AUTH=PLAIN" in greeting
    raw.sendall(b"a STARTTLS\r\n")
    assert lines(raw, b"\r\n") == b"a BAD STARTTLS not offered: TLS is off in this lab\r\n"
    raw.sendall(f'b LOGIN betty "{PASSWORD}"\r\nc STARTTLS\r\n'.encode())
    assert lines(raw, b"c BAD STARTTLS is not allowed without a selected mailbox\r\n").startswith(b"b OK ")
