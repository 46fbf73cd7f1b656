"""An IMAP4rev1 server session without I/O (RFC 3501, within what IMAP4rev2, RFC 9051, allows).

Modelled on the POP3 core (:mod:`services.pop3.core`) and h11: a :class:`Session` is fed the bytes
a client sent and returns the :data:`Action` list its shell performs in order: send, wait (a failed
login's delay), log, close, and poll the mailbox for an IDLE client (:mod:`services.actions`). It opens no
socket, never sleeps and never reads a clock; the user's folders come from an opener passed in
(:class:`services.imap.store.Mailboxes` on a Maildir).

States and commands follow RFC 3501 §3 and §6 (table :data:`COMMANDS`); the grammar is
:mod:`services.imap.parser`'s, the FETCH renderings :mod:`services.imap.message`'s. Extensions,
each advertised only because it is complete: LITERAL+ (RFC 7888), IDLE (RFC 2177), UIDPLUS
(RFC 4315), MOVE (RFC 6851), UNSELECT (RFC 3691), NAMESPACE (RFC 2342), ID (RFC 2971), ENABLE
(RFC 5161, which enables nothing: NeoMutt's ``ENABLE UTF8=ACCEPT`` gets an empty ``* ENABLED``)
and SASL-IR (RFC 4959).

TLS (RFC 3501 §6.2.1, RFC 9051, RFC 8314): the listener's :class:`TlsOffer` says whether
CAPABILITY lists STARTTLS or the connection is TLS from its first byte (993). STARTTLS is answered
OK and a :class:`StartTls`; everything the client sent after it is dropped with the parser, never
run under TLS (CVE-2011-0411, CVE-2024-34083). No capability list follows the handshake: the
client must ask again (§6.2.1). Where ``auth_needs_tls``, a clear session advertises
LOGINDISABLED and no AUTH=PLAIN, and LOGIN and AUTHENTICATE get ``NO [PRIVACYREQUIRED]``
(RFC 5530), as Dovecot's ``disable_plaintext_auth``.

The selected mailbox is a view: message numbers map to UIDs, and other sessions' changes (new
mail, expunges, flags) reach it only when the session syncs, after each command and while idling,
as untagged EXISTS/EXPUNGE/FETCH. EXPUNGEs are held back during FETCH, STORE, SEARCH and COPY by
number (§7.4.1), which then meet messages already gone as ``NO [EXPUNGEISSUED]``.
"""

from __future__ import annotations

import binascii
import calendar
import email.header
import email.utils
import enum
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from services.actions import Action, Close, Log, Poll, Send, StartTls, StopPolling, Wait
from services.errors import PeerError
from services.imap import message as mime
from services.imap.message import string
from services.imap.parser import (
    MAX_LINE,
    MAX_LITERAL,
    Atom,
    Command,
    Continue,
    Group,
    Line,
    Malformed,
    Parser,
    String,
    Token,
)
from services.imap.store import SEPARATOR, SYSTEM_FLAGS, Folder, Mailboxes, Message, StoreError
from services.logins import LoginLimits
from services.smtp.session import TlsOffer  # one meaning of a listener's TLS, for SMTP, POP3 and IMAP
from services.textwire import crlf_form

# -- limits -----------------------------------------------------------------------------------

MAX_BAD_COMMANDS = 10  # unknown, out-of-state or malformed commands, then * BYE
MAX_AUTH_FAILURES = 5  # failed logins per connection before * BYE (guessing costs a reconnect)
IDLE_TIMEOUT = 30 * 60.0  # RFC 3501 §5.4: an autologout timer is at least 30 minutes
POLL_INTERVAL = 0.25  # seconds between looks at the Maildir for an IDLE client: "within a second"
MAX_NUMBER = 2**32 - 1  # RFC 3501 §9: a number is 32 bits


@dataclass(frozen=True)
class Limits(LoginLimits):
    """The limits above, in one value the server passes down (tests shrink the timings)."""

    max_line: int = MAX_LINE
    max_literal: int = MAX_LITERAL
    max_bad_commands: int = MAX_BAD_COMMANDS
    max_auth_failures: int = MAX_AUTH_FAILURES
    idle_timeout: float = IDLE_TIMEOUT
    poll_interval: float = POLL_INTERVAL


DEFAULT_LIMITS = Limits()


class Authenticator(Protocol):
    """What the session needs to check a login (:class:`services.accounts.AccountAuthenticator`)."""

    def authenticate(self, user: str, password: str) -> str | None:
        """The mailbox address ``user`` may open with ``password``, or ``None``."""
        ...


MailboxesOpener = Callable[[str], Mailboxes]  # mailbox address -> that user's folders


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})

# RFC 3501 §6 (and each extension's RFC): where each command is legal.
LEGAL_STATES: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY,
    "LOGIN": _NOT_AUTH, "AUTHENTICATE": _NOT_AUTH, "STARTTLS": _NOT_AUTH,
    "SELECT": _AUTH, "EXAMINE": _AUTH, "CREATE": _AUTH, "DELETE": _AUTH, "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH, "UNSUBSCRIBE": _AUTH, "LIST": _AUTH, "LSUB": _AUTH, "STATUS": _AUTH,
    "APPEND": _AUTH, "NAMESPACE": _AUTH, "IDLE": _AUTH,
    "ENABLE": frozenset({State.AUTHENTICATED}),  # RFC 5161 §3.1
    "CHECK": _SELECTED, "CLOSE": _SELECTED, "UNSELECT": _SELECTED, "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED, "FETCH": _SELECTED, "STORE": _SELECTED, "COPY": _SELECTED, "MOVE": _SELECTED,
    "UID": _SELECTED,
}

# RFC 3501 §7.2.1 and the extensions' RFCs: only what this module implements.
CAPABILITIES = ("IMAP4rev1", "LITERAL+", "SASL-IR", "IDLE", "UIDPLUS", "MOVE", "UNSELECT", "NAMESPACE", "ID",
                "ENABLE")
LOGIN_CAPABILITIES = ("AUTH=PLAIN",)  # offered until the client has logged in
# §7.4.1: during these (by message number) an EXPUNGE would renumber what the client refers to.
HOLD_EXPUNGES = frozenset({"FETCH", "STORE", "SEARCH", "COPY"})
PERMANENT_FLAGS = SYSTEM_FLAGS  # \* is not offered: keywords are not kept


PASSWORD_COMMANDS = frozenset({"LOGIN", "AUTHENTICATE"})
NEEDS_TLS = "plaintext authentication disallowed on a clear connection; use STARTTLS first, or port 993 (IMAPS)"
# RFC 3501 §7.1: an [ALERT] is shown to the user; Dovecot sends one like it (as an untagged BAD).
PASSWORD_EXPOSED = (b"* BAD [ALERT] Plaintext authentication not allowed without TLS, but your client did it "
                    b"anyway: anyone on the wire has read the password\r\n")
TLS_NOT_OFFERED = "STARTTLS not offered: TLS is off in this lab"  # as SMTP's 502 for STARTTLS
TLS_UNAVAILABLE = "TLS not available: this host has no certificate"
TLS_ALREADY = "TLS already active"


def capability_text(state: State, *, starttls: bool = False, login_disabled: bool = False) -> str:
    """The capability list in ``state``: ``starttls`` where it works (a clear session before
    login); ``login_disabled``: a clear session where passwords need TLS (RFC 3501 §6.2.3)."""
    extra: tuple[str, ...] = ()
    if state is State.NOT_AUTHENTICATED:
        extra = ("STARTTLS",) if starttls else ()
        extra += ("LOGINDISABLED",) if login_disabled else LOGIN_CAPABILITIES
    return " ".join((*CAPABILITIES, *extra))


def _printable(raw: bytes, limit: int = 80) -> str:
    text = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in raw[:limit])
    return text + ("..." if len(raw) > limit else "")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_DATE_TIME = re.compile(r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


def internal_date(timestamp: float) -> bytes:
    """RFC 3501 §9 date-time, in UTC: ``"17-Jul-1996 09:44:25 +0000"``."""
    t = time.gmtime(timestamp)
    clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f'"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year} {clock} +0000"'.encode()


def parse_date_time(text: str) -> float:
    m = _DATE_TIME.fullmatch(text)
    if not m or m.group(2).title() not in _MONTHS:
        raise _Refusal("BAD", "invalid date-time, use \"dd-Mon-yyyy hh:mm:ss +zzzz\"")
    day, month, year, hh, mm, ss = (int(m.group(1)), _MONTHS.index(m.group(2).title()) + 1, int(m.group(3)),
                                    int(m.group(4)), int(m.group(5)), int(m.group(6)))
    offset = (int(m.group(8)) * 60 + int(m.group(9))) * 60 * (1 if m.group(7) == "+" else -1)
    try:
        return calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)) - offset
    except (ValueError, OverflowError):
        raise _Refusal("BAD", "invalid date-time") from None


def parse_date(text: str) -> tuple[int, int, int]:
    m = _DATE.fullmatch(text)
    if not m or m.group(2).title() not in _MONTHS:
        raise _Refusal("BAD", "invalid date, use dd-Mon-yyyy")
    return int(m.group(3)), _MONTHS.index(m.group(2).title()) + 1, int(m.group(1))


# -- the session ----------------------------------------------------------------------------------


class _Refusal(PeerError):
    """A tagged NO or BAD: its status, text and response code."""

    def __init__(self, status: str, text: str, code: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


@dataclass
class _Reply:
    status: str  # OK, NO, BAD
    text: str
    code: str = ""
    untagged: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    close: bool = False
    proceed: str = ""  # the command goes on after a continuation: "idle" or "authenticate"


@dataclass
class _View:
    """The selected mailbox as this session numbers it (RFC 3501 §2.3.1.2)."""

    name: str
    folder: Folder
    readonly: bool
    uids: list[int]  # message n is uids[n - 1]
    messages: dict[int, Message]  # as last seen; expunged ones stay until reported
    recent: set[int]
    # The folder's listing this view last matched in full (expunges reported): while the folder
    # returns this same listing, nothing changed on disk and a sync has nothing to say.
    synced: list[Message] = field(default_factory=list)
    # uids and messages are still the folder's own (Folder.uid_list, by_uid), shared by every
    # view of that listing: a SELECT copies nothing. Copied at the first change (own()).
    shared: bool = False

    def own(self) -> None:
        """Make uids and messages this view's own before changing them."""
        if self.shared:
            self.uids, self.messages, self.shared = list(self.uids), dict(self.messages), False


_SYSTEM_FLAG_NAMES = {f.upper(): f for f in SYSTEM_FLAGS}
_SELECTS = ("SELECT", "EXAMINE")


class Session:
    """One client's IMAP session.

    :meth:`start` for the greeting, then per read :meth:`receive_data` (or :meth:`feed` and
    :meth:`next_actions` until ``[]``); :meth:`poll` while idling; at the end :meth:`timed_out`
    or :meth:`connection_lost`.
    """

    def __init__(self, hostname: str, authenticator: Authenticator, open_mailboxes: MailboxesOpener,
                 limits: Limits = DEFAULT_LIMITS, *, tls: TlsOffer = TlsOffer.OFF,
                 auth_needs_tls: bool = False) -> None:
        self.hostname = hostname
        self.limits = limits
        self.tls_offer = tls
        self.auth_needs_tls = auth_needs_tls  # LOGIN/AUTHENTICATE only under TLS, where STARTTLS is offered
        self.under_tls = tls is TlsOffer.IMPLICIT  # port 993; or once STARTTLS's handshake is done
        self.state = State.NOT_AUTHENTICATED
        self.address: str | None = None
        self._authenticator = authenticator
        self._open = open_mailboxes
        self._parser = Parser(limits.max_line, limits.max_literal)
        self._bad_commands = 0
        self._auth_failures = 0
        self._mailboxes: Mailboxes | None = None
        self._view: _View | None = None
        self._authenticating: str | None = None  # the tag of an AUTHENTICATE waiting for its response
        self._idling: str | None = None  # the tag of an IDLE going on
        self._handlers: dict[str, Callable[[Command], _Reply]] = {
            "CAPABILITY": self._capability, "NOOP": self._noop, "LOGOUT": self._logout, "ID": self._id,
            "LOGIN": self._login, "AUTHENTICATE": self._authenticate, "STARTTLS": self._starttls,
            "SELECT": self._select, "EXAMINE": self._select, "CREATE": self._create, "DELETE": self._delete,
            "RENAME": self._rename, "SUBSCRIBE": self._subscribe, "UNSUBSCRIBE": self._subscribe,
            "LIST": self._list, "LSUB": self._list, "STATUS": self._status, "APPEND": self._append,
            "NAMESPACE": self._namespace, "IDLE": self._idle, "ENABLE": self._enable,
            "CHECK": self._noop, "CLOSE": self._close, "UNSELECT": self._close, "EXPUNGE": self._expunge,
            "SEARCH": self._search, "FETCH": self._fetch, "STORE": self._store, "COPY": self._copy,
            "MOVE": self._copy, "UID": self._uid,
        }

    @property
    def closed(self) -> bool:
        return self.state is State.LOGOUT

    @property
    def _starttls_offered(self) -> bool:
        return self.tls_offer is TlsOffer.STARTTLS and not self.under_tls

    @property
    def _clear_but_tls_required(self) -> bool:
        """Passwords need TLS here, STARTTLS is offered, and this session has not used it yet."""
        return self.auth_needs_tls and self._starttls_offered

    def capabilities(self) -> str:
        """What CAPABILITY, the greeting and LOGIN's OK list now."""
        return capability_text(self.state, starttls=self._starttls_offered,
                               login_disabled=self._clear_but_tls_required)

    # -- events from the shell --------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The greeting (RFC 3501 §7.1.1), with the capabilities so that clients need not ask."""
        text = f"* OK [CAPABILITY {self.capabilities()}] {self.hostname} IMAP4rev1 server ready\r\n"
        return [Send(text.encode())]

    def feed(self, data: bytes) -> None:
        if not self.closed:
            self._parser.feed(data)

    def next_actions(self) -> list[Action]:
        """The answer to the next complete command (or continuation), ``[]`` while none is complete."""
        if self.closed:
            return []
        event = self._parser.next_event()
        if event is None:
            return []
        if isinstance(event, Continue):
            return [Send(b"+ Ready for literal data\r\n")]
        if isinstance(event, Line):
            return self._line(event.text)
        if isinstance(event, Malformed):
            if self._authenticating or self._idling:
                return self._line(None)
            code = "TOOBIG" if event.too_big else ""
            return self._answer(event.tag, "(malformed)", self._bad(event.text, code))
        return self._command(event)

    def receive_data(self, data: bytes) -> list[Action]:
        self.feed(data)
        actions: list[Action] = []
        while step := self.next_actions():
            actions += step
        return actions

    def poll(self) -> list[Action]:
        """While idling: what changed in the selected mailbox, as untagged responses (RFC 2177)."""
        if self._idling is None or self._view is None:
            return []
        untagged = self._sync(report_expunges=True)
        return [Send(b"".join(untagged))] if untagged else []

    def timed_out(self) -> list[Action]:
        """RFC 3501 §5.4 autologout: an untagged BYE, then close. Nothing is expunged."""
        if self.closed:
            return []
        self._end()
        return [Log(f"autologout after {self.limits.idle_timeout:g}s idle"),
                Send(b"* BYE Autologout; idle for too long\r\n"), Close()]

    def connection_lost(self) -> list[Action]:
        if self.closed:
            return []
        self._end()
        return [Log("connection closed without LOGOUT")]

    def internal_error(self) -> list[Action]:
        """Our own bug hit this session: a generic BYE (RFC 3501 §7.1.5), nothing else changed."""
        self._end()
        return [Send(b"* BYE [SERVERBUG] internal server error, closing connection\r\n"), Close()]

    def tls_started(self) -> list[Action]:
        """STARTTLS's handshake is done. Nothing is sent: the client must ask CAPABILITY again
        (RFC 3501 §6.2.1), and nothing it said before remains (the parser is a fresh one)."""
        self.under_tls = True
        self._parser = Parser(self.limits.max_line, self.limits.max_literal)
        return [Log("TLS started; capabilities on request")]

    # -- dispatch -----------------------------------------------------------------------------------

    def _command(self, command: Command) -> list[Action]:
        name = command.name
        shown = f"{name} ****" if name in ("LOGIN", "AUTHENTICATE") else self._shown(command)
        legal = LEGAL_STATES.get(name)
        if legal is None:
            return self._answer(command.tag, _printable(name.encode(), 20), self._bad("unknown command"))
        if self.state not in legal:
            where = {State.NOT_AUTHENTICATED: "before login", State.AUTHENTICATED: "without a selected mailbox",
                     State.SELECTED: "with a mailbox selected"}[self.state]
            return self._answer(command.tag, shown, self._bad(f"{name} is not allowed {where}"))
        if name in PASSWORD_COMMANDS and self._clear_but_tls_required:
            refusal = _Reply("NO", NEEDS_TLS, "PRIVACYREQUIRED")
            if name == "LOGIN" or len(command.args) > 1:  # the password crossed in clear: say so, as Dovecot does
                refusal.untagged.append(PASSWORD_EXPOSED)
            return self._answer(command.tag, shown, refusal)
        hold = name in HOLD_EXPUNGES
        try:
            reply = self._handlers[name](command)
        except _Refusal as refusal:
            reply = (self._bad(refusal.text, refusal.code) if refusal.status == "BAD"
                     else _Reply("NO", refusal.text, refusal.code))
        except StoreError as exc:
            reply = _Reply("NO", str(exc), exc.code)
        except OSError as exc:
            reply = _Reply("NO", f"server storage failed: {exc.strerror or 'I/O error'}", "UNAVAILABLE")
        if reply.proceed == "starttls":  # RFC 3501 §6.2.1: OK, then the handshake at once
            dropped = self._parser.discard()
            note = f" (dropped {dropped} bytes sent in clear after STARTTLS)" if dropped else ""
            return [*self._answer(command.tag, shown + note, reply), StartTls()]
        if reply.proceed == "authenticate":  # RFC 3501 §6.2.2: an empty challenge, then the response line
            self._authenticating = command.tag
            self._parser.want_line()
            return [Send(b"+ \r\n")]
        if reply.proceed == "idle":  # RFC 2177 §3: updates flow until the client sends DONE
            self._idling = command.tag
            self._parser.want_line()
            return [Log(f"{shown} -> idling"), Send(b"+ idling\r\n"), Poll(self.limits.poll_interval, self.poll)]
        # After SELECT, the view is the listing just taken: a sync would only look again (and
        # list the folder again, when that listing moved new/ into cur/ a moment ago).
        if self._view is not None and self.state is State.SELECTED and not reply.close and name not in _SELECTS:
            reply.untagged += self._sync(report_expunges=not hold)
        return self._answer(command.tag, shown, reply)

    @staticmethod
    def _shown(command: Command) -> str:
        return _printable(f"{command.name} {' '.join(_token_text(a) for a in command.args)}".strip().encode())

    def _bad(self, text: str, code: str = "") -> _Reply:
        self._bad_commands += 1
        if self._bad_commands >= self.limits.max_bad_commands:
            self._end()
            return _Reply("BAD", text, code, untagged=[b"* BYE Too many invalid commands, closing connection\r\n"],
                          close=True)
        return _Reply("BAD", text, code)

    def _answer(self, tag: str | None, shown: str, reply: _Reply) -> list[Action]:
        code = f"[{reply.code}] " if reply.code else ""
        tagged = f"{tag or '*'} {reply.status} {code}{reply.text}\r\n".encode()
        actions: list[Action] = [Log(f"{tag or '*'} {shown} -> {reply.status} {code}{reply.text}".rstrip())]
        if reply.delay > 0:
            actions.append(Wait(reply.delay))
        if reply.close and reply.untagged and reply.untagged[-1].startswith(b"* BYE"):
            # RFC 3501 §7.1.5: BYE, then (for LOGOUT) the tagged OK; a forced close answers the
            # command first, so that the client knows what became of it.
            bye = reply.untagged.pop()
            data = b"".join(reply.untagged) + (bye + tagged if reply.status == "OK" else tagged + bye)
        else:
            data = b"".join(reply.untagged) + tagged
        actions.append(Send(data))
        if reply.close:
            actions.append(Close())
        return actions

    def _end(self) -> None:
        self.state = State.LOGOUT
        self._view = None
        self._mailboxes = None
        self._idling = self._authenticating = None

    def _line(self, text: bytes | None) -> list[Action]:
        """A raw line: the response to AUTHENTICATE's challenge, or what ends an IDLE."""
        if self._authenticating is not None:
            tag, self._authenticating = self._authenticating, None
            if text is None or text.strip() == b"*":
                return self._answer(tag, "AUTHENTICATE ****", self._bad("AUTHENTICATE cancelled"))
            return self._answer(tag, "AUTHENTICATE ****", self._plain(text.strip()))
        idle_tag, self._idling = self._idling, None
        actions: list[Action] = [StopPolling()]
        if text is not None and text.strip().upper() == b"DONE":
            reply = _Reply("OK", "IDLE terminated")
            if self._view is not None:
                reply.untagged += self._sync(report_expunges=True)
            return actions + self._answer(idle_tag, "IDLE", reply)
        return actions + self._answer(idle_tag, "IDLE", self._bad("expected DONE to end IDLE"))

    # -- arguments --------------------------------------------------------------------------------

    @staticmethod
    def _arity(command: Command, low: int, high: int | None = None) -> None:
        high = low if high is None else high
        if not low <= len(command.args) <= high:
            raise _Refusal("BAD", f"wrong number of arguments for {command.name}")

    @staticmethod
    def _astring(token: Token) -> bytes:
        if isinstance(token, String):
            return token.data
        if isinstance(token, Atom):
            return token.text.encode("ascii", "replace")
        raise _Refusal("BAD", "expected a string")

    def _mailbox_name(self, token: Token) -> str:
        name = self._astring(token).decode("utf-8", "replace")
        return "INBOX" if name.upper() == "INBOX" else name

    @staticmethod
    def _number(token: Token | str) -> int:
        text = token if isinstance(token, str) else token.text if isinstance(token, Atom) else ""
        if not text.isdigit() or len(text) > 10 or int(text) > MAX_NUMBER:
            raise _Refusal("BAD", "invalid number")
        return int(text)

    def _selected(self) -> _View:
        assert self._view is not None
        return self._view

    def _message_set(self, token: Token, *, uid: bool) -> list[int]:
        """The indexes (0-based, ascending) of the view's messages that a sequence set names (RFC 3501 §9)."""
        if not isinstance(token, Atom) or not re.fullmatch(r"[0-9:*,]+", token.text):
            raise _Refusal("BAD", "invalid message set")
        view = self._selected()
        count = len(view.uids)
        largest = view.uids[-1] if view.uids else 0
        wanted: set[int] = set()
        ranges: list[tuple[int, int]] = []
        for item in token.text.split(","):
            ends = item.split(":")
            if len(ends) > 2 or not all(ends):
                raise _Refusal("BAD", "invalid message set")
            star = largest if uid else count
            low, high = (star if e == "*" else self._number(e) for e in (ends[0], ends[-1]))
            if min(low, high) == 0 and not (uid and star == 0):
                raise _Refusal("BAD", "invalid message set: numbers start at 1")
            low, high = min(low, high), max(low, high)
            if uid:
                ranges.append((low, high))
            elif high > count:
                raise _Refusal("BAD", f"no message {high}: the mailbox has {count}")
            else:
                wanted.update(range(low - 1, high))
        if uid:
            wanted = {i for i, u in enumerate(view.uids) if any(lo <= u <= hi for lo, hi in ranges)}
        return sorted(wanted)

    def _flags(self, tokens: Iterable[Token]) -> frozenset[str]:
        """System flags from a flag list; \\Recent and keywords are not stored (PERMANENTFLAGS)."""
        flags = set()
        for token in tokens:
            if not isinstance(token, Atom) or not token.text or token.text == "\\":
                raise _Refusal("BAD", "invalid flag")
            system = _SYSTEM_FLAG_NAMES.get(token.text.upper())
            if system is not None:
                flags.add(system)
            elif token.text.startswith("\\") and token.text.upper() != "\\RECENT":
                raise _Refusal("BAD", f"unknown system flag {token.text}")
        return frozenset(flags)

    def _flag_list(self, uid: int) -> bytes:
        view = self._selected()
        flags = [f for f in SYSTEM_FLAGS if f in view.messages[uid].flags]
        if uid in view.recent:
            flags.append("\\Recent")
        return ("(" + " ".join(flags) + ")").encode()

    # -- the selected view --------------------------------------------------------------------------

    def _sync(self, *, report_expunges: bool) -> list[bytes]:
        """Untagged responses for what changed on disk since this session last looked."""
        view = self._selected()
        try:
            current = view.folder.messages(claim_new=not view.readonly)
        except StoreError:
            # The mailbox was deleted or renamed under us (RFC 3501 §6.3.4 leaves this open).
            self._end()
            return [b"* BYE The selected mailbox is gone\r\n"]
        if current is view.synced and not view.folder.claimed:
            return []
        view.own()
        if report_expunges:
            view.synced = current
        view.recent.update(view.folder.claimed)
        by_uid = view.folder.by_uid
        out: list[bytes] = []
        if report_expunges:
            for index in range(len(view.uids) - 1, -1, -1):  # from the end: no report renumbers the next
                uid = view.uids[index]
                if uid not in by_uid:
                    out.append(b"* %d EXPUNGE\r\n" % (index + 1))
                    del view.uids[index]
                    view.messages.pop(uid, None)
                    view.recent.discard(uid)
        for number, uid in enumerate(view.uids, 1):
            now = by_uid.get(uid)
            if now is None:
                continue
            if now.flags != view.messages[uid].flags:
                view.messages[uid] = now
                out.append(b"* %d FETCH (FLAGS %s)\r\n" % (number, self._flag_list(uid)))
            else:
                view.messages[uid] = now  # the path may have changed
        known = max(view.messages, default=0)
        fresh = [m for m in current if m.uid > known]
        if fresh:
            for m in fresh:
                view.uids.append(m.uid)
                view.messages[m.uid] = m
            out.append(b"* %d EXISTS\r\n" % len(view.uids))
            out.append(b"* %d RECENT\r\n" % len(view.recent))
        return out

    def _content(self, message: Message) -> bytes:
        try:
            return crlf_form(self._selected().folder.read(message))
        except OSError as exc:
            why = exc.strerror or "I/O error"
            raise StoreError(f"cannot read message {message.uid}: {why}", "UNAVAILABLE") from exc

    # -- any state (RFC 3501 §6.1) --------------------------------------------------------------------

    def _capability(self, command: Command) -> _Reply:
        self._arity(command, 0)
        line = f"* CAPABILITY {self.capabilities()}\r\n".encode()
        return _Reply("OK", "CAPABILITY completed", untagged=[line])

    def _noop(self, command: Command) -> _Reply:
        self._arity(command, 0)
        return _Reply("OK", f"{command.name} completed")

    def _logout(self, command: Command) -> _Reply:
        self._arity(command, 0)
        self._end()
        return _Reply("OK", "LOGOUT completed", untagged=[b"* BYE IMAP4rev1 server logging out\r\n"], close=True)

    def _id(self, command: Command) -> _Reply:
        """RFC 2971: the client's ID is taken as given; ours names the lab."""
        self._arity(command, 1)
        arg = command.args[0]
        if not (isinstance(arg, Group) or (isinstance(arg, Atom) and arg.upper() == "NIL")):
            raise _Refusal("BAD", "ID takes a parenthesized list or NIL")
        return _Reply("OK", "ID completed", untagged=[b'* ID ("name" "maillab" "vendor" "maillab")\r\n'])

    # -- not authenticated (RFC 3501 §6.2) ------------------------------------------------------------

    def _login(self, command: Command) -> _Reply:
        self._arity(command, 2)
        user = self._astring(command.args[0]).decode("utf-8", "surrogateescape")
        password = self._astring(command.args[1]).decode("utf-8", "surrogateescape")
        return self._check_login(user, password)

    def _starttls(self, command: Command) -> _Reply:
        """STARTTLS (RFC 3501 §6.2.1): OK and the handshake, or BAD where TLS cannot start
        (not counted as a bad command: the session goes on as it was)."""
        self._arity(command, 0)
        if self.under_tls:
            return _Reply("BAD", TLS_ALREADY)
        if self.tls_offer is TlsOffer.OFF:
            return _Reply("BAD", TLS_NOT_OFFERED)
        if self.tls_offer is not TlsOffer.STARTTLS:
            return _Reply("BAD", TLS_UNAVAILABLE)
        return _Reply("OK", "Begin TLS negotiation now", proceed="starttls")

    def _authenticate(self, command: Command) -> _Reply:
        self._arity(command, 1, 2)
        mechanism = command.args[0]
        if not isinstance(mechanism, Atom) or mechanism.upper() != "PLAIN":
            raise _Refusal("NO", "unsupported authentication mechanism; use PLAIN or LOGIN")
        if len(command.args) == 2:  # RFC 4959: the initial response in the command
            initial = self._astring(command.args[1])
            return self._plain(b"" if initial == b"=" else initial)
        return _Reply("OK", "", proceed="authenticate")

    def _plain(self, response: bytes) -> _Reply:
        """SASL PLAIN (RFC 4616): authzid NUL authcid NUL password, in base64."""
        try:
            decoded = binascii.a2b_base64(response, strict_mode=True)
        except (binascii.Error, ValueError):
            return self._bad("invalid base64 in the AUTHENTICATE response")
        parts = decoded.split(b"\0")
        if len(parts) != 3:
            return self._bad("PLAIN wants authzid NUL authcid NUL password")
        authzid, user, password = (p.decode("utf-8", "surrogateescape") for p in parts)
        if authzid and authzid.lower() != user.lower():
            return self._failed_login()
        return self._check_login(user, password)

    def _check_login(self, user: str, password: str) -> _Reply:
        address = self._authenticator.authenticate(user, password)
        if address is None:
            return self._failed_login()
        try:
            self._mailboxes = self._open(address)
            self._mailboxes.folder("INBOX")
        except (OSError, ValueError) as exc:
            self._mailboxes = None
            raise _Refusal("NO", "cannot open the mailbox, try again later", "UNAVAILABLE") from exc
        self.address = address
        self.state = State.AUTHENTICATED
        return _Reply("OK", "Logged in", f"CAPABILITY {self.capabilities()}")

    def _failed_login(self) -> _Reply:
        self._auth_failures += 1
        delay = self.limits.auth_delay(self._auth_failures)
        if self._auth_failures >= self.limits.max_auth_failures:
            self._end()
            return _Reply("NO", "Authentication failed", "AUTHENTICATIONFAILED", delay=delay, close=True,
                          untagged=[b"* BYE Too many failed logins, closing connection\r\n"])
        return _Reply("NO", "Authentication failed", "AUTHENTICATIONFAILED", delay=delay)

    # -- authenticated (RFC 3501 §6.3) ------------------------------------------------------------------

    def _store_of(self) -> Mailboxes:
        assert self._mailboxes is not None
        return self._mailboxes

    def _select(self, command: Command) -> _Reply:
        self._arity(command, 1)
        name = self._mailbox_name(command.args[0])
        readonly = command.name == "EXAMINE"
        self._view = None  # §6.3.1: a failed SELECT leaves no mailbox selected
        self.state = State.AUTHENTICATED
        folder = self._store_of().folder(name)
        messages = folder.messages(claim_new=not readonly)
        recent = (set(folder.claimed) if not readonly else {m.uid for m in messages if m.in_new} if folder.any_new
                  else set())
        view = _View(name, folder, readonly, folder.uid_list, folder.by_uid, recent, messages, shared=True)
        self._view = view
        self.state = State.SELECTED
        flags = " ".join(SYSTEM_FLAGS)
        permanent = "" if readonly else " ".join(PERMANENT_FLAGS)
        untagged = [f"* FLAGS ({flags})\r\n".encode(),
                    f"* OK [PERMANENTFLAGS ({permanent})] Flags permitted\r\n".encode(),
                    b"* %d EXISTS\r\n" % len(messages), b"* %d RECENT\r\n" % len(recent)]
        unseen = folder.first_unseen
        if unseen is not None:
            untagged.append(b"* OK [UNSEEN %d] First unseen\r\n" % unseen)
        untagged += [b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uidvalidity,
                     b"* OK [UIDNEXT %d] Predicted next UID\r\n" % folder.uidnext]
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return _Reply("OK", f"{command.name} completed", mode, untagged=untagged)

    def _create(self, command: Command) -> _Reply:
        self._arity(command, 1)
        self._store_of().create(self._mailbox_name(command.args[0]))
        return _Reply("OK", "CREATE completed")

    def _delete(self, command: Command) -> _Reply:
        self._arity(command, 1)
        self._store_of().delete(self._mailbox_name(command.args[0]))
        return _Reply("OK", "DELETE completed")

    def _rename(self, command: Command) -> _Reply:
        self._arity(command, 2)
        self._store_of().rename(self._mailbox_name(command.args[0]), self._mailbox_name(command.args[1]))
        return _Reply("OK", "RENAME completed")

    def _subscribe(self, command: Command) -> _Reply:
        self._arity(command, 1)
        self._store_of().subscribe(self._mailbox_name(command.args[0]), on=command.name == "SUBSCRIBE")
        return _Reply("OK", f"{command.name} completed")

    def _list(self, command: Command) -> _Reply:
        """LIST and LSUB (RFC 3501 §6.3.8, §6.3.9): ``*`` matches anything, ``%`` stops at the separator."""
        self._arity(command, 2)
        reference = self._astring(command.args[0]).decode("utf-8", "replace")
        pattern = self._astring(command.args[1]).decode("utf-8", "replace")
        sep = string(SEPARATOR)
        if command.name == "LIST" and not pattern:
            return _Reply("OK", "LIST completed", untagged=[b'* LIST (\\Noselect) ' + sep + b' ""\r\n'])
        store = self._store_of()
        full = reference + pattern
        regex = re.compile("".join(".*" if c == "*" else "[^.]*" if c == "%" else re.escape(c) for c in full),
                           re.IGNORECASE if full.upper().startswith("INBOX") else 0)
        names = store.names()
        out = []
        if command.name == "LSUB":
            for name in store.subscriptions():
                if regex.fullmatch(name):
                    out.append(b"* LSUB () " + sep + b" " + string(name) + b"\r\n")
            return _Reply("OK", "LSUB completed", untagged=out)
        existing = set(names)
        parents = {n.rsplit(SEPARATOR, i)[0] for n in names for i in range(1, n.count(SEPARATOR) + 1)}
        for name in sorted(existing | parents, key=lambda n: (n != "INBOX", n)):
            if not regex.fullmatch(name):
                continue
            children = any(other.startswith(name + SEPARATOR) for other in existing | parents) and name != "INBOX"
            attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
            if name not in existing:
                attributes.insert(0, "\\Noselect")
            out.append(f"* LIST ({' '.join(attributes)}) ".encode() + sep + b" " + string(name) + b"\r\n")
        return _Reply("OK", "LIST completed", untagged=out)

    def _status(self, command: Command) -> _Reply:
        self._arity(command, 2)
        name = self._mailbox_name(command.args[0])
        items = command.args[1]
        if not isinstance(items, Group) or not items.items:
            raise _Refusal("BAD", "STATUS wants a list of items")
        folder = self._store_of().folder(name)
        messages, recent, unseen = folder.counts()
        values = {"MESSAGES": messages, "RECENT": recent, "UIDNEXT": folder.uidnext,
                  "UIDVALIDITY": folder.uidvalidity, "UNSEEN": unseen}
        out = []
        for item in items.items:
            key = item.upper() if isinstance(item, Atom) else ""
            if key not in values:
                raise _Refusal("BAD", f"unknown STATUS item {_token_text(item)}")
            out.append(f"{key} {values[key]}")
        line = b"* STATUS " + string(name) + f" ({' '.join(out)})\r\n".encode()
        return _Reply("OK", "STATUS completed", untagged=[line])

    def _append(self, command: Command) -> _Reply:
        """RFC 3501 §6.3.11 with UIDPLUS's APPENDUID (RFC 4315 §3). OK only once it is on disk."""
        self._arity(command, 2, 4)
        name = self._mailbox_name(command.args[0])
        data = command.args[-1]
        if not isinstance(data, String) or not data.literal:
            raise _Refusal("BAD", "APPEND wants the message as a literal")
        flags: frozenset[str] = frozenset()
        when: float | None = None
        for extra in command.args[1:-1]:
            if isinstance(extra, Group) and not flags:
                flags = self._flags(extra.items)
            elif isinstance(extra, String) and when is None:
                when = parse_date_time(extra.data.decode("ascii", "replace"))
            else:
                raise _Refusal("BAD", "APPEND mailbox [(flags)] [date-time] literal")
        if not data.data:
            raise _Refusal("NO", "cannot store an empty message")
        store = self._store_of()
        if not store.exists(name):
            raise _Refusal("NO", f"no mailbox {name}", "TRYCREATE")
        folder = self._view.folder if self._view is not None and self._view.name == name else store.folder(name)
        uid = folder.add(data.data, flags, when)
        return _Reply("OK", "APPEND completed", f"APPENDUID {folder.uidvalidity} {uid}")

    def _namespace(self, command: Command) -> _Reply:
        self._arity(command, 0)
        line = b"* NAMESPACE ((\"\" " + string(SEPARATOR) + b")) NIL NIL\r\n"
        return _Reply("OK", "NAMESPACE completed", untagged=[line])

    def _idle(self, command: Command) -> _Reply:
        self._arity(command, 0)
        return _Reply("OK", "", proceed="idle")

    def _enable(self, command: Command) -> _Reply:
        """RFC 5161: nothing to enable (no CONDSTORE, no UTF8=ACCEPT), so ``* ENABLED`` lists none."""
        self._arity(command, 1, 64)
        return _Reply("OK", "ENABLE completed", untagged=[b"* ENABLED\r\n"])

    # -- selected (RFC 3501 §6.4) ------------------------------------------------------------------------

    def _close(self, command: Command) -> _Reply:
        """CLOSE expunges silently (§6.4.2); UNSELECT (RFC 3691) does not."""
        self._arity(command, 0)
        view = self._selected()
        if command.name == "CLOSE" and not view.readonly:
            view.folder.remove(m for m in view.messages.values() if "\\Deleted" in m.flags)
        self._view = None
        self.state = State.AUTHENTICATED
        return _Reply("OK", f"{command.name} completed")

    def _writable(self, what: str) -> _View:
        view = self._selected()
        if view.readonly:
            raise _Refusal("NO", f"{what} is not allowed: the mailbox is read-only (EXAMINE)", "READ-ONLY")
        return view

    def _expunge(self, command: Command, uid: bool = False) -> _Reply:
        view = self._writable("EXPUNGE")
        if uid:  # RFC 4315 §2.1
            self._arity(command, 1)
            chosen = [view.uids[i] for i in self._message_set(command.args[0], uid=True)]
        else:
            self._arity(command, 0)
            chosen = list(view.uids)
        view.folder.remove(view.messages[u] for u in chosen if "\\Deleted" in view.messages[u].flags)
        return _Reply("OK", "EXPUNGE completed")

    def _fetch(self, command: Command, uid: bool = False) -> _Reply:
        self._arity(command, 2)
        view = self._selected()
        indexes = self._message_set(command.args[0], uid=uid)
        items = _fetch_items(command.args[1])
        if uid and "UID" not in [i.name for i in items]:
            items.insert(0, _Item("UID"))  # RFC 3501 §6.4.8: UID FETCH answers always carry the UID
        out: list[bytes] = []
        gone = 0
        for index in indexes:
            uid_ = view.uids[index]
            try:
                out.append(self._fetch_one(index, uid_, items))
            except StoreError as exc:
                if exc.code != "EXPUNGEISSUED":
                    raise
                gone += 1
        if gone:
            return _Reply("NO", "some of the messages were expunged meanwhile", "EXPUNGEISSUED", untagged=out)
        return _Reply("OK", f"{'UID ' if uid else ''}FETCH completed", untagged=out)

    def _fetch_one(self, index: int, uid: int, items: list[_Item]) -> bytes:
        view = self._selected()
        message = view.messages[uid]
        content: bytes | None = None
        tree: mime.Part | None = None
        parts: list[bytes] = []
        marks_seen = False
        for item in items:
            if item.name in ("BODY[]", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "ENVELOPE", "BODY", "BODYSTRUCTURE"):
                if content is None:
                    content = self._content(message)
                if tree is None and not item.whole:
                    tree = mime.parse(content)  # the whole message needs no MIME tree: most FETCHes
            assert item.name == "FLAGS" or item.name in _SIMPLE_ITEMS or content is not None
            if item.name == "FLAGS":
                parts.append(b"FLAGS " + self._flag_list(uid))
            elif item.name == "UID":
                parts.append(b"UID %d" % uid)
            elif item.name == "INTERNALDATE":
                parts.append(b"INTERNALDATE " + internal_date(view.folder.internal_date(message)))
            elif item.name == "RFC822.SIZE":
                try:
                    parts.append(b"RFC822.SIZE %d" % message.wire_size())
                except FileNotFoundError:
                    raise StoreError("message was expunged", "EXPUNGEISSUED") from None
            elif item.name == "ENVELOPE":
                assert tree is not None
                parts.append(b"ENVELOPE " + mime.envelope(tree))
            elif item.name in ("BODY", "BODYSTRUCTURE"):
                assert tree is not None
                structure = mime.bodystructure(tree, extended=item.name == "BODYSTRUCTURE")
                parts.append(item.name.encode() + b" " + structure)
            else:
                assert content is not None
                if item.whole:
                    data = content
                else:
                    assert tree is not None and item.section is not None
                    data = mime.section_bytes(tree, content, item.section)
                if item.partial is not None:
                    start, length = item.partial
                    data = data[start:start + length]
                parts.append(item.response.encode() + b" " + _literal(data))
                marks_seen |= not item.peek
        if marks_seen and not view.readonly and "\\Seen" not in message.flags:
            # §6.4.5: BODY[...] sets \Seen; the changed flags go with the answer.
            updated = view.folder.set_flags(message, message.flags | {"\\Seen"})
            if updated is not None:
                view.own()
                view.messages[uid] = updated
                if not any(i.name == "FLAGS" for i in items):
                    parts.append(b"FLAGS " + self._flag_list(uid))
        return b"* %d FETCH (" % (index + 1) + b" ".join(parts) + b")\r\n"

    def _store(self, command: Command, uid: bool = False) -> _Reply:
        self._arity(command, 3, 64)
        view = self._writable("STORE")
        indexes = self._message_set(command.args[0], uid=uid)
        what = command.args[1].upper() if isinstance(command.args[1], Atom) else ""
        m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", what)
        if not m:
            raise _Refusal("BAD", "STORE wants FLAGS, +FLAGS or -FLAGS (optionally .SILENT)")
        rest = command.args[2:]
        tokens = rest[0].items if len(rest) == 1 and isinstance(rest[0], Group) else rest
        flags = self._flags(tokens)
        out: list[bytes] = []
        gone = 0
        for index in indexes:
            message_uid = view.uids[index]
            message = view.messages[message_uid]
            new = (message.flags | flags if m.group(1) == "+" else message.flags - flags if m.group(1) == "-"
                   else flags)
            updated = view.folder.set_flags(message, new)
            if updated is None:
                gone += 1
                continue
            view.own()
            view.messages[message_uid] = updated
            if not m.group(2):
                uid_item = b" UID %d" % message_uid if uid else b""
                out.append(b"* %d FETCH (FLAGS %s%s)\r\n" % (index + 1, self._flag_list(message_uid), uid_item))
        if gone:
            return _Reply("NO", "some of the messages were expunged meanwhile", "EXPUNGEISSUED", untagged=out)
        return _Reply("OK", "STORE completed", untagged=out)

    def _copy(self, command: Command, uid: bool = False) -> _Reply:
        """COPY (§6.4.7) and MOVE (RFC 6851), with UIDPLUS's COPYUID (RFC 4315 §3)."""
        self._arity(command, 2)
        move = command.name == "MOVE"
        view = self._writable("MOVE") if move else self._selected()
        indexes = self._message_set(command.args[0], uid=uid)
        name = self._mailbox_name(command.args[1])
        store = self._store_of()
        if not store.exists(name):
            raise _Refusal("NO", f"no mailbox {name}", "TRYCREATE")
        target = view.folder if name == view.name else store.folder(name)
        sources: list[int] = []

        def readable() -> Iterator[tuple[bytes, frozenset[str], float]]:
            for index in indexes:  # read one at a time, written as read: no whole set in memory
                message = view.messages[view.uids[index]]
                try:
                    data = view.folder.read(message)
                    date = view.folder.internal_date(message)
                except StoreError:
                    continue  # expunged meanwhile: nothing to copy
                sources.append(message.uid)
                yield data, message.flags, date

        copies = target.add_many(readable())
        code = f"COPYUID {target.uidvalidity} {_uid_set(sources)} {_uid_set(copies)}" if sources else ""
        if not move:
            return _Reply("OK", "COPY completed", code)
        view.folder.remove(view.messages[u] for u in sources)
        untagged = [f"* OK [{code}] Moved\r\n".encode()] if code else []
        return _Reply("OK", "MOVE completed", untagged=untagged)

    def _search(self, command: Command, uid: bool = False) -> _Reply:
        view = self._selected()
        args = list(command.args)
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
            charset = self._astring(args[1]).decode("ascii", "replace").upper()
            if charset not in ("US-ASCII", "UTF-8"):
                raise _Refusal("NO", f"unsupported charset {charset}", "BADCHARSET (US-ASCII UTF-8)")
            args = args[2:]
        if not args:
            raise _Refusal("BAD", "SEARCH wants at least one key")
        test = _Search(self, uid).all_of(args)
        found = []
        for index, message_uid in enumerate(view.uids):
            try:
                if test(index, view.messages[message_uid]):
                    found.append(message_uid if uid else index + 1)
            except StoreError:
                continue  # expunged meanwhile: matches nothing
        line = b"* SEARCH" + b"".join(b" %d" % n for n in found) + b"\r\n"
        return _Reply("OK", "SEARCH completed", untagged=[line])

    def _uid(self, command: Command) -> _Reply:
        """UID FETCH/STORE/COPY/MOVE/SEARCH/EXPUNGE (RFC 3501 §6.4.8, RFC 4315, RFC 6851)."""
        if not command.args or not isinstance(command.args[0], Atom):
            raise _Refusal("BAD", "UID wants FETCH, STORE, COPY, MOVE, SEARCH or EXPUNGE")
        inner = Command(command.tag, command.args[0].upper(), command.args[1:])
        handlers = {"FETCH": self._fetch, "STORE": self._store, "COPY": self._copy, "MOVE": self._copy,
                    "SEARCH": self._search, "EXPUNGE": self._expunge}
        handler = handlers.get(inner.name)
        if handler is None:
            raise _Refusal("BAD", "UID wants FETCH, STORE, COPY, MOVE, SEARCH or EXPUNGE")
        return handler(inner, True)


# -- FETCH items (RFC 3501 §6.4.5) ------------------------------------------------------------------

_SIMPLE_ITEMS = frozenset({"UID", "INTERNALDATE", "RFC822.SIZE", "FLAGS"})
_MACROS = {"ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
           "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
           "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")}
_BODY_ITEM = re.compile(r"(BODY|BODY\.PEEK)\[(.*)\](?:<(\d{1,10})\.(\d{1,10})>)?", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class _Item:
    name: str  # FLAGS, UID, ..., or "BODY[]" for any section fetch
    section: mime.Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False
    response: str = ""  # the item's name in the answer: BODY[HEADER]<0>

    @property
    def whole(self) -> bool:
        """BODY[] or RFC822 (partial or not): the message's octets as they are."""
        return self.name == "BODY[]" and (self.section is None or self.section == mime.Section((), ""))


def _fetch_items(token: Token) -> list[_Item]:
    if isinstance(token, Atom) and token.upper() in _MACROS:
        return [_Item(n) for n in _MACROS[token.upper()]]
    tokens = token.items if isinstance(token, Group) else (token,)
    if not tokens:
        raise _Refusal("BAD", "FETCH wants at least one item")
    return [_fetch_item(t) for t in tokens]


def _fetch_item(token: Token) -> _Item:
    if not isinstance(token, Atom):
        raise _Refusal("BAD", "invalid FETCH item")
    name = token.upper()
    if name in _SIMPLE_ITEMS or name in ("ENVELOPE", "BODY", "BODYSTRUCTURE"):
        return _Item(name)
    aliases = {"RFC822": ("BODY", "", "RFC822"), "RFC822.HEADER": ("BODY.PEEK", "HEADER", "RFC822.HEADER"),
               "RFC822.TEXT": ("BODY", "TEXT", "RFC822.TEXT")}
    if name in aliases:
        kind, spec, shown = aliases[name]
        return _Item("BODY[]", mime.parse_section(spec), None, kind == "BODY.PEEK", shown)
    m = _BODY_ITEM.fullmatch(token.text)
    if not m:
        raise _Refusal("BAD", f"unknown FETCH item {_printable(token.text.encode(), 40)}")
    try:
        section = mime.parse_section(m.group(2))
    except mime.BadSection:
        raise _Refusal("BAD", "invalid section in FETCH BODY[...]") from None
    partial = None
    shown = f"BODY[{m.group(2)}]"
    if m.group(3) is not None:
        start, length = int(m.group(3)), int(m.group(4))
        partial = (start, length)
        shown += f"<{start}>"
    return _Item("BODY[]", section, partial, m.group(1).upper() == "BODY.PEEK", shown)


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _uid_set(uids: list[int]) -> str:
    """A compact sequence set: 1:3,7 (RFC 4315 §3's uid-set)."""
    out: list[str] = []
    start = prev = None
    for u in uids:
        if start is None:
            start = prev = u
        elif prev is not None and u == prev + 1:
            prev = u
        else:
            out.append(str(start) if start == prev else f"{start}:{prev}")
            start = prev = u
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def _token_text(token: Token) -> str:
    if isinstance(token, Atom):
        return token.text
    if isinstance(token, String):
        return "{literal}" if token.literal else '"' + _printable(token.data, 40) + '"'
    return "(" + " ".join(_token_text(t) for t in token.items) + ")"


# -- SEARCH (RFC 3501 §6.4.4) ------------------------------------------------------------------------

Test = Callable[[int, Message], bool]
_FLAG_KEYS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft", "FLAGGED": "\\Flagged",
              "SEEN": "\\Seen"}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}


class _Search:
    """Search keys compiled to tests of (index, message); contents read only when a key needs them."""

    def __init__(self, session: Session, uid: bool) -> None:
        self.session = session
        self.uid = uid
        self._cache: dict[int, tuple[bytes, mime.Part]] = {}

    def all_of(self, tokens: list[Token]) -> Test:
        stream = list(tokens)
        tests = []
        while stream:
            tests.append(self._key(stream))
        return lambda i, m: all(t(i, m) for t in tests)

    def _content(self, message: Message) -> tuple[bytes, mime.Part]:
        if message.uid not in self._cache:
            content = self.session._content(message)
            self._cache[message.uid] = (content, mime.parse(content))
        return self._cache[message.uid]

    def _take_string(self, stream: list[Token]) -> str:
        if not stream:
            raise _Refusal("BAD", "a SEARCH key is missing its argument")
        return self.session._astring(stream.pop(0)).decode("utf-8", "replace")

    def _key(self, stream: list[Token]) -> Test:
        token = stream.pop(0)
        if isinstance(token, Group):
            return self.all_of(list(token.items))
        if not isinstance(token, Atom):
            raise _Refusal("BAD", "invalid SEARCH key")
        key = token.upper()
        view = self.session._selected()
        if key == "ALL":
            return lambda i, m: True
        if key in _FLAG_KEYS:
            flag = _FLAG_KEYS[key]
            return lambda i, m: flag in m.flags
        if key.startswith("UN") and key[2:] in _FLAG_KEYS:
            flag = _FLAG_KEYS[key[2:]]
            return lambda i, m: flag not in m.flags
        if key == "RECENT":
            return lambda i, m: m.uid in view.recent
        if key == "OLD":
            return lambda i, m: m.uid not in view.recent
        if key == "NEW":
            return lambda i, m: m.uid in view.recent and "\\Seen" not in m.flags
        if key in ("KEYWORD", "UNKEYWORD"):
            self._take_string(stream)
            return (lambda i, m: False) if key == "KEYWORD" else (lambda i, m: True)  # no keywords are kept
        if key == "NOT":
            if not stream:
                raise _Refusal("BAD", "NOT wants a key")
            inner = self._key(stream)
            return lambda i, m: not inner(i, m)
        if key == "OR":
            if len(stream) < 2:
                raise _Refusal("BAD", "OR wants two keys")
            left = self._key(stream)
            right = self._key(stream)
            return lambda i, m: left(i, m) or right(i, m)
        if key in ("LARGER", "SMALLER"):
            if not stream:
                raise _Refusal("BAD", f"{key} wants a number")
            size = self.session._number(stream.pop(0))
            if key == "LARGER":
                return lambda i, m: m.wire_size() > size
            return lambda i, m: m.wire_size() < size
        if key in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
            day = parse_date(self._take_string(stream))
            sent = key.startswith("SENT")
            compare = key[4:] if sent else key

            def on_day(i: int, m: Message) -> bool:
                got = self._sent_day(m) if sent else time.gmtime(self.session._selected().folder.internal_date(m))[:3]
                if got is None:
                    return False
                return got < day if compare == "BEFORE" else got == day if compare == "ON" else got >= day
            return on_day
        if key in _HEADER_KEYS or key == "HEADER":
            name = _HEADER_KEYS.get(key) or self._take_string(stream).lower()
            needle = self._take_string(stream).lower()
            return lambda i, m: self._header_has(m, name, needle)
        if key in ("BODY", "TEXT"):
            octets = self._take_string(stream).lower().encode("utf-8")
            whole = key == "TEXT"
            return lambda i, m: octets in (self._content(m)[0] if whole else self._content(m)[1].body).lower()
        if key == "UID":
            if not stream:
                raise _Refusal("BAD", "UID wants a set")
            chosen = {view.uids[i] for i in self.session._message_set(stream.pop(0), uid=True)}
            return lambda i, m: m.uid in chosen
        if re.fullmatch(r"[0-9:*,]+", key):
            numbers = set(self.session._message_set(token, uid=False))
            return lambda i, m: i in numbers
        raise _Refusal("BAD", f"unknown SEARCH key {_printable(key.encode(), 30)}")

    def _header_has(self, message: Message, name: str, needle: str) -> bool:
        fields = self._content(message)[1].fields
        values = [v for k, v in fields.raw_items() if k.lower() == name]
        if not needle:
            return bool(values)  # HEADER name "": every message that has the field
        return any(needle in _decoded(v).lower() for v in values)

    def _sent_day(self, message: Message) -> tuple[int, int, int] | None:
        date = self._content(message)[1].fields.get("date")
        if not isinstance(date, str):
            return None
        try:
            parsed = email.utils.parsedate_tz(date)
        except (TypeError, ValueError):
            return None
        return (parsed[0], parsed[1], parsed[2]) if parsed else None


def _decoded(value: str) -> str:
    """A header value with RFC 2047 words decoded, for SEARCH's substring match."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value
