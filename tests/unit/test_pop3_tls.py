"""The POP3 core's TLS states (RFC 2595 §4, RFC 8314): STLS offered only where it works, the
session started over under TLS, what was pipelined after STLS dropped, passwords refused in clear
where they need TLS. No sockets: the handshake is the shell's (tests/component/test_pop3_tls.py)."""

from __future__ import annotations

import pytest

from services.actions import Log, Send, StartTls
from services.pop3.core import CAPABILITIES, Session, State
from services.smtp.session import TlsOffer
from tests.unit.test_pop3_core import AUTH, PASSWORD, article_store, say, sent

CAPA_CLEAR = b"+OK Capability list follows\r\n" + b"".join(c.encode() + b"\r\n" for c in CAPABILITIES) + b".\r\n"


def session(tls: TlsOffer, *, auth_needs_tls: bool = False) -> Session:
    s = Session("mail.stevenchoy.example", AUTH, article_store().open, tls=tls, auth_needs_tls=auth_needs_tls)
    s.start()
    return s


def capa(s: Session) -> list[bytes]:
    return say(s, "CAPA").split(b"\r\n")[1:-2]


def test_tls_off_is_todays_pop3_and_stls_is_refused_without_harm() -> None:
    s = session(TlsOffer.OFF, auth_needs_tls=True)
    assert say(s, "CAPA") == CAPA_CLEAR  # byte for byte the clear lab's
    assert say(s, "STLS") == b"-ERR STLS not offered: TLS is off in this lab\r\n"
    assert say(s, "USER betty") == b"+OK User accepted\r\n"  # auth_needs_tls means nothing without TLS
    assert say(s, f"PASS {PASSWORD}").startswith(b"+OK Pass accepted")


def test_stls_offered_before_login_only_then_the_session_starts_over() -> None:
    s = session(TlsOffer.STARTTLS)
    assert capa(s)[-2:] == [b"STLS", b"IMPLEMENTATION maillab"]
    assert b"USER" in capa(s)
    assert say(s, "USER betty") == b"+OK User accepted\r\n"
    actions = s.receive_data(b"STLS\r\n")
    assert sent(actions) == b"+OK Begin TLS negotiation\r\n"
    assert actions[-1] == StartTls()
    assert s.tls_started() == [Log("TLS started; the session starts over")]
    assert b"STLS" not in capa(s)
    assert say(s, f"PASS {PASSWORD}") == b"-ERR give USER first\r\n"  # USER given in clear is forgotten
    assert say(s, "STLS") == b"-ERR TLS already active\r\n"
    assert say(s, "USER betty") == b"+OK User accepted\r\n"
    assert say(s, f"PASS {PASSWORD}").startswith(b"+OK Pass accepted")


def test_what_was_pipelined_after_stls_is_dropped_not_answered() -> None:
    s = session(TlsOffer.STARTTLS)
    actions = s.receive_data(b"STLS\r\nUSER betty\r\nPASS " + PASSWORD.encode() + b"\r\nSTAT\r\n")
    assert sent(actions) == b"+OK Begin TLS negotiation\r\n"  # one reply: nothing after STLS
    assert actions[-1] == StartTls()
    assert any(isinstance(a, Log) and "dropped" in a.text for a in actions)
    s.tls_started()
    assert s.state is State.AUTHORIZATION
    assert say(s, "STAT") == b"-ERR STAT is not allowed before login\r\n"


def test_stls_after_login_or_with_arguments_is_refused() -> None:
    s = session(TlsOffer.STARTTLS)
    assert say(s, "STLS now") == b"-ERR STLS takes no arguments\r\n"
    say(s, "USER betty")
    say(s, f"PASS {PASSWORD}")
    assert say(s, "STLS") == b"-ERR STLS is not allowed after login\r\n"
    assert say(s, "STAT") == b"+OK 2 380\r\n"  # and the session goes on


def test_no_certificate_stls_is_a_temporary_failure() -> None:
    s = session(TlsOffer.NO_CERTIFICATE, auth_needs_tls=True)
    assert b"STLS" not in capa(s)
    assert say(s, "STLS") == b"-ERR [SYS/TEMP] TLS not available: this host has no certificate\r\n"


@pytest.mark.parametrize("line", ["USER betty", f"PASS {PASSWORD}", "APOP betty c4c9334bac560ecc979e58001b3e22fb",
                                  "AUTH PLAIN AGJldHR5AHMzY3JldCBwdw=="])
def test_passwords_in_clear_are_refused_where_they_need_tls(line: str) -> None:
    s = session(TlsOffer.STARTTLS, auth_needs_tls=True)
    actions = s.receive_data(line.encode() + b"\r\n")
    assert sent(actions) == (b"-ERR [AUTH] plaintext authentication disallowed on a clear connection; "
                             b"use STLS first, or port 995 (POP3S)\r\n")
    assert PASSWORD not in " ".join(a.text for a in actions if isinstance(a, Log))  # nor in the log


def test_capa_in_clear_hides_user_where_passwords_need_tls() -> None:
    s = session(TlsOffer.STARTTLS, auth_needs_tls=True)
    assert b"USER" not in capa(s) and b"STLS" in capa(s)  # as Dovecot with disable_plaintext_auth
    s.receive_data(b"STLS\r\n")
    s.tls_started()
    assert b"USER" in capa(s) and b"STLS" not in capa(s)
    assert say(s, "USER betty") == b"+OK User accepted\r\n"
    assert say(s, f"PASS {PASSWORD}").startswith(b"+OK Pass accepted")


def test_implicit_tls_offers_no_stls_and_takes_passwords() -> None:
    s = session(TlsOffer.IMPLICIT, auth_needs_tls=True)
    assert say(s, "CAPA") == CAPA_CLEAR
    assert say(s, "STLS") == b"-ERR TLS already active\r\n"
    assert say(s, "USER betty") == b"+OK User accepted\r\n"


def test_the_greeting_is_the_same_under_every_offer() -> None:
    for offer in TlsOffer:
        s = Session("mail.stevenchoy.example", AUTH, article_store().open, tls=offer)
        assert s.start() == [Send(b"+OK mail.stevenchoy.example POP3 server ready\r\n")]
