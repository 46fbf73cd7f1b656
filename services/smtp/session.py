"""The lab's SMTP server session without I/O: which command may come when, and what it is answered.

aiosmtpd is the engine (:mod:`services.smtp.server`): it reads the command lines, runs the SASL
exchange of AUTH and writes the replies. Every decision is taken here, by a
:class:`ServerSession` per connection that the engine's handlers call with a command's argument
and that returns the :class:`~services.smtp.wire.Reply`. It opens no socket, never waits and
reads no clock; the unit tests drive it with command scripts.

The session is in one :class:`State` at a time, and :data:`REFUSED` says, for each, which
commands it refuses and with which ``503`` (RFC 5321 §4.1.4: MAIL starts a transaction, RCPT
needs MAIL, DATA needs RCPT; RFC 4954 §4: no AUTH inside a transaction, and AUTH needs EHLO).
MAIL is taken before any HELO, as by sendmail, because the reference article never sends one.
Bad commands are counted, and the last of :data:`MAX_BAD_COMMANDS` is answered ``421`` and closes
the session; a transaction takes at most :data:`MAX_RECIPIENTS`.

Where the session would say yes (the greeting, HELO/EHLO, MAIL, RCPT, DATA, the final dot), it
first asks its :class:`ReplyConsult`, if any, for a reply a teacher put in its place
(:mod:`services.smtp.replyfaults`: greylisting at RCPT, 421 at connect, 452 at DATA).

TLS (RFC 3207, RFC 8314): a listener's :class:`TlsOffer` says whether EHLO offers STARTTLS, or
the connection is TLS from its first byte (465). STARTTLS is answered ``220`` and leaves the
session in :attr:`State.HANDSHAKE`, where every command is refused: nothing the client said
before the handshake ended may be acted on under TLS (the STARTTLS injection of CVE-2011-0411
and CVE-2024-34083; the engine also throws away the bytes it holds). :meth:`tls_started` then
resets the session as RFC 3207 §4.2 says: no greeting, no login, no transaction. A listener
that requires TLS (the submission port with ``auth_needs_tls``) answers MAIL, RCPT, DATA and
AUTH in clear with ``530 5.7.0 Must issue a STARTTLS command first`` (RFC 3207 §4) and offers
no AUTH in clear.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.logins import LOGIN_DELAY, LoginDelay
from services.smtp import trace
from services.smtp.policy import EnvelopePath, parse_mail, parse_rcpt
from services.smtp.wire import Reply

# -- limits ------------------------------------------------------------------------------------
MAX_RECIPIENTS = 100  # RFC 5321 §4.5.3.1.8: the least a server must take; more get 452 (§4.5.3.1.10)
# Syntax and sequence errors one session may make before it is closed with 421: Postfix's
# smtpd_hard_error_limit (20; sendmail's MAXBADCOMMANDS is 25). Fewer cut off nmap's
# smtp-open-relay audit, whose 16 relay tricks in one session are mostly malformed addresses.
MAX_BAD_COMMANDS = 20
BAD_COMMAND_CODES = frozenset({500, 501, 502, 503, 504, 553, 555})
CLOSING_CODES = frozenset({221, 421})  # RFC 5321 §3.8, §4.1.1.10: after these the server closes


# -- what the session knows of the client, for the role's decisions ----------------------------


@dataclass(frozen=True)
class Client:
    """What a role handler may know about the client when it decides."""

    peer_ip: str
    helo: str | None  # the name given in HELO/EHLO; None if the client never greeted
    esmtp: bool  # greeted with EHLO
    login: str | None  # the account it authenticated as (AUTH, RFC 4954)
    tls: TlsInfo | None = None  # the session's TLS, if it runs under TLS (STARTTLS, or port 465)

    @property
    def authenticated(self) -> bool:
        return self.login is not None


@dataclass(frozen=True)
class TlsInfo:
    """What a finished TLS handshake agreed (``ssl.SSLObject.version()`` and ``.cipher()``)."""

    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"
    bits: int  # the cipher's secret bits

    def __str__(self) -> str:
        """As Postfix's Received header says it (its comment, without the parentheses)."""
        return f"using {self.version} with cipher {self.cipher} ({self.bits}/{self.bits} bits)"


class TlsOffer(enum.Enum):
    """What a listener does with TLS; what STARTTLS is answered when it is not offered."""

    OFF = "off"  # TLS is off in this lab: no STARTTLS in EHLO, and STARTTLS gets 502
    NO_CERTIFICATE = "no certificate"  # on, but this host has no certificate: 454 (RFC 3207 §4)
    STARTTLS = "starttls"  # EHLO offers STARTTLS (RFC 3207) until the session is under TLS
    IMPLICIT = "implicit"  # TLS from the first byte (port 465, RFC 8314 §3.3): no STARTTLS


class ReplyConsult(Protocol):
    """The injected replies (services.smtp.replyfaults.ReplyFaultFile): one to send instead of
    the server's yes at ``stage``, or None."""

    def answer(self, stage: str, *, sender: str | None = None, recipients: Sequence[str] = ()) -> Reply | None:
        ...


class EnvelopeChecks(Protocol):
    """Who may send to whom: the part of a role (MTA, MX) the session asks at MAIL and RCPT."""

    def check_sender(self, client: Client, sender: EnvelopePath) -> Reply:
        """MAIL FROM, already well-formed: 250 to accept."""
        ...

    def check_recipient(self, client: Client, recipient: EnvelopePath) -> Reply:
        """RCPT TO, already well-formed: 250 to accept."""
        ...


# -- states and what each refuses ----------------------------------------------------------------


class State(enum.Enum):
    CONNECTED = "connected"  # no HELO or EHLO yet
    GREETED = "greeted"  # HELO or EHLO, no transaction
    MAIL = "mail"  # a sender accepted
    RCPT = "rcpt"  # a recipient accepted too
    DATA = "data"  # 354 sent: the engine reads the message, no command comes
    HANDSHAKE = "handshake"  # 220 to STARTTLS sent: the engine runs the TLS handshake
    REFUSED = "refused"  # greeted with 554: no SMTP service here, only QUIT (RFC 5321 §3.1)
    CLOSED = "closed"  # after 221 or 421, or the connection is gone


SENDER_ALREADY = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_MAIL_FOR_DATA = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT (recipient)")
NEED_EHLO = Reply(503, "5.5.1", "Send EHLO first")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")  # RFC 4954 §4
STARTTLS_IN_TRANSACTION = Reply(503, "5.5.1", "STARTTLS not permitted during a mail transaction; send RSET")

# The commands each state refuses, with their 503 (RFC 5321 §4.3.2: bad sequence of commands);
# every command not listed is allowed.
REFUSED: Mapping[State, Mapping[str, Reply]] = {
    State.CONNECTED: {"RCPT": NEED_MAIL, "DATA": NEED_MAIL_FOR_DATA, "AUTH": NEED_EHLO},
    State.GREETED: {"RCPT": NEED_MAIL, "DATA": NEED_MAIL_FOR_DATA},
    State.MAIL: {"MAIL": SENDER_ALREADY, "DATA": NEED_RCPT, "AUTH": AUTH_IN_TRANSACTION,
                 "STARTTLS": STARTTLS_IN_TRANSACTION},
    State.RCPT: {"MAIL": SENDER_ALREADY, "AUTH": AUTH_IN_TRANSACTION, "STARTTLS": STARTTLS_IN_TRANSACTION},
}
# The states that refuse every command: what they answer. The first two replies never reach the
# client (a closed session sends nothing more; during DATA the engine reads text, not commands),
# but a command pipelined behind QUIT must still never start a transaction. QUIT, RSET and NOOP
# are aiosmtpd's own and pass.
REFUSE_ALL: Mapping[State, Reply] = {
    State.DATA: Reply(503, "5.5.1", "The message is being read"),
    # The engine reads nothing during the handshake; should a command still come, it came in
    # clear before TLS and must not be executed under it (RFC 3207 §4.2, CVE-2011-0411).
    State.HANDSHAKE: Reply(503, "5.5.1", "TLS negotiation in progress"),
    State.CLOSED: Reply(421, "4.7.0", "Closing connection"),
    # RFC 5321 §3.1: after a 554 greeting the server MUST answer 503 to anything but QUIT.
    State.REFUSED: Reply(503, "5.5.1", "No SMTP service here; send QUIT"),
}

# -- the other replies ---------------------------------------------------------------------------
DATA_GO_AHEAD = Reply(354, "", 'Enter mail, end with "." on a line by itself')
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
NO_AUTH_HERE = Reply(502, "5.5.1", "AUTH is offered on the submission port only")
AUTH_NEEDS_EHLO = Reply(503, "5.5.1", "AUTH is an ESMTP command: send EHLO, not HELO")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")  # RFC 4954 §6
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")  # RFC 4954 §4
# RFC 5321 §3.5.3: 252 neither confirms nor denies; telling who exists helps harvesters.
CANNOT_VRFY = Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
# RFC 3207 §4: the client must start TLS before the listener serves it; EHLO, STARTTLS, NOOP,
# RSET, QUIT and HELP still work in clear.
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
NEEDS_TLS = frozenset({"MAIL", "RCPT", "DATA", "AUTH"})
TLS_GO_AHEAD = Reply(220, "2.0.0", "Ready to start TLS")  # RFC 3207 §4
TLS_ALREADY = Reply(503, "5.5.1", "TLS already active")  # RFC 3207 §4.2: no second STARTTLS
TLS_NOT_OFFERED = Reply(502, "5.5.1", "STARTTLS not offered: TLS is off in this lab")  # RFC 5321 §4.2.4
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available: this host has no certificate")  # RFC 3207 §4
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")  # RFC 3207 §4: no parameters

HELP_TOPICS: Mapping[str, str] = {
    "HELO": "HELO <hostname>",
    "EHLO": "EHLO <hostname>",
    "MAIL": "MAIL FROM:<address> [SIZE=<octets>] [BODY=7BIT|8BITMIME]",
    "RCPT": "RCPT TO:<address>",
    "DATA": 'DATA, then the message, then a line with only "."',
    "RSET": "RSET",
    "NOOP": "NOOP",
    "QUIT": "QUIT",
    "VRFY": "VRFY <address>",
    "HELP": "HELP [command]",
    "AUTH": "AUTH PLAIN|LOGIN [initial-response]",
    "STARTTLS": "STARTTLS",
}


_IN_TRANSACTION = frozenset({State.MAIL, State.RCPT, State.DATA})


def too_many_errors(hostname: str) -> Reply:
    return Reply(421, "4.7.0", f"{hostname} Too many errors, closing connection")  # RFC 5321 §3.8: 421, then close


class ServerSession:
    """One client's SMTP session: call the method of each command, send the reply it returns.

    Then pass the reply's code to :meth:`replied`, which counts it against the bad-command
    budget. After a ``354`` the engine reads the message and calls :meth:`message_read` for its
    envelope. The engine sets :attr:`peer_ip` once connected.
    """

    def __init__(self, hostname: str, checks: EnvelopeChecks, *, size_limit: int,
                 auth_mechanisms: Sequence[str] = (), login_delay: LoginDelay = LOGIN_DELAY,
                 postmaster: str | None = None, faults: ReplyConsult | None = None,
                 tls_offer: TlsOffer = TlsOffer.OFF, tls_required: bool = False) -> None:
        self.hostname = hostname
        self.postmaster = postmaster  # what RCPT TO:<Postmaster> means here (policy.parse_rcpt)
        self.size_limit = size_limit
        self.auth_mechanisms = tuple(auth_mechanisms)  # none: AUTH is not offered here
        self.peer_ip = "0.0.0.0"
        self.state = State.CONNECTED
        self.helo: str | None = None
        self.esmtp = False
        self.login: str | None = None
        self.sender: str | None = None  # None until MAIL; "" is the null reverse-path
        self.recipients: list[str] = []
        self.tls_offer = tls_offer
        self.tls_required = tls_required  # MAIL and AUTH only under TLS, when STARTTLS is offered
        self.tls: TlsInfo | None = None  # set once a handshake succeeded
        self._checks = checks
        self._faults = faults
        self._bad_commands = 0
        self._login_delay = login_delay
        self._auth_failures = 0

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def client(self) -> Client:
        return Client(self.peer_ip, self.helo, self.esmtp, self.login, self.tls)

    @property
    def _clear_but_tls_required(self) -> bool:
        """The listener requires TLS, offers STARTTLS, and this session has not used it yet."""
        return self.tls_required and self.tls is None and self.tls_offer is TlsOffer.STARTTLS

    @property
    def _starttls_offered(self) -> bool:
        return self.tls_offer is TlsOffer.STARTTLS and self.tls is None

    def _injected(self, stage: str, *, sender: str | None = None, recipients: Sequence[str] = ()) -> Reply | None:
        """The reply injected at ``stage`` for this envelope (the transaction's sender by default)."""
        if self._faults is None:
            return None
        return self._faults.answer(stage, sender=self.sender if sender is None else sender, recipients=recipients)

    def _refused(self, verb: str) -> Reply | None:
        if self.state in REFUSE_ALL:
            return REFUSE_ALL[self.state]
        if verb in NEEDS_TLS and self._clear_but_tls_required:
            return MUST_STARTTLS
        return REFUSED[self.state].get(verb)

    # -- the budget and the end ---------------------------------------------------------------

    def replied(self, code: int) -> Reply | None:
        """The reply with ``code`` is going out: the ``421`` to send instead, once it spends the
        budget of bad commands (the session is then closed), else None."""
        if code in BAD_COMMAND_CODES:
            self._bad_commands += 1
            if self._bad_commands >= MAX_BAD_COMMANDS:
                self.state = State.CLOSED
                return too_many_errors(self.hostname)
        if code in CLOSING_CODES:
            self.state = State.CLOSED
        return None

    def connection_lost(self) -> None:
        self.state = State.CLOSED

    def reset(self) -> None:
        """Forget everything the client said, as after STARTTLS (RFC 3207 §4.2): no greeting, no
        login, no transaction. The bad-command budget is the connection's and stays spent."""
        if not self.closed:
            self.state = State.CONNECTED
            self.helo, self.esmtp, self.login = None, False, None
            self.sender, self.recipients = None, []

    # -- greetings ------------------------------------------------------------------------------

    def connect(self) -> Reply | None:
        """The client connected: an injected reply to greet it with instead of 220, or None.
        A 554 leaves the session refusing all but QUIT; a 421 closes it (see :meth:`replied`)."""
        reply = self._injected("connect")
        if reply is not None and reply.code != 421:
            self.state = State.REFUSED
        return reply

    def hello(self, hostname: str | None, *, esmtp: bool) -> Reply:
        """HELO (``esmtp`` False) or EHLO: the greeting, which also ends any transaction (§4.1.4)."""
        verb = "EHLO" if esmtp else "HELO"
        refusal = self._refused(verb)
        if refusal is not None:
            return refusal
        if not hostname:
            return Reply(501, "5.5.4", f"Syntax: {verb} hostname")
        injected = self._injected("helo")
        if injected is not None:
            return injected
        self.rset()
        self.state = State.GREETED
        self.helo, self.esmtp = hostname, esmtp
        hello = f"{self.hostname} Hello {trace.address_literal(self.peer_ip)}, pleased to meet you"
        if not esmtp:
            return Reply(250, "", hello)
        # Only what is implemented (RFC 5321 §4.1.1.1): replies keep their order, so PIPELINING
        # (RFC 2920); the message is taken as bytes, so 8BITMIME (RFC 6152).
        lines = [hello, f"SIZE {self.size_limit}", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"]
        if self._starttls_offered:
            lines.append("STARTTLS")
        # RFC 8314 §3.3 / RFC 4954 §4: where AUTH needs TLS, a clear session is not offered it.
        if self.auth_mechanisms and not self._clear_but_tls_required:
            lines.append("AUTH " + " ".join(sorted(self.auth_mechanisms)))
        return Reply(250, "", "\n".join(lines))  # RFC 2034 §3: no status codes in EHLO's reply

    # -- the transaction ----------------------------------------------------------------------------

    def mail(self, arg: str | None) -> Reply:
        refusal = self._refused("MAIL")
        if refusal is not None:
            return refusal
        path = parse_mail(arg, size_limit=self.size_limit, esmtp=self.esmtp)
        if isinstance(path, Reply):
            return path
        reply = self._checks.check_sender(self.client, path)
        if reply.positive:
            injected = self._injected("mail", sender=path.address)
            if injected is not None:
                return injected
            self.sender = path.address
            self.state = State.MAIL
        return reply

    def rcpt(self, arg: str | None) -> Reply:
        refusal = self._refused("RCPT")
        if refusal is not None:
            return refusal
        if len(self.recipients) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        path = parse_rcpt(arg, postmaster=self.postmaster)
        if isinstance(path, Reply):
            return path
        reply = self._checks.check_recipient(self.client, path)
        if reply.positive:
            injected = self._injected("rcpt", recipients=[path.address])
            if injected is not None:
                return injected
            if path.address not in self.recipients:
                self.recipients.append(path.address)
            self.state = State.RCPT
        return reply

    def data(self, arg: str | None) -> Reply:
        """DATA: a ``354``, after which the engine reads the message, or the refusal."""
        refusal = self._refused("DATA")
        if refusal is not None:
            return refusal
        if arg:
            return Reply(501, "5.5.4", "Syntax: DATA")
        injected = self._injected("data", recipients=self.recipients)
        if injected is not None:
            return injected
        self.state = State.DATA
        return DATA_GO_AHEAD

    def message_read(self) -> tuple[str, tuple[str, ...]]:
        """The message after the 354 has been read: its envelope, sender and recipients. The
        transaction is over (§4.1.1.4), whatever the reply to the message will be."""
        if self.state is not State.DATA or self.sender is None:
            raise AssertionError(f"message_read in state {self.state.value}")  # a bug of the engine's
        envelope = self.sender, tuple(self.recipients)
        self.rset()
        return envelope

    def end_of_data(self, sender: str, recipients: Sequence[str]) -> Reply | None:
        """The message was read whole: an injected reply to refuse it with (it is then not kept),
        or None for the role to take it."""
        return self._injected("dot", sender=sender, recipients=recipients)

    def rset(self) -> None:
        """End the transaction, if any (RSET, RFC 5321 §4.1.1.5; HELO/EHLO; the end of DATA)."""
        if self.state in _IN_TRANSACTION:
            self.state = State.GREETED if self.helo is not None else State.CONNECTED
        self.sender, self.recipients = None, []

    # -- AUTH (RFC 4954) ------------------------------------------------------------------------------

    def auth(self) -> Reply | None:
        """AUTH: the refusal, or None for the engine to run the SASL exchange."""
        if not self.auth_mechanisms:
            return NO_AUTH_HERE
        refusal = self._refused("AUTH")
        if refusal is not None:
            return refusal
        if not self.esmtp:
            return AUTH_NEEDS_EHLO
        if self.login is not None:
            return ALREADY_AUTHENTICATED  # RFC 4954 §4: one successful AUTH per session
        return None

    def authenticated(self, account: str) -> None:
        """The SASL exchange proved the client to be ``account``."""
        self.login = account

    def auth_failed(self) -> float:
        """The SASL exchange gave a wrong password: how long the engine waits before :data:`AUTH_FAILED`.

        The same growing delay as POP3's after a wrong PASS (services.logins): guessing costs time.
        """
        self._auth_failures += 1
        return self._login_delay.after(self._auth_failures)

    # -- STARTTLS (RFC 3207) ----------------------------------------------------------------------------

    def starttls(self, arg: str | None) -> Reply:
        """STARTTLS: ``220`` (the engine then runs the handshake, and reports with
        :meth:`tls_started` or :meth:`connection_lost`), or the refusal."""
        if self.state in REFUSE_ALL:
            return REFUSE_ALL[self.state]
        if self.tls is not None or self.tls_offer is TlsOffer.IMPLICIT:
            return TLS_ALREADY
        if self.tls_offer is TlsOffer.OFF:
            return TLS_NOT_OFFERED
        if self.tls_offer is TlsOffer.NO_CERTIFICATE:
            return TLS_UNAVAILABLE
        if arg:
            return STARTTLS_SYNTAX
        refusal = REFUSED[self.state].get("STARTTLS")
        if refusal is not None:
            return refusal
        self.state = State.HANDSHAKE
        return TLS_GO_AHEAD

    def tls_started(self, info: TlsInfo) -> None:
        """The TLS handshake succeeded: after STARTTLS's 220, or at connect on an implicit-TLS
        port. The client starts over (RFC 3207 §4.2): EHLO again, then AUTH and MAIL."""
        self.reset()
        self.tls = info

    # -- the rest ----------------------------------------------------------------------------------

    def vrfy(self, arg: str | None) -> Reply:
        if not arg:
            return Reply(501, "5.5.4", "Syntax: VRFY <address>")
        return CANNOT_VRFY

    def help(self, arg: str | None) -> Reply:
        hidden = {"AUTH"} if not self.auth_mechanisms else set()
        if not self._starttls_offered:
            hidden.add("STARTTLS")
        topics = {k: v for k, v in HELP_TOPICS.items() if k not in hidden}
        if arg:
            usage = topics.get(arg.strip().upper())
            return Reply(214, "2.0.0", usage) if usage else Reply(504, "5.5.4", "HELP topic unknown")
        return Reply(214, "2.0.0", "\n".join(["Commands: " + " ".join(topics),
                                              "For more, HELP <command>; the protocol is RFC 5321",
                                              "End of HELP info"]))
