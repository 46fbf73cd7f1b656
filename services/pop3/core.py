"""A POP3 server session without I/O (RFC 1939; CAPA and response codes from RFC 2449 and RFC 3206).

Modelled on h11: a :class:`Session` is fed the bytes a client sent and returns the :data:`Action`
list its shell performs in order: send these bytes, wait this long, log this line, close. It opens
no socket, never sleeps and never reads a clock. Authentication and the mailbox are passed in as
two small protocols (:class:`Authenticator`, :data:`MailboxOpener`); the server gives it Maildirs,
the unit tests an in-memory dict.

TLS (RFC 2595 §4, RFC 8314): the listener's :class:`TlsOffer` says whether CAPA offers STLS or the
connection is TLS from its first byte (995). STLS is answered ``+OK`` and a :class:`StartTls`,
and the session drops every byte the client sent after it: nothing said in clear before the
handshake may run under TLS (the STARTTLS injection class, CVE-2011-0411, CVE-2024-34083). Under
TLS the client starts over (a USER given before is forgotten; it must ask CAPA again). Where
``auth_needs_tls``, a clear session offering STLS is not offered USER and gets ``-ERR [AUTH]``
for USER, PASS, APOP and AUTH, as Dovecot's ``disable_plaintext_auth`` does (RFC 2595 §4's
LOGINDISABLED, for POP3).

The session follows RFC 1939's three states. Message numbers are fixed at login (a snapshot), DELE
only marks, RSET unmarks, and marked messages are removed only when QUIT moves the session to
UPDATE; a session that ends any other way removes nothing (§6). Peer errors are ``-ERR`` replies
raised as :class:`_Refusal` and answered in one place; a run of them ends the session.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.actions import Action, Close, Log, Send, StartTls, Wait
from services.errors import PeerError
from services.logins import LoginLimits
from services.smtp.session import TlsOffer  # one meaning of a listener's TLS, for SMTP, POP3 and IMAP
from services.textwire import pop3_form, stuff_lines, stuff_text, wire_lines, wire_size

# -- limits -----------------------------------------------------------------------------------

MAX_LINE = 255  # RFC 2449 §4: a command line is at most 255 octets, CRLF included
MAX_BAD_COMMANDS = 10  # unknown, out-of-state, malformed or oversized commands, then we hang up
MAX_AUTH_FAILURES = 5  # failed logins per session before we hang up (guessing costs a reconnect)
IDLE_TIMEOUT = 600.0  # RFC 1939 §3: an autologout timer, if any, is at least 10 minutes
MAX_UID_LENGTH = 70  # RFC 1939 §7 (UIDL): a unique-id is 1 to 70 characters 0x21..0x7E
_UID_SAFE = re.compile(rf"[\x21-\x7e]{{1,{MAX_UID_LENGTH}}}")
MAX_NUMBER_DIGITS = 9  # a message number or TOP line count; more digits is a syntax error


@dataclass(frozen=True)
class Limits(LoginLimits):
    """The limits above, in one value the server can pass down (tests shrink the timings)."""

    max_line: int = MAX_LINE
    max_bad_commands: int = MAX_BAD_COMMANDS
    max_auth_failures: int = MAX_AUTH_FAILURES
    idle_timeout: float = IDLE_TIMEOUT


DEFAULT_LIMITS = Limits()


# -- what the session needs from the outside ----------------------------------------------------


class Authenticator(Protocol):
    def authenticate(self, user: str, password: str) -> str | None:
        """The mailbox address ``user`` may open with ``password``, or ``None``."""
        ...


class Mailbox(Protocol):
    """One user's mailbox; every method may raise ``OSError``."""

    def try_lock(self) -> bool:
        """Take the exclusive session lock without waiting; ``False`` if another session has it."""
        ...

    def unlock(self) -> None: ...

    def keys(self) -> Sequence[str]:
        """The unique keys of the messages, oldest delivery first."""
        ...

    def read(self, key: str) -> bytes: ...

    def wire_size(self, key: str) -> int | None:
        """The message's octet count (:func:`services.textwire.wire_size`) if known without reading it, else None."""
        ...

    def delete(self, key: str) -> None: ...


MailboxOpener = Callable[[str], Mailbox]  # mailbox address -> its mailbox


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"  # after QUIT, autologout, a dropped connection or too many errors


_AUTH = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_BOTH = _AUTH | _TRANS

# RFC 1939 §4-§7 and RFC 2449 §5: the states in which each command is legal.
LEGAL_STATES: dict[str, frozenset[State]] = {
    "USER": _AUTH,
    "PASS": _AUTH,
    "QUIT": _BOTH,
    "CAPA": _BOTH,
    "STLS": _AUTH,  # RFC 2595 §4: only in the AUTHORIZATION state
    "STAT": _TRANS,
    "LIST": _TRANS,
    "RETR": _TRANS,
    "DELE": _TRANS,
    "NOOP": _TRANS,
    "RSET": _TRANS,
    "TOP": _TRANS,
    "UIDL": _TRANS,
}

# RFC 1939 §3: which positive answers are multi-line. True: always; "no args": only without an
# argument (LIST and UIDL of one message answer on one line, of the whole maildrop on several).
# The session answers by this table (see Session._answer) and labctl's traffic decoder reads
# captured answers by it: both take their framing from here.
MULTILINE_ANSWERS: dict[str, bool | str] = {
    "CAPA": True,  # RFC 2449 §5
    "LIST": "no args",
    "UIDL": "no args",
    "RETR": True,
    "TOP": True,
}


def multiline_answer(command: str, args: Sequence[bytes | str]) -> bool:
    """Whether a ``+OK`` answer to ``command args`` goes on with lines ended by ``.`` (RFC 1939 §3)."""
    rule = MULTILINE_ANSWERS.get(command.upper(), False)
    return rule is True or (rule == "no args" and not args)


# The commands that carry a password (RFC 1939 §7, RFC 5034): refused in clear where AUTH needs
# TLS, whether or not this server implements them (it has no APOP or AUTH).
PASSWORD_COMMANDS = frozenset({"USER", "PASS", "APOP", "AUTH"})
NEEDS_TLS = "[AUTH] plaintext authentication disallowed on a clear connection; use STLS first, or port 995 (POP3S)"
TLS_NOT_OFFERED = "STLS not offered: TLS is off in this lab"  # as SMTP's 502 for STARTTLS
TLS_UNAVAILABLE = "[SYS/TEMP] TLS not available: this host has no certificate"
TLS_ALREADY = "TLS already active"

# RFC 2449 §6: only what this module implements. IN-USE and AUTH response codes are sent.
CAPABILITIES = (
    "TOP",
    "UIDL",
    "USER",
    "RESP-CODES",
    "AUTH-RESP-CODE",  # RFC 3206 §6: [AUTH] and [SYS/...] on failed logins
    "PIPELINING",  # commands are answered strictly in order
    "IMPLEMENTATION maillab",
)


# -- messages on the wire -----------------------------------------------------------------------


def top_lines(message: bytes, body_lines: int) -> list[bytes]:
    """TOP: the header lines, the blank line, then at most ``body_lines`` body lines (RFC 1939 §7)."""
    lines = wire_lines(message)
    try:
        blank = lines.index(b"")
    except ValueError:  # all header, no body: still end the headers with the blank line
        return [*lines, b""]
    return lines[: blank + 1 + body_lines]


def uid_for_key(key: str) -> str:
    """A UIDL unique-id for a mailbox key, stable across sessions (RFC 1939 §7).

    A Maildir name is already unique and permanent; its unique part (before Maildir++'s
    ``,S=...,W=...`` size fields) is used as it is when UIDL's character set and length allow, else
    replaced by a digest of itself.
    """
    key = key.split(",", 1)[0] or key
    if _UID_SAFE.fullmatch(key):  # a regex, not a test per character: run for every message at login
        return key
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:MAX_UID_LENGTH]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _printable(raw: bytes, limit: int = 60) -> str:
    """Peer bytes made safe for one log line."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in raw[:limit])
    return text + ("..." if len(raw) > limit else "")


# -- the session --------------------------------------------------------------------------------


class _Refusal(PeerError):
    """A peer error: the ``-ERR`` text to send, and whether it counts against the bad budget."""

    def __init__(self, text: str, *, bad: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.bad = bad


@dataclass
class _Reply:
    ok: bool
    text: str
    lines: Sequence[bytes] | None = None  # the body of a multi-line reply, before dot-stuffing
    body: bytes | None = None  # or the same in one piece, CRLF lines (RETR: textwire.pop3_form)
    delay: float = 0.0  # seconds to hold the reply back
    close: bool = False
    note: str = ""  # for the log line only
    start_tls: bool = False  # after this +OK, the TLS handshake


@dataclass(frozen=True)
class _Entry:
    key: str
    size: int
    uid: str


class Session:
    """One client's POP3 session.

    Call :meth:`start` for the greeting, then per read :meth:`feed` and :meth:`next_actions` until
    it returns ``[]`` (or :meth:`receive_data`, which does both); at the end :meth:`timed_out` or
    :meth:`connection_lost`. Every complete line gets exactly one reply until the session closes.
    """

    def __init__(
        self,
        hostname: str,
        authenticator: Authenticator,
        open_mailbox: MailboxOpener,
        limits: Limits = DEFAULT_LIMITS,
        *,
        tls: TlsOffer = TlsOffer.OFF,
        auth_needs_tls: bool = False,
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.state = State.AUTHORIZATION
        self.tls_offer = tls
        self.auth_needs_tls = auth_needs_tls  # USER/PASS only under TLS, where STLS is offered
        self.under_tls = tls is TlsOffer.IMPLICIT  # port 995; or once STLS's handshake is done
        self.address: str | None = None  # the mailbox, once logged in
        self._authenticator = authenticator
        self._open_mailbox = open_mailbox
        self._buffer = bytearray()
        self._draining = False  # discarding the rest of an over-long line
        self._bad_commands = 0
        self._auth_failures = 0
        self._user: str | None = None  # from USER, waiting for PASS
        self._mailbox: Mailbox | None = None
        self._messages: list[_Entry] = []  # the login snapshot; message n is _messages[n - 1]
        self._deleted: set[int] = set()
        self._handlers: dict[str, Callable[[list[bytes], bytes], _Reply]] = {
            "USER": self._user_command,
            "PASS": self._pass,
            "QUIT": self._quit,
            "CAPA": self._capa,
            "STLS": self._stls,
            "STAT": self._stat,
            "LIST": self._list,
            "RETR": self._retr,
            "DELE": self._dele,
            "NOOP": self._noop,
            "RSET": self._rset,
            "TOP": self._top,
            "UIDL": self._uidl,
        }

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def _stls_offered(self) -> bool:
        return self.tls_offer is TlsOffer.STARTTLS and not self.under_tls

    @property
    def _clear_but_tls_required(self) -> bool:
        """Passwords need TLS here, STLS is offered, and this session has not used it yet."""
        return self.auth_needs_tls and self._stls_offered

    # -- events from the shell ----------------------------------------------------------------

    def start(self) -> list[Action]:
        """The greeting (RFC 1939 §4)."""
        return [Send(f"+OK {self.hostname} POP3 server ready\r\n".encode())]

    def feed(self, data: bytes) -> None:
        """Buffer bytes from the client; :meth:`next_actions` answers the lines they complete."""
        if not self.closed:
            self._buffer += data

    def next_actions(self) -> list[Action]:
        """The answer to the next complete command line, or ``[]`` while no line is complete.

        One line at a time, like h11's ``next_event``: the shell performs each answer before the
        next line is parsed, so a login delay or a bug of ours on one line can neither hold back
        nor swallow the replies to the lines before it (RFC 2449 §6.6: pipelined commands are
        processed in turn, as if sent separately).
        """
        if self.closed:
            return []
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) >= self.limits.max_line:
                # Even a LF in the next read would make this line too long: stop buffering it.
                self._draining = True
                self._buffer.clear()
            return []
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        if self._draining or len(line) > self.limits.max_line:
            self._draining = False
            too_long = self._bad(f"line too long (at most {self.limits.max_line} octets)")
            return self._answer("(over-long line)", too_long)
        return self._command(line)

    def receive_data(self, data: bytes) -> list[Action]:
        """:meth:`feed`, then every :meth:`next_actions`: the answers to all lines ``data`` completes."""
        self.feed(data)
        actions: list[Action] = []
        while step := self.next_actions():
            actions += step
        return actions

    def timed_out(self) -> list[Action]:
        """The client was idle for ``limits.idle_timeout``: autologout.

        RFC 1939 §3: no UPDATE state, nothing removed, and no response; just close.
        """
        if self.closed:
            return []
        self._end()
        return [Log(f"autologout after {self.limits.idle_timeout:g}s idle; nothing deleted"), Close()]

    def connection_lost(self) -> list[Action]:
        """The connection is gone. Releases the lock; marked messages stay (RFC 1939 §6)."""
        if self.closed:
            return []
        marked = len(self._deleted)
        self._end()
        note = f"; {_plural(marked, 'marked message')} kept" if marked else ""
        return [Log(f"connection closed without QUIT{note}")]

    def internal_error(self) -> list[Action]:
        """Our own bug hit this session: a generic failure to the client, nothing deleted."""
        self._end()
        return [Send(b"-ERR [SYS/TEMP] internal server error, closing connection\r\n"), Close()]

    def tls_started(self) -> list[Action]:
        """STLS's handshake is done: the session starts over under TLS (RFC 2595 §4), with no
        USER remembered. The bad-command and failed-login counts stay: a guesser gains nothing
        by starting TLS again."""
        self.under_tls = True
        self._user = None
        self._buffer.clear()
        self._draining = False
        return [Log("TLS started; the session starts over")]

    # -- dispatch -----------------------------------------------------------------------------

    def _command(self, line: bytes) -> list[Action]:
        text = line[:-1]  # the LF
        if text.endswith(b"\r"):
            text = text[:-1]
        # RFC 1939 §3: keyword and arguments separated by single spaces. PASS keeps the rest of
        # the line whole, since a password may contain spaces (§7, PASS).
        keyword, _, rest = text.partition(b" ")
        verb = keyword.decode("ascii", "replace").upper()
        shown = "PASS ****" if verb == "PASS" else _printable(text)
        legal = LEGAL_STATES.get(verb)
        if verb in PASSWORD_COMMANDS and self.state is State.AUTHORIZATION and self._clear_but_tls_required:
            shown = f"{verb} ****" if verb != "USER" else shown
            return self._answer(shown, _Reply(False, NEEDS_TLS))
        if legal is None:
            # Only the keyword: a mistyped "PAS secret" must not put the password in the log.
            shown = _printable(keyword, 8) + (" ..." if rest else "")
            return self._answer(shown, self._bad("unknown command"))
        if self.state not in legal:
            where = "before login" if self.state is State.AUTHORIZATION else "after login"
            return self._answer(shown, self._bad(f"{verb} is not allowed {where}"))
        try:
            reply = self._handlers[verb](rest.split(), rest)
        except _Refusal as refusal:
            reply = self._bad(refusal.text) if refusal.bad else _Reply(False, refusal.text)
        return self._answer(shown, reply, multiline_answer(verb, rest.split()))

    def _bad(self, text: str) -> _Reply:
        self._bad_commands += 1
        if self._bad_commands >= self.limits.max_bad_commands:
            self._end()
            return _Reply(False, "too many bad commands, closing connection", close=True)
        return _Reply(False, text)

    def _answer(self, shown: str, reply: _Reply, multiline_expected: bool | None = None) -> list[Action]:
        multiline = reply.lines is not None or reply.body is not None
        if multiline_expected is not None and reply.ok and multiline_expected != multiline:
            # A bug of ours: the client (and the traffic decoder) would frame this answer wrongly.
            raise AssertionError(f"{shown}: answer framing disagrees with MULTILINE_ANSWERS")
        status = "+OK" if reply.ok else "-ERR"
        if reply.text:
            status += " " + reply.text
        data = f"{status}\r\n".encode()
        if reply.body is not None:
            data += stuff_text(reply.body)
        elif reply.lines is not None:
            data += stuff_lines(reply.lines)
        note = f" ({reply.note})" if reply.note else ""
        actions: list[Action] = [Log(f"{shown} -> {status}{note}")]
        if reply.delay > 0:
            actions.append(Wait(reply.delay))
        actions.append(Send(data))
        if reply.start_tls:
            actions.append(StartTls())
        if reply.close:
            actions.append(Close())
        return actions

    def _end(self) -> None:
        """Leave the session without entering UPDATE: release the lock, delete nothing."""
        mailbox, self._mailbox = self._mailbox, None
        self.state = State.CLOSED
        self._deleted.clear()
        if mailbox is not None:
            try:
                mailbox.unlock()
            except OSError:
                pass  # the lock dies with its file descriptor anyway

    # -- argument parsing ---------------------------------------------------------------------

    @staticmethod
    def _arity(verb: str, args: list[bytes], low: int, high: int) -> None:
        if not low <= len(args) <= high:
            if high == 0:
                wanted = "no arguments"
            elif low == high:
                wanted = _plural(low, "argument")
            else:
                wanted = f"at most {_plural(high, 'argument')}"
            raise _Refusal(f"{verb} takes {wanted}", bad=True)

    @staticmethod
    def _number(token: bytes, what: str) -> int:
        if not token.isdigit() or len(token) > MAX_NUMBER_DIGITS:
            raise _Refusal(f"invalid {what}", bad=True)
        return int(token)

    def _message(self, token: bytes) -> int:
        """The index of a live message in the snapshot, from a message-number argument."""
        number = self._number(token, "message number")
        if not 1 <= number <= len(self._messages):
            raise _Refusal(f"no such message, only {_plural(len(self._messages), 'message')} in maildrop")
        if number - 1 in self._deleted:
            raise _Refusal(f"message {number} already deleted")
        return number - 1

    def _live(self) -> list[int]:
        return [i for i in range(len(self._messages)) if i not in self._deleted]

    def _totals(self) -> tuple[int, int]:
        live = self._live()
        return len(live), sum(self._messages[i].size for i in live)

    def _read(self, index: int) -> bytes:
        assert self._mailbox is not None
        try:
            return self._mailbox.read(self._messages[index].key)
        except OSError as exc:
            raise _Refusal(f"[SYS/TEMP] cannot read message {index + 1}: {exc.strerror or 'I/O error'}") from exc

    # -- AUTHORIZATION (RFC 1939 §4, §7) --------------------------------------------------------

    def _user_command(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("USER", args, 1, 1)
        # Every name is "accepted": an -ERR here would tell a guesser which names exist (§11).
        self._user = args[0].decode("utf-8", "surrogateescape")
        return _Reply(True, "User accepted")

    def _pass(self, args: list[bytes], rest: bytes) -> _Reply:
        if self._user is None:
            raise _Refusal("give USER first", bad=True)
        user, self._user = self._user, None
        address = self._authenticator.authenticate(user, rest.decode("utf-8", "surrogateescape"))
        if address is None:
            self._auth_failures += 1
            delay = self.limits.auth_delay(self._auth_failures)
            if self._auth_failures >= self.limits.max_auth_failures:
                self._end()
                return _Reply(False, "[AUTH] invalid user name or password, closing connection",
                              delay=delay, close=True)
            return _Reply(False, "[AUTH] invalid user name or password", delay=delay)
        return self._login(address)

    def _login(self, address: str) -> _Reply:
        """Lock the maildrop and number its messages (RFC 1939 §4)."""
        try:
            mailbox = self._open_mailbox(address)
            locked = mailbox.try_lock()
        except (OSError, ValueError) as exc:
            raise _Refusal("[SYS/TEMP] cannot open the mailbox, try again later") from exc
        if not locked:
            raise _Refusal("[IN-USE] mailbox is already in use by another session")
        self._mailbox = mailbox  # from here on _end() releases the lock, even after a bug of ours
        try:
            # Sizes from the names where the mailbox has them: reading every message at login
            # was most of the time a session with a thousand of them waited for its +OK.
            entries = []
            for key in mailbox.keys():
                size = mailbox.wire_size(key)
                if size is None:
                    size = wire_size(mailbox.read(key))
                entries.append(_Entry(key, size, uid_for_key(key)))
        except OSError as exc:
            self._mailbox = None
            mailbox.unlock()  # §4: release the lock before answering -ERR
            raise _Refusal("[SYS/TEMP] cannot read the mailbox, try again later") from exc
        self._messages = entries
        self.address = address
        self.state = State.TRANSACTION
        count, octets = self._totals()
        return _Reply(True, f"Pass accepted, {_plural(count, 'message')} ({octets} octets)")

    def _capa(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("CAPA", args, 0, 0)
        return _Reply(True, "Capability list follows", lines=[c.encode() for c in self.capabilities()])

    def capabilities(self) -> list[str]:
        """CAPA's list now: STLS only where it works (RFC 2595 §4), and no USER in clear where
        passwords need TLS (Dovecot's disable_plaintext_auth)."""
        listed = [c for c in CAPABILITIES if not (c == "USER" and self._clear_but_tls_required)]
        if self._stls_offered and self.state is State.AUTHORIZATION:
            listed.insert(-1, "STLS")  # before IMPLEMENTATION, which stays last
        return listed

    def _stls(self, args: list[bytes], rest: bytes) -> _Reply:
        """STLS (RFC 2595 §4): ``+OK``, then the handshake; what the client pipelined after it
        in clear is dropped here (and by the shell), never answered under TLS."""
        self._arity("STLS", args, 0, 0)
        if self.under_tls:
            raise _Refusal(TLS_ALREADY)
        if self.tls_offer is TlsOffer.OFF:
            raise _Refusal(TLS_NOT_OFFERED)
        if self.tls_offer is not TlsOffer.STARTTLS:
            raise _Refusal(TLS_UNAVAILABLE)
        dropped = len(self._buffer)
        self._buffer.clear()
        self._draining = False
        self._user = None
        note = f"dropped {dropped} bytes sent in clear after STLS" if dropped else ""
        return _Reply(True, "Begin TLS negotiation", start_tls=True, note=note)

    def _quit(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("QUIT", args, 0, 0)
        if self.state is State.AUTHORIZATION:
            self._end()
            return _Reply(True, "Bye-bye", close=True)
        return self._update()

    def _update(self) -> _Reply:
        """QUIT in TRANSACTION: remove the marked messages, then release the lock (RFC 1939 §6)."""
        self.state = State.UPDATE
        assert self._mailbox is not None
        marked = sorted(self._deleted)
        failed = 0
        for index in marked:
            try:
                self._mailbox.delete(self._messages[index].key)
            except OSError:
                failed += 1
        self._end()
        note = f"UPDATE: {_plural(len(marked) - failed, 'message')} removed"
        if failed:
            return _Reply(False, "some deleted messages not removed", close=True, note=f"{note}, {failed} failed")
        return _Reply(True, "Bye-bye", close=True, note=note)

    # -- TRANSACTION (RFC 1939 §5, §7) ----------------------------------------------------------

    def _stat(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("STAT", args, 0, 0)
        count, octets = self._totals()
        return _Reply(True, f"{count} {octets}")

    def _scan_listing(self, verb: str, args: list[bytes], value: Callable[[int], object], heading: str) -> _Reply:
        """LIST and UIDL: ``n value`` for message n, or for every live message (RFC 1939 §5, §7)."""
        self._arity(verb, args, 0, 1)
        if args:
            index = self._message(args[0])
            return _Reply(True, f"{index + 1} {value(index)}")
        return _Reply(True, heading, lines=[f"{i + 1} {value(i)}".encode() for i in self._live()])

    def _list(self, args: list[bytes], rest: bytes) -> _Reply:
        count, octets = self._totals()
        return self._scan_listing("LIST", args, lambda i: self._messages[i].size,
                                  f"{_plural(count, 'message')} ({octets} octets)")

    def _retr(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("RETR", args, 1, 1)
        index = self._message(args[0])
        body = pop3_form(self._read(index))
        return _Reply(True, f"{len(body)} octets", body=body)

    def _top(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("TOP", args, 2, 2)
        index = self._message(args[0])
        body_lines = self._number(args[1], "line count")
        return _Reply(True, "top of message follows", lines=top_lines(self._read(index), body_lines))

    def _dele(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("DELE", args, 1, 1)
        index = self._message(args[0])
        self._deleted.add(index)
        return _Reply(True, f"message {index + 1} deleted")

    def _noop(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("NOOP", args, 0, 0)
        return _Reply(True, "")

    def _rset(self, args: list[bytes], rest: bytes) -> _Reply:
        self._arity("RSET", args, 0, 0)
        self._deleted.clear()
        count, octets = self._totals()
        return _Reply(True, f"maildrop has {_plural(count, 'message')} ({octets} octets)")

    def _uidl(self, args: list[bytes], rest: bytes) -> _Reply:
        return self._scan_listing("UIDL", args, lambda i: self._messages[i].uid, "unique-id listing follows")
