"""The SMTP server session core, driven by command scripts: no sockets, no event loop, no aiosmtpd.

:func:`say` plays the engine's part: it splits a command line as aiosmtpd does, calls the
session's method for the verb, answers the verbs aiosmtpd answers itself (RSET, NOOP, QUIT) as
it does, and passes every reply through the bad-command budget, as the server's ``_answer`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import hypothesis.strategies as st
from hypothesis import given

from services.smtp.policy import EnvelopePath
from services.smtp.session import (
    AUTH_IN_TRANSACTION,
    MAX_BAD_COMMANDS,
    MAX_RECIPIENTS,
    REFUSE_ALL,
    Client,
    ServerSession,
    State,
    TlsInfo,
    TlsOffer,
)
from services.smtp.wire import Reply, parse_reply_line

ANDY, BETTY = "andy@ouhk.example", "betty@stevenchoy.example"


class Checks:
    """A role that takes every sender and every recipient but nobody@..."""

    def __init__(self) -> None:
        self.asked: list[Client] = []

    def check_sender(self, client: Client, sender: EnvelopePath) -> Reply:
        self.asked.append(client)
        return Reply(250, "2.1.0", f"{sender.echo}... Sender ok")

    def check_recipient(self, client: Client, recipient: EnvelopePath) -> Reply:
        self.asked.append(client)
        if recipient.address.startswith("nobody@"):
            return Reply(550, "5.1.1", f"{recipient.echo}... User unknown")
        return Reply(250, "2.1.5", f"{recipient.echo}... Recipient ok")


def session(*, auth: bool = False, checks: Checks | None = None, tls: TlsOffer = TlsOffer.OFF,
            tls_required: bool = False) -> ServerSession:
    s = ServerSession("mail.stevenchoy.example", checks or Checks(), size_limit=2048,
                      auth_mechanisms=("LOGIN", "PLAIN") if auth else (), tls_offer=tls, tls_required=tls_required)
    s.peer_ip = "10.0.0.5"
    return s


def _auth(s: ServerSession, arg: str | None) -> Reply:
    refusal = s.auth()
    if refusal is not None:
        return refusal
    s.authenticated(ANDY)  # the engine's SASL exchange, as if it succeeded
    return Reply(235, "2.7.0", "Authentication successful")


def _rset(s: ServerSession, arg: str | None) -> Reply:
    if arg:
        return Reply(501, "5.5.4", "Syntax: RSET")
    s.rset()
    return Reply(250, "2.0.0", "OK")


VERBS: dict[str, Callable[[ServerSession, str | None], Reply]] = {
    "HELO": lambda s, arg: s.hello(arg, esmtp=False),
    "EHLO": lambda s, arg: s.hello(arg, esmtp=True),
    "MAIL": ServerSession.mail,
    "RCPT": ServerSession.rcpt,
    "DATA": ServerSession.data,
    "VRFY": ServerSession.vrfy,
    "HELP": ServerSession.help,
    "AUTH": _auth,
    "RSET": _rset,
    "STARTTLS": ServerSession.starttls,
    "NOOP": lambda s, arg: Reply(250, "2.0.0", "OK"),
    "QUIT": lambda s, arg: Reply(221, "2.0.0", "Bye"),
}


def say(s: ServerSession, line: str) -> str:
    """One command line in, the reply line(s) that would go out ("" once the session is closed)."""
    if s.closed:
        return ""
    verb, _, rest = line.partition(" ")
    handler = VERBS.get(verb.upper())
    reply = handler(s, rest.strip() or None) if handler else Reply(500, "5.5.1", "Command unrecognized")
    if reply.code == 354:
        s.message_read()  # the engine reads the message; its reply is the role's, not the session's
    final = s.replied(reply.code)
    return (final or reply).render()


# -- the article's session ---------------------------------------------------------------------


def test_the_article_s_session_needs_no_helo() -> None:
    checks = Checks()
    s = session(checks=checks)
    assert say(s, "MAIL FROM: andy@ouhk.example") == "250 2.1.0 andy@ouhk.example... Sender ok"
    assert s.state is State.MAIL
    assert say(s, "RCPT TO: betty@stevenchoy.example") == "250 2.1.5 betty@stevenchoy.example... Recipient ok"
    assert s.state is State.RCPT
    assert s.data(None) == Reply(354, "", 'Enter mail, end with "." on a line by itself')
    assert s.message_read() == (ANDY, (BETTY,))
    assert (s.state, s.sender, s.recipients) == (State.CONNECTED, None, [])
    assert checks.asked[0] == Client("10.0.0.5", None, False, None)


def test_ehlo_lists_what_is_implemented_and_auth_only_where_offered() -> None:
    assert say(session(), "EHLO client.example").split("\r\n") == [
        "250-mail.stevenchoy.example Hello [10.0.0.5], pleased to meet you",
        "250-SIZE 2048", "250-8BITMIME", "250-PIPELINING", "250 ENHANCEDSTATUSCODES"]
    assert say(session(auth=True), "EHLO client.example").endswith("\r\n250 AUTH LOGIN PLAIN")
    assert say(session(), "HELO client.example") == "250 mail.stevenchoy.example Hello [10.0.0.5], pleased to meet you"
    assert say(session(), "HELO") == "501 5.5.4 Syntax: HELO hostname"


def test_a_greeting_ends_the_transaction() -> None:
    s = session()
    say(s, "EHLO client.example")
    say(s, f"MAIL FROM:<{ANDY}>")
    say(s, f"RCPT TO:<{BETTY}>")
    say(s, "HELO again.example")  # RFC 5321 §4.1.4
    assert (s.state, s.sender, s.helo, s.esmtp) == (State.GREETED, None, "again.example", False)


# -- the order of commands -------------------------------------------------------------------------


def test_commands_out_of_order_get_503() -> None:
    s = session()
    assert say(s, f"RCPT TO:<{BETTY}>") == "503 5.5.1 Need MAIL before RCPT"
    assert say(s, "DATA") == "503 5.5.1 Need MAIL command"
    say(s, f"MAIL FROM:<{ANDY}>")
    assert say(s, f"MAIL FROM:<{ANDY}>") == "503 5.5.1 Sender already specified"
    assert say(s, "DATA") == "503 5.5.1 Need RCPT (recipient)"
    assert say(s, "RCPT TO:<nobody@stevenchoy.example>").startswith("550 5.1.1")
    assert say(s, "DATA") == "503 5.5.1 Need RCPT (recipient)"  # a refused recipient is none
    say(s, f"RCPT TO:<{BETTY}>")
    assert say(s, "DATA x") == "501 5.5.4 Syntax: DATA"
    assert s.state is State.RCPT


def test_rset_ends_the_transaction() -> None:
    s = session()
    say(s, "EHLO client.example")
    say(s, f"MAIL FROM:<{ANDY}>")
    assert say(s, "RSET") == "250 2.0.0 OK"
    assert (s.state, s.sender) == (State.GREETED, None)
    assert say(s, f"MAIL FROM:<{ANDY}>").startswith("250 ")


def test_a_recipient_given_twice_is_kept_once() -> None:
    s = session()
    say(s, f"MAIL FROM:<{ANDY}>")
    say(s, f"RCPT TO:<{BETTY}>")
    say(s, f"RCPT TO:{BETTY}")
    assert s.recipients == [BETTY]


def test_the_recipient_limit() -> None:
    s = session()
    say(s, "MAIL FROM:<>")
    for i in range(MAX_RECIPIENTS):
        assert say(s, f"RCPT TO:<u{i}@stevenchoy.example>").startswith("250 ")
    for _ in range(MAX_BAD_COMMANDS + 1):  # a 452 is no bad command: the session goes on
        assert say(s, "RCPT TO:<one-more@stevenchoy.example>") == "452 4.5.3 Too many recipients"
    assert len(s.recipients) == MAX_RECIPIENTS and not s.closed


# -- AUTH (RFC 4954) --------------------------------------------------------------------------------


def test_auth_is_refused_where_it_is_not_offered() -> None:
    s = session()
    say(s, "EHLO client.example")
    assert say(s, "AUTH PLAIN") == "502 5.5.1 AUTH is offered on the submission port only"


def test_auth_needs_ehlo() -> None:
    s = session(auth=True)
    assert say(s, "AUTH PLAIN") == "503 5.5.1 Send EHLO first"
    say(s, "HELO client.example")
    assert say(s, "AUTH PLAIN") == "503 5.5.1 AUTH is an ESMTP command: send EHLO, not HELO"


def test_auth_inside_a_transaction_gets_503() -> None:
    s = session(auth=True)
    say(s, "EHLO client.example")
    say(s, f"MAIL FROM:<{ANDY}>")
    assert s.auth() == AUTH_IN_TRANSACTION
    assert say(s, "AUTH PLAIN") == "503 5.5.1 AUTH not permitted during a mail transaction"
    say(s, f"RCPT TO:<{BETTY}>")
    assert say(s, "AUTH PLAIN") == "503 5.5.1 AUTH not permitted during a mail transaction"
    assert s.login is None
    say(s, "RSET")
    assert say(s, "AUTH PLAIN") == "235 2.7.0 Authentication successful"
    assert say(s, "AUTH PLAIN") == "503 5.5.1 Already authenticated"
    say(s, f"MAIL FROM:<{ANDY}>")
    assert s.client.login == ANDY


def test_reset_forgets_the_greeting_the_login_and_the_transaction() -> None:
    """What STARTTLS needs (RFC 3207 §4.2): the client starts over, the budget stays spent."""
    s = session(auth=True)
    say(s, "EHLO client.example")
    say(s, "AUTH PLAIN")
    say(s, "XYZZY")
    say(s, f"MAIL FROM:<{ANDY}>")
    s.reset()
    assert (s.state, s.helo, s.esmtp, s.login, s.sender) == (State.CONNECTED, None, False, None, None)
    assert say(s, "AUTH PLAIN") == "503 5.5.1 Send EHLO first"
    for _ in range(MAX_BAD_COMMANDS - 3):
        say(s, "XYZZY")
    assert say(s, "XYZZY").startswith("421 ")


# -- the budget of bad commands ---------------------------------------------------------------------


def test_the_last_bad_command_of_the_budget_gets_421_and_closes() -> None:
    s = session()
    for _ in range(MAX_BAD_COMMANDS - 1):
        assert say(s, "MAIL FROM:<bad address>") == "501 5.1.7 Bad sender address syntax"
    assert say(s, "RCPT TO:<x@y.example>") == "421 4.7.0 mail.stevenchoy.example Too many errors, closing connection"
    assert s.closed
    assert s.data(None) == REFUSE_ALL[State.CLOSED]  # never a 354 after the end


def test_quit_closes_and_nothing_after_it_starts_a_transaction() -> None:
    s = session()
    say(s, f"MAIL FROM:<{ANDY}>")
    say(s, f"RCPT TO:<{BETTY}>")
    assert say(s, "QUIT") == "221 2.0.0 Bye"
    assert s.closed and s.data(None).code != 354 and s.mail(f"FROM:<{ANDY}>").code == 421


def test_help_and_vrfy() -> None:
    assert "AUTH" not in say(session(), "HELP")
    assert " AUTH" in say(session(auth=True), "HELP").split("\r\n")[0]
    assert say(session(), "HELP mail") == "214 2.0.0 MAIL FROM:<address> [SIZE=<octets>] [BODY=7BIT|8BITMIME]"
    assert say(session(), "HELP FOO") == "504 5.5.4 HELP topic unknown"
    assert say(session(), "VRFY betty").startswith("252 2.5.2 ")


# -- any script at all -------------------------------------------------------------------------------

WORDS = ["HELO client.example", "EHLO client.example", "HELO", f"MAIL FROM:<{ANDY}>", "MAIL FROM:<>",
         "MAIL FROM:<bad", "MAIL FROM:<a@b.example> SIZE=99999", f"RCPT TO:<{BETTY}>",
         "RCPT TO:<nobody@stevenchoy.example>", "RCPT", "DATA", "DATA x", "RSET", "NOOP", "AUTH PLAIN",
         "VRFY", "VRFY x", "HELP", "HELP DATA", "QUIT", "XYZZY"]
ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@given(st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=30)), max_size=40), st.booleans())
def test_any_script_gets_a_well_formed_reply_to_every_command(script: list[str], auth: bool) -> None:
    s = session(auth=auth)
    for line in script:
        was_closed = s.closed
        out = say(s, line)
        if was_closed:
            assert out == ""
            continue
        lines = out.split("\r\n")
        for i, raw in enumerate(lines):
            parsed = parse_reply_line(raw.encode("utf-8"))
            assert parsed is not None and parsed.last == (i == len(lines) - 1), out
            code = parsed.code
            status = parsed.text.split(" ", 1)[0]
            # RFC 2034 §3: every reply has the status of its class, but the greetings and 354.
            greeting = code == 250 and line.partition(" ")[0].upper() in ("HELO", "EHLO")
            assert (ENHANCED.fullmatch(status) and status[0] == str(code)[0]) or greeting or code == 354, out
        if s.closed:
            continue
        # The state and the envelope agree.
        assert (s.sender is not None) == (s.state in (State.MAIL, State.RCPT)), s.state
        assert bool(s.recipients) == (s.state is State.RCPT), s.state


# -- STARTTLS (RFC 3207) and AUTH only under TLS (RFC 8314 §3.3) --------------------------------------

TLS13 = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


def starttls(s: ServerSession) -> None:
    """STARTTLS, then the handshake the engine runs, succeeding."""
    assert say(s, "STARTTLS") == "220 2.0.0 Ready to start TLS"
    assert s.state is State.HANDSHAKE
    s.tls_started(TLS13)


def test_starttls_is_offered_until_the_session_is_under_tls() -> None:
    s = session(tls=TlsOffer.STARTTLS)
    assert say(s, "EHLO client.example").endswith("\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS")
    assert "STARTTLS" in say(s, "HELP")
    starttls(s)
    assert say(s, "EHLO client.example").endswith("\r\n250 ENHANCEDSTATUSCODES")
    assert "STARTTLS" not in say(s, "HELP")
    assert say(s, "STARTTLS") == "503 5.5.1 TLS already active"
    assert s.client.tls == TLS13 and str(TLS13) == "using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"


def test_after_starttls_the_session_starts_over() -> None:
    """RFC 3207 §4.2: the HELO, the login and the transaction of the clear part are forgotten."""
    s = session(auth=True, tls=TlsOffer.STARTTLS)
    say(s, "EHLO client.example")
    say(s, "AUTH PLAIN")
    starttls(s)
    assert (s.state, s.helo, s.esmtp, s.login, s.sender) == (State.CONNECTED, None, False, None, None)
    assert say(s, "AUTH PLAIN") == "503 5.5.1 Send EHLO first"
    say(s, "EHLO client.example")
    assert say(s, "AUTH PLAIN").startswith("235 ")


def test_nothing_said_before_the_handshake_ends_is_acted_on() -> None:
    """The STARTTLS injection (CVE-2011-0411, CVE-2024-34083), in the core: between the 220 and
    the end of the handshake every command is refused, and none of them survives it."""
    s = session(tls=TlsOffer.STARTTLS)
    say(s, "EHLO client.example")
    assert say(s, "STARTTLS") == "220 2.0.0 Ready to start TLS"
    for injected in (f"MAIL FROM:<{ANDY}>", f"RCPT TO:<{BETTY}>", "DATA", "EHLO evil.example", "STARTTLS"):
        assert say(s, injected) == "503 5.5.1 TLS negotiation in progress"
    assert s.sender is None and s.helo == "client.example"
    s.tls_started(TLS13)
    assert say(s, f"RCPT TO:<{BETTY}>") == "503 5.5.1 Need MAIL before RCPT"
    assert s.helo is None


def test_starttls_refusals() -> None:
    assert say(session(), "STARTTLS") == "502 5.5.1 STARTTLS not offered: TLS is off in this lab"
    assert say(session(tls=TlsOffer.NO_CERTIFICATE), "STARTTLS") == (
        "454 4.7.0 TLS not available: this host has no certificate")
    assert say(session(tls=TlsOffer.STARTTLS), "STARTTLS now") == "501 5.5.4 Syntax: STARTTLS"
    implicit = session(tls=TlsOffer.IMPLICIT)
    implicit.tls_started(TLS13)
    assert say(implicit, "STARTTLS") == "503 5.5.1 TLS already active"
    assert "STARTTLS" not in say(implicit, "EHLO client.example")
    busy = session(tls=TlsOffer.STARTTLS)
    say(busy, f"MAIL FROM:<{ANDY}>")
    assert say(busy, "STARTTLS") == "503 5.5.1 STARTTLS not permitted during a mail transaction; send RSET"
    for offer in (TlsOffer.OFF, TlsOffer.NO_CERTIFICATE):
        assert "STARTTLS" not in say(session(tls=offer), "EHLO client.example")


def test_a_listener_that_requires_tls_serves_mail_and_auth_only_under_it() -> None:
    s = session(auth=True, tls=TlsOffer.STARTTLS, tls_required=True)
    ehlo = say(s, "EHLO client.example")
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo  # no AUTH offered in clear
    for command in ("AUTH PLAIN", f"MAIL FROM:<{ANDY}>", f"RCPT TO:<{BETTY}>", "DATA"):
        assert say(s, command) == "530 5.7.0 Must issue a STARTTLS command first"
    assert say(s, "NOOP") == "250 2.0.0 OK" and say(s, "RSET") == "250 2.0.0 OK"
    starttls(s)
    assert say(s, "EHLO client.example").endswith("250 AUTH LOGIN PLAIN")
    assert say(s, "AUTH PLAIN").startswith("235 ")
    assert say(s, f"MAIL FROM:<{ANDY}>").startswith("250 ")
    assert s.client.tls == TLS13


def test_requiring_tls_where_it_cannot_be_had_changes_nothing() -> None:
    """TLS on but no certificate here: AUTH in clear as before, rather than no AUTH at all."""
    s = session(auth=True, tls=TlsOffer.NO_CERTIFICATE, tls_required=True)
    assert say(s, "EHLO client.example").endswith("250 AUTH LOGIN PLAIN")
    assert say(s, "AUTH PLAIN").startswith("235 ")
