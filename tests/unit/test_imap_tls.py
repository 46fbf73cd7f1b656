"""The IMAP core's TLS states (RFC 3501 §6.2.1, RFC 9051, RFC 8314): STARTTLS listed only where it
works, LOGINDISABLED and NO [PRIVACYREQUIRED] in clear where passwords need TLS, no capability list
after the handshake and nothing pipelined after STARTTLS kept. The handshake itself is the shell's
(tests/component/test_imap_tls.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.actions import Log, StartTls
from services.imap.core import PASSWORD_EXPOSED, Session, State
from services.imap.store import Mailboxes
from services.mailstore import deliver
from services.smtp.session import TlsOffer
from tests.unit.test_imap_core import AUTH, FAST, MESSAGE_1, PASSWORD, sent


@pytest.fixture
def box(tmp_path: Path) -> Path:
    root = tmp_path / "betty"
    deliver(root, MESSAGE_1)
    return root


CLEAR_CAPS = b"IMAP4rev1 LITERAL+ SASL-IR IDLE UIDPLUS MOVE UNSELECT NAMESPACE ID ENABLE"


class Tls:
    def __init__(self, root: Path, tls: TlsOffer, *, auth_needs_tls: bool = False) -> None:
        self.session = Session("mail.stevenchoy.example", AUTH, lambda address: Mailboxes(root), FAST, tls=tls,
                               auth_needs_tls=auth_needs_tls)
        self.greeting = sent(self.session.start())

    def say(self, line: bytes) -> bytes:
        return sent(self.session.receive_data(line + b"\r\n"))

    def capability(self) -> bytes:
        return self.say(b"c CAPABILITY").split(b"\r\n")[0]


def test_tls_off_is_todays_imap_and_starttls_is_bad() -> None:
    s = Tls(Path("/nonexistent"), TlsOffer.OFF, auth_needs_tls=True)
    assert s.greeting.startswith(b"* OK [CAPABILITY " + CLEAR_CAPS + b" AUTH=PLAIN] ")
    assert s.capability() == b"* CAPABILITY " + CLEAR_CAPS + b" AUTH=PLAIN"
    assert s.say(b"a STARTTLS") == b"a BAD STARTTLS not offered: TLS is off in this lab\r\n"


def test_starttls_listed_in_clear_then_nothing_until_asked(box: Path) -> None:
    s = Tls(box, TlsOffer.STARTTLS)
    assert b" STARTTLS AUTH=PLAIN] " in s.greeting
    actions = s.session.receive_data(b"a STARTTLS\r\n")
    assert sent(actions) == b"a OK Begin TLS negotiation now\r\n"
    assert actions[-1] == StartTls()
    assert s.session.tls_started() == [Log("TLS started; capabilities on request")]  # no untagged CAPABILITY
    assert s.capability() == b"* CAPABILITY " + CLEAR_CAPS + b" AUTH=PLAIN"
    assert s.say(b"b STARTTLS") == b"b BAD TLS already active\r\n"
    assert s.say(f'd LOGIN betty "{PASSWORD}"'.encode()).startswith(b"d OK [CAPABILITY " + CLEAR_CAPS + b"] ")


def test_a_command_pipelined_after_starttls_is_dropped(box: Path) -> None:
    s = Tls(box, TlsOffer.STARTTLS)
    actions = s.session.receive_data(f'a STARTTLS\r\nb LOGIN betty "{PASSWORD}"\r\nc SELECT INBOX\r\n'.encode())
    assert sent(actions) == b"a OK Begin TLS negotiation now\r\n"
    assert any(isinstance(a, Log) and "dropped" in a.text for a in actions)
    s.session.tls_started()
    assert s.session.state is State.NOT_AUTHENTICATED
    assert s.say(b"d SELECT INBOX") == b"d BAD SELECT is not allowed before login\r\n"


def test_half_a_literal_pipelined_after_starttls_is_dropped_too(box: Path) -> None:
    s = Tls(box, TlsOffer.STARTTLS)
    s.session.receive_data(b"a STARTTLS\r\nb LOGIN {5+}\r\nbet")
    s.session.tls_started()
    assert s.say(b"e NOOP") == b"e OK NOOP completed\r\n"  # not taken as the rest of the literal


def test_starttls_in_the_wrong_state_is_bad(box: Path) -> None:
    s = Tls(box, TlsOffer.STARTTLS)
    assert s.say(b"a STARTTLS now") == b"a BAD wrong number of arguments for STARTTLS\r\n"
    assert s.say(f'b LOGIN betty "{PASSWORD}"'.encode()).startswith(b"b OK ")
    assert s.say(b"c STARTTLS") == b"c BAD STARTTLS is not allowed without a selected mailbox\r\n"
    assert b"STARTTLS" not in s.capability()


@pytest.mark.parametrize("line", [f'a LOGIN betty "{PASSWORD}"'.encode(), b"a AUTHENTICATE PLAIN",
                                  b"a AUTHENTICATE PLAIN AGJldHR5AHMzY3JldCBwdw=="])
def test_passwords_in_clear_are_refused_where_they_need_tls(box: Path, line: bytes) -> None:
    s = Tls(box, TlsOffer.STARTTLS, auth_needs_tls=True)
    assert b" STARTTLS LOGINDISABLED] " in s.greeting and b"AUTH=PLAIN" not in s.greeting
    exposed = b"" if line == b"a AUTHENTICATE PLAIN" else PASSWORD_EXPOSED  # there, no password sent yet
    assert s.say(line) == exposed + (b"a NO [PRIVACYREQUIRED] plaintext authentication disallowed on a clear "
                                     b"connection; use STARTTLS first, or port 993 (IMAPS)\r\n")
    assert s.session.state is State.NOT_AUTHENTICATED


def test_under_tls_login_works_and_logindisabled_is_gone(box: Path) -> None:
    s = Tls(box, TlsOffer.STARTTLS, auth_needs_tls=True)
    s.session.receive_data(b"a STARTTLS\r\n")
    s.session.tls_started()
    assert s.capability() == b"* CAPABILITY " + CLEAR_CAPS + b" AUTH=PLAIN"
    assert s.say(f'b LOGIN betty "{PASSWORD}"'.encode()).startswith(b"b OK ")


def test_no_certificate_starttls_is_bad_and_login_works_in_clear(box: Path) -> None:
    s = Tls(box, TlsOffer.NO_CERTIFICATE, auth_needs_tls=True)
    assert b"STARTTLS" not in s.greeting and b"LOGINDISABLED" not in s.greeting
    assert s.say(b"a STARTTLS") == b"a BAD TLS not available: this host has no certificate\r\n"
    assert s.say(f'b LOGIN betty "{PASSWORD}"'.encode()).startswith(b"b OK ")


def test_implicit_tls_lists_no_starttls_and_takes_passwords(box: Path) -> None:
    s = Tls(box, TlsOffer.IMPLICIT, auth_needs_tls=True)
    assert s.greeting.startswith(b"* OK [CAPABILITY " + CLEAR_CAPS + b" AUTH=PLAIN] ")
    assert s.say(b"a STARTTLS") == b"a BAD TLS already active\r\n"
    assert s.say(f'b LOGIN betty "{PASSWORD}"'.encode()).startswith(b"b OK ")
