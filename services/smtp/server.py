"""What the lab's two SMTP servers (the MTA and the MX) share: aiosmtpd, made to answer like sendmail.

aiosmtpd is the engine: it reads command lines within their limits, dispatches the verbs, runs
AUTH PLAIN/LOGIN, and times out idle clients. :class:`LabSMTP` changes only what the lab needs
changed, and says why each time:

* the replies a student knows from the reference article (``250 2.1.0 andy@ouhk.example...
  Sender ok``), every one with an RFC 3463 enhanced status code, since EHLO promises them
  (ENHANCEDSTATUSCODES, RFC 2034 §3); aiosmtpd's own wordings are mapped in :data:`REWORDED`;
* what each command is answered, and when it may come, is decided by a pure
  :class:`~services.smtp.session.ServerSession` (states, the bad-command budget, the recipient
  limit, no AUTH inside a transaction); MAIL and RCPT parse their paths with
  :mod:`services.smtp.policy` (RFC 5321 §4.1.2, plus the article's hand-typed
  ``MAIL FROM: andy@ouhk.example``), and are accepted before HELO, as by sendmail, because the
  article never sends one;
* DATA reads the message with :class:`~services.smtp.wire.DataReader`, which ends it only at ``<CRLF>.<CRLF>``:
  aiosmtpd 1.4.3 also ends it at ``<LF>.<CRLF>``, the SMTP smuggling hole (CVE-2024-27305);
* a bug of ours answers ``451 4.3.0`` with the traceback in the log, never on the wire;
* STARTTLS (RFC 3207) is ours, not aiosmtpd's: aiosmtpd 1.4.3 executes under TLS the commands a
  client pipelined behind STARTTLS in clear (CVE-2024-34083, as CVE-2011-0411 was for
  Postfix). Ours throws away every byte still unread when the ``220`` goes out, then runs the
  handshake; port 465 is TLS from the first byte (RFC 8314). With TLS off in the lab, nothing
  of this shows: no STARTTLS in EHLO, no port 465.

What differs between the roles (who may send to whom, where a message goes) is a
:class:`RoleHandler`: :mod:`services.smtp.mx` and :mod:`services.smtp.mta`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import errno
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, AnyStr, Protocol

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session

from services import tls as lab_tls
from services.config import LabConfig
from services.logins import LOGIN_DELAY, LoginDelay
from services.smtp import trace
from services.smtp.session import (
    AUTH_FAILED,
    AUTH_LINE_TOO_LONG,
    MAX_BAD_COMMANDS,
    Client,
    EnvelopeChecks,
    ReplyConsult,
    ServerSession,
    TlsInfo,
    TlsOffer,
    too_many_errors,
)
from services.smtp.wire import (
    COMMAND_LINE_LIMIT,
    DATA_GO_AHEAD_CODE,
    MESSAGE_SIZE_LIMIT,
    TLS_GO_AHEAD_CODE,
    WIRE_LINE_LIMIT,
    DataReader,
    Reply,
)
from services.textwire import CRLF

log = logging.getLogger("services.smtp")

# -- limits (the wire-level ones live in services.smtp.wire, shared with the traffic decoder) ----
SIZE_PARAM_ALLOWANCE = 26  # RFC 1870 §3: " SIZE=" and 20 digits lengthen MAIL when SIZE is offered
IDLE_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command
AUTH_MECHANISMS = ("LOGIN", "PLAIN")  # aiosmtpd's own, offered where there is a login check

# aiosmtpd closes a session at its fifth unknown verb (its module constant BOGUS_LIMIT, read at
# every connection, with no parameter): five typos at a telnet prompt, and a student is cut off.
# Unknown verbs count against the same budget as every other bad command here, as in Postfix;
# aiosmtpd's own limit is set no lower, so ours is the one that ends the session.
aiosmtpd.smtp.BOGUS_LIMIT = MAX_BAD_COMMANDS

# -- replies -----------------------------------------------------------------------------------
BYE = Reply(221, "2.0.0", "Bye")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error, try again later")
NO_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")

# aiosmtpd 1.4.3 words these replies itself, without enhanced status codes. Its wording on the
# left, ours on the right; every other reply is written by this module or the role handlers.
REWORDED: Mapping[str, Reply] = {
    "500 Command line too long": Reply(500, "5.5.2",
                                       f"Line too long (RFC 5321 4.5.3.1.4: {COMMAND_LINE_LIMIT} octets)"),
    "500 Error: bad syntax": Reply(500, "5.5.2", "Syntax error, command unrecognized"),
    "500 Error: strict ASCII mode": Reply(500, "5.5.2", "Syntax error: 8-bit characters in a command"),
    "250 OK": Reply(250, "2.0.0", "OK"),  # NOOP, RSET
    "221 Bye": BYE,
    "501 Syntax: QUIT": Reply(501, "5.5.4", "Syntax: QUIT"),
    "501 Syntax: RSET": Reply(501, "5.5.4", "Syntax: RSET"),
    "502 EXPN not implemented": Reply(502, "5.5.1", "EXPN not implemented"),
    "501 Not enough value": Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"),
    "501 Too many values": Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"),
}
# aiosmtpd echoes the unknown verb; a verb may hold a bare CR, so ours does not.
_UNRECOGNIZED = re.compile(r'500 Error: command ".*" not recognized', re.DOTALL)
_GIVE_UP = "502 5.5.1 Too many unrecognized commands, goodbye."
_EXCEPTION_TEXT = ("500 Error: (", "500 Error: Cannot describe error")  # a Python exception, named

COMMAND_UNRECOGNIZED = Reply(500, "5.5.1", "Command unrecognized")


def reword(line: str, hostname: str) -> Reply | str:
    """Our reply for one of aiosmtpd's own (see :data:`REWORDED`); any other line unchanged."""
    if line == _GIVE_UP:
        return too_many_errors(hostname)
    if line.startswith(_EXCEPTION_TEXT):  # only if our handle_exception itself failed
        return LOCAL_ERROR
    if _UNRECOGNIZED.fullmatch(line):
        return COMMAND_UNRECOGNIZED
    return REWORDED.get(line, line)


# A client that takes longer than this to finish its TLS handshake is gone (asyncio's default is
# 60 s; Postfix's smtpd_starttls_timeout is 300 s, for clients across the Internet).
TLS_HANDSHAKE_TIMEOUT = 30.0

TIMEOUT_RESET_INTERVAL = 1.0  # seconds: how often a message still flowing re-arms the idle timeout
# Replies held for commands pipelined behind them (RFC 2920 §3.2) are written out at once past
# this much, whatever is still to come: a client that never reads cannot make us hoard them.
HELD_REPLIES_LIMIT = 64 * 1024


def _code(line: str) -> int:
    head = line[:3]
    return int(head) if head.isdigit() else 0


# -- the role's part -------------------------------------------------------------------------------


class RoleHandler(EnvelopeChecks, Protocol):
    """The decisions and the delivery that make a server the MTA or the MX."""

    async def accept_message(self, client: Client, sender: str, recipients: Sequence[str], message: bytes) -> Reply:
        """After DATA: make the message durable and answer 250, or answer why not.

        ``sender`` is ``""`` for the null reverse-path. Only a 250 tells the client we took it.
        """
        ...


LoginCheck = Callable[[str, str], str | None]  # (user, password) -> the account's address


@dataclass(frozen=True)
class ServerTls:
    """A role's TLS: what its SMTP listeners offer, and the context they serve it with."""

    offer: TlsOffer = TlsOffer.OFF
    context: ssl.SSLContext | None = None  # set when ``offer`` is STARTTLS
    auth_needs_tls: bool = False  # the submission port: MAIL and AUTH only under TLS (RFC 8314 §3.3)

    @classmethod
    def from_config(cls, cfg: LabConfig) -> ServerTls:
        """This host's: off as the lab says, or on with its certificate (services.tls)."""
        if not cfg.tls.enabled:
            return cls()
        if not lab_tls.tls_ready(cfg):
            log.error("TLS is on in this lab but this host has no certificate and key; STARTTLS is "
                      "answered 454 (restart the lab with labctl up --tls to issue them)")
            return cls(TlsOffer.NO_CERTIFICATE)
        try:
            context = lab_tls.server_context()
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS is on but this host's certificate cannot be used (%s); STARTTLS is answered 454", exc)
            return cls(TlsOffer.NO_CERTIFICATE)
        return cls(TlsOffer.STARTTLS, context, auth_needs_tls=cfg.tls.auth_needs_tls)


def tls_info(transport: asyncio.BaseTransport) -> TlsInfo | None:
    """What the handshake of ``transport`` agreed, if it is a TLS transport."""
    tls_object: Any = transport.get_extra_info("ssl_object")
    if tls_object is None:
        return None
    cipher = tls_object.cipher() or ("unknown", "", 0)
    return TlsInfo(version=str(tls_object.version() or "TLS"), cipher=str(cipher[0]), bits=int(cipher[2] or 0))


def received_header(cfg: LabConfig, client: Client, *, queue_id: str, recipients: Sequence[str], when: float) -> bytes:
    """The Received header this host prepends for a message from ``client`` (RFC 5321 §4.4)."""
    return trace.received(
        helo=client.helo,
        peer_ip=client.peer_ip,
        peer_name=trace.reverse_name(cfg, client.peer_ip),
        by=cfg.this.fqdn,
        with_protocol=trace.protocol(esmtp=client.esmtp, authenticated=client.authenticated,
                                     tls=client.tls is not None),
        queue_id=queue_id,
        recipients=tuple(recipients),
        when=when,
        tls=str(client.tls) if client.tls is not None else None,
    )


def accepted(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"{queue_id} Message accepted for delivery")


def storage_failure(exc: OSError, what: str) -> Reply:
    """The reply for a disk that would not take the message: nothing was acknowledged."""
    log.error("%s: %s", what, exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NO_STORAGE
    return LOCAL_ERROR


# -- the aiosmtpd protocol ---------------------------------------------------------------------------


class _QuietSession(Session):
    """aiosmtpd's Session minus the deprecation warning its own AUTH code logs on every login."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class LabSMTP(SMTP):
    """One client connection. See the module docstring for what differs from aiosmtpd."""

    line_length_limit = WIRE_LINE_LIMIT  # the stream reader's bound, for commands and text alike
    command_size_limit = COMMAND_LINE_LIMIT - len(CRLF)  # aiosmtpd measures a line without its CRLF
    # AUTH LOGIN's challenges (334, base64), as every client expects them: aiosmtpd's own are
    # "User Name\0" and "Password\0", a NUL that the de facto LOGIN draft never had.
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self,
        role: RoleHandler,
        *,
        hostname: str,
        clock: Callable[[], float] = time.time,
        size_limit: int = MESSAGE_SIZE_LIMIT,
        check_login: LoginCheck | None = None,
        faults: ReplyConsult | None = None,
        login_delay: LoginDelay = LOGIN_DELAY,
        postmaster: str | None = None,
        tls_offer: TlsOffer = TlsOffer.OFF,
        tls_context: ssl.SSLContext | None = None,
        tls_required: bool = False,
    ) -> None:
        # aiosmtpd keeps these limits in one dict shared by every connection; ours is per connection.
        self.command_size_limits: collections.defaultdict[str, int] = collections.defaultdict(
            lambda: self.command_size_limit
        )
        self._role = role
        self._check_login = check_login
        self._tls_context = tls_context
        self._session = ServerSession(hostname, role, size_limit=size_limit,
                                      auth_mechanisms=AUTH_MECHANISMS if check_login is not None else (),
                                      login_delay=login_delay, postmaster=postmaster, faults=faults,
                                      tls_offer=tls_offer, tls_required=tls_required)
        self._greeting_due = True  # aiosmtpd's first push is the 220 greeting
        self._refusal_delay: float | None = None  # a wrong password's 535 waits this long (smtp_AUTH)
        self._held: list[bytes] = []  # replies not yet written (see _send_reply)
        self._held_size = 0
        self._flush_handle: asyncio.Handle | None = None
        super().__init__(
            role,
            hostname=hostname,
            ident=f"ESMTP maillab; {trace.date(clock())}",
            data_size_limit=size_limit,
            timeout=IDLE_TIMEOUT,
            # Whether AUTH needs TLS is the session's decision (tls_required). With TLS off in the
            # lab, AUTH goes in the clear: seeing the password cross the wire in the capture is
            # one of the lab's lessons. Never on the Internet. aiosmtpd gets no TLS context:
            # STARTTLS is smtp_STARTTLS below.
            auth_require_tls=False,
            authenticator=self._check_account,
            # Without a login check no mechanism is offered (and aiosmtpd's log says so).
            auth_exclude_mechanism=None if check_login is not None else list(AUTH_MECHANISMS),
            loop=asyncio.get_running_loop(),
        )

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def peer_ip(self) -> str:
        peer: Any = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "0.0.0.0"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._session.peer_ip = self.peer_ip
        info = tls_info(transport)  # port 465: the handshake is over before the first byte of SMTP
        if info is not None:
            self._session.tls_started(info)
            log.info("%s: TLS on connect, %s", self.peer_ip, info)

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def _set_post_data_state(self) -> None:
        # aiosmtpd ends each transaction here (at connect, after RSET and DATA); ours ends too.
        self.envelope = self._create_envelope()
        self._session.rset()

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's own replies pass here, reworded (see :data:`REWORDED`); its greeting gives
        way to an injected reply (421 or 554 at connect)."""
        if self._greeting_due:
            self._greeting_due = False
            injected = self._session.connect()
            if injected is not None:
                return await self._reply(injected)
        said = reword(status.decode("ascii", "replace") if isinstance(status, bytes) else status, self.hostname)
        if isinstance(said, Reply):
            await self._reply(said)
        else:
            await self._answer(said, _code(said))

    async def _reply(self, reply: Reply) -> None:
        """Our replies: a multi-line one is rendered whole, so it leaves in one write (one TCP
        segment). Line by line, each would leave in a segment of its own (asyncio sets
        TCP_NODELAY), and a client that takes whatever one read returns for the whole reply falls
        out of step: nmap's smtp-open-relay then reads a later line of our EHLO reply as the
        answer to its RCPT and reports an open relay. Postfix and sendmail write a reply whole, too.
        """
        await self._answer(reply.render(), reply.code)

    async def _answer(self, line: str, code: int) -> None:
        """Every reply passes here: counted against the bad-command budget by the session."""
        if self._session.closed:
            return  # after 221 or 421, commands the client pipelined get no answer
        final = self._session.replied(code)
        if final is not None:
            log.warning("%s: %d bad commands, closing", self.peer_ip, MAX_BAD_COMMANDS)
            line = final.render()
        closing = self._session.closed
        await self._send_reply(line, now=closing)  # aiosmtpd closes the connection after its own 221
        if final is not None or (closing and code == 421):  # ours: RFC 5321 §3.8, close after 421
            this: Any = self  # aiosmtpd declares these attributes as None
            this._handler_coroutine.cancel()  # as aiosmtpd's QUIT does
            this.transport.close()

    async def _send_reply(self, line: str, *, now: bool = False) -> None:
        """aiosmtpd's push, except that the replies to pipelined commands leave together.

        RFC 2920 §3.2: a server should keep the replies to a group of commands and send them when
        no more input is waiting. Commands already received are handled without the session's
        task giving way to the event loop, so a flush queued with call_soon runs only once the
        task waits for input (or for the disk): the MAIL, RCPT and DATA that a pipelining client
        sends in one segment get their three replies in one segment too, where each in its own
        cost a write, a packet and a wake-up of the client per reply.
        """
        data = line.encode("utf-8" if self.enable_SMTPUTF8 else "ascii", "replace") + CRLF
        self._held.append(data)
        self._held_size += len(data)
        if now or self._held_size > HELD_REPLIES_LIMIT:
            self._flush_replies()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush_replies)
        await self._writer.drain()  # the transport's own back-pressure, as aiosmtpd's push has

    def _flush_replies(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        held, self._held, self._held_size = self._held, [], 0
        this: Any = self
        if held and this.transport is not None and not this.transport.is_closing():
            self._writer.write(b"".join(held))

    def eof_received(self) -> bool:
        # A client may send its whole session at once and half-close (`printf ... | nc host 25`):
        # every command it sent still gets processed and answered. aiosmtpd cancels the session at
        # EOF and drops what is still buffered; we only mark the end of the stream, and the reader
        # reaching it ends the session (see handle_exception).
        log.info("%s: end of input from the client", self.peer_ip)
        return bool(asyncio.StreamReaderProtocol.eof_received(self))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, asyncio.IncompleteReadError):
            # The client's input ended between commands: nothing to answer, the session is over.
            # End the session as aiosmtpd does when a connection is lost: by cancellation (its loop
            # would otherwise read the spent stream again and again without ever yielding).
            self._session.connection_lost()
            self._flush_replies()  # the answers to what the client sent before it stopped
            this: Any = self
            if this.transport is not None:
                this.transport.close()
            raise asyncio.CancelledError
        # A bug of ours: the client learns only that it may try again (RFC 5321 §4.2.1, 451).
        log.error("%s: internal error, answered %s", self.peer_ip, LOCAL_ERROR, exc_info=error)
        return LOCAL_ERROR.render()

    # -- the commands: the session decides ----------------------------------------------------

    def _greeted(self, hostname: str, *, esmtp: bool) -> None:
        session: Any = self.session
        session.host_name, session.extended_smtp = hostname, esmtp  # aiosmtpd's AUTH reads these
        if esmtp:
            self.command_size_limits["MAIL"] = self.command_size_limit + SIZE_PARAM_ALLOWANCE

    async def smtp_HELO(self, hostname: str | None) -> None:
        reply = self._session.hello(hostname, esmtp=False)
        if reply.positive and hostname:
            self._greeted(hostname, esmtp=False)
        await self._reply(reply)

    async def smtp_EHLO(self, hostname: str | None) -> None:
        reply = self._session.hello(hostname, esmtp=True)
        if reply.positive and hostname:
            self._greeted(hostname, esmtp=True)
        await self._reply(reply)

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._reply(self._session.mail(arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._reply(self._session.rcpt(arg))

    async def smtp_DATA(self, arg: str | None) -> None:
        go_ahead = self._session.data(arg)
        await self._reply(go_ahead)
        if go_ahead.code != DATA_GO_AHEAD_CODE:
            return
        reader = DataReader(self.data_size_limit)
        if not await self._read_data(reader):
            self._session.connection_lost()
            return  # the client went away mid-message: nothing was acknowledged
        sender, recipients = self._session.message_read()
        self.envelope = self._create_envelope()
        outcome = reader.outcome()
        if isinstance(outcome, Reply):
            log.info("%s: message from <%s> refused: %s", self.peer_ip, sender, outcome)
            return await self._reply(outcome)
        injected = self._session.end_of_data(sender, recipients)
        if injected is not None:
            log.info("%s: message from <%s> refused at the final dot: %s (not kept)", self.peer_ip, sender, injected)
            return await self._reply(injected)
        await self._reply(await self._role.accept_message(self._session.client, sender, recipients, outcome))

    async def _read_data(self, reader: DataReader) -> bool:
        """Feed the reader to the end of the data; False if the connection ended first."""
        last_reset = self.loop.time()
        while True:
            try:
                piece = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:  # an over-long line, in fragments
                piece = await self._reader.read(exc.consumed)
            except asyncio.IncompleteReadError:
                return False
            # A long message keeps the session alive while it flows. Not per line: re-arming the
            # timer for each line was half the cost of reading a message.
            now = self.loop.time()
            if now - last_reset >= TIMEOUT_RESET_INTERVAL:
                self._reset_timeout()
                last_reset = now
            if reader.feed(piece):
                return True

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self._reply(self._session.vrfy(arg))

    async def smtp_HELP(self, arg: str | None) -> None:
        await self._reply(self._session.help(arg))

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        reply = self._session.starttls(arg)
        if reply.code != TLS_GO_AHEAD_CODE or self._tls_context is None:
            return await self._reply(reply)
        await self._reply(reply)
        self._flush_replies()  # the 220 (and any reply held before it) in clear, before the handshake
        await self._writer.drain()
        # From here to the handshake, nothing awaits: no byte can arrive between the clearing
        # and the transport handing its input to TLS (loop.start_tls does it before it waits).
        self._discard_cleartext()
        this: Any = self
        try:
            transport = await self.loop.start_tls(this.transport, self, self._tls_context, server_side=True,
                                                  ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
            if transport is None:  # the connection closed during the handshake
                raise ConnectionResetError("connection closed during the handshake")
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("%s: TLS handshake after STARTTLS failed: %s", self.peer_ip, exc or type(exc).__name__)
            self._session.connection_lost()
            this._timeout_handle.cancel()
            raise asyncio.CancelledError from exc  # the session is over, as when the client goes
        this.transport = transport
        self._writer._transport = transport  # type: ignore[attr-defined]
        self._reader._transport = transport  # type: ignore[attr-defined]
        self._replace_writer(self._writer)  # type: ignore[attr-defined]
        # RFC 3207 §4.2: forget what the client said in clear; aiosmtpd's copy of it too.
        peer = this.session.peer
        this.session = self._create_session()
        this.session.peer, this.session.ssl = peer, transport.get_extra_info("ssl_object")
        self.command_size_limits.pop("MAIL", None)
        self.envelope = self._create_envelope()
        info = tls_info(transport) or TlsInfo("TLS", "unknown", 0)
        self._session.tls_started(info)
        log.info("%s: STARTTLS, %s", self.peer_ip, info)

    def _discard_cleartext(self) -> None:
        """Throw away what the client sent after STARTTLS, before TLS (RFC 3207 §4.2: the client
        must wait for the 220; a man in the middle may have added it, CVE-2011-0411)."""
        reader: Any = self._reader
        pending = bytes(reader._buffer)
        if pending:
            reader._buffer.clear()
            reader._maybe_resume_transport()
            log.warning("%s: %d octets sent in clear after STARTTLS, before TLS, discarded unread: %r",
                        self.peer_ip, len(pending), pending[:80])

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> aiosmtpd.smtp._Missing | bytes:
        """aiosmtpd's, but for a reply line longer than the stream's limit: aiosmtpd reads it with
        readline(), whose ValueError became "451 internal error" and a traceback (found by the fuzz
        suite at 20,000 cases). Such a line is read to its end and refused as RFC 4954 §4 says."""
        data = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (base64.b64encode(data) if encode_to_b64 else data))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # the client went: what came is the answer
            line = exc.partial
        except asyncio.LimitOverrunError as exc:
            await self._discard_line(exc.consumed)
            await self._reply(AUTH_LINE_TOO_LONG)
            return aiosmtpd.smtp.MISSING
        blob = line.strip()
        if blob == b"*":  # the client gives up (RFC 4954 §4)
            await self.push("501 5.7.0 Auth aborted")
            return aiosmtpd.smtp.MISSING
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return aiosmtpd.smtp.MISSING

    async def _discard_line(self, consumed: int) -> None:
        """Read and drop the rest of an over-long line, to its LF (or the end of the connection)."""
        while True:
            await self._reader.read(consumed)
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError as exc:
                consumed = exc.consumed

    async def smtp_AUTH(self, arg: str | None) -> None:
        refusal = self._session.auth()
        if refusal is not None:
            return await self._reply(refusal)
        self._refusal_delay = None
        await super().smtp_AUTH(arg)
        if self._refusal_delay is not None:
            # This session only waits; the other clients are served meanwhile.
            await asyncio.sleep(self._refusal_delay)
            await self._reply(AUTH_FAILED)

    def _check_account(
        self, server: SMTP, session: Session, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self._check_login is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        account = self._check_login(user, auth_data.password.decode("utf-8", "surrogateescape"))
        if account is None:
            self._refusal_delay = self._session.auth_failed()
            log.info("%s: AUTH %s as %r failed, answering in %.0f s", self.peer_ip, mechanism, user,
                     self._refusal_delay)
            return AuthResult(success=False, handled=True)  # smtp_AUTH answers, after the delay
        log.info("%s: AUTH %s as %s", self.peer_ip, mechanism, account)
        self._session.authenticated(account)
        return AuthResult(success=True, auth_data=account)


# -- listeners ---------------------------------------------------------------------------------------


async def listen(
    role: RoleHandler,
    *,
    hostname: str,
    host: str,
    port: int,
    clock: Callable[[], float] = time.time,
    size_limit: int = MESSAGE_SIZE_LIMIT,
    check_login: LoginCheck | None = None,
    faults: ReplyConsult | None = None,
    login_delay: LoginDelay = LOGIN_DELAY,
    postmaster: str | None = None,
    tls: ServerTls = ServerTls(),
    tls_required: bool = False,
    implicit_tls: bool = False,
) -> asyncio.Server:
    """Serve SMTP on ``host``:``port`` (0: any free port) with a :class:`LabSMTP` per connection;
    ``faults``: the injected replies every connection consults (one per server process, so that
    "the first N tries" counts every listener's). ``tls``: STARTTLS, if offered; ``tls_required``:
    MAIL and AUTH only under it; ``implicit_tls``: TLS from the first byte (port 465)."""
    if implicit_tls and tls.context is None:
        raise ValueError("implicit TLS needs a server context")  # our bug: start_mta checks first
    offer = TlsOffer.IMPLICIT if implicit_tls else tls.offer
    required = tls_required and offer is TlsOffer.STARTTLS

    def connection() -> LabSMTP:
        return LabSMTP(role, hostname=hostname, clock=clock, size_limit=size_limit, check_login=check_login,
                       login_delay=login_delay, postmaster=postmaster, faults=faults,
                       tls_offer=offer, tls_context=tls.context, tls_required=required)

    loop = asyncio.get_running_loop()
    if implicit_tls:
        server = await loop.create_server(connection, host, port, ssl=tls.context,
                                          ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
    else:
        server = await loop.create_server(connection, host, port)
    auth = ", AUTH PLAIN LOGIN" if check_login is not None else ""
    if required and check_login is not None:
        auth += " after STARTTLS"
    how = {TlsOffer.STARTTLS: ", STARTTLS", TlsOffer.IMPLICIT: ", TLS on connect"}.get(offer, "")
    log.info("SMTP server %s listening on %s%s%s", hostname, _where(server), how, auth)
    return server


def _where(server: asyncio.Server) -> str:
    return ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)


@dataclass(frozen=True)
class Listeners:
    """The servers one role runs, by name ("smtp", "submission", "pop3")."""

    servers: Mapping[str, asyncio.Server]

    def port(self, name: str) -> int:
        """The port ``name`` listens on (the tests bind port 0 and ask)."""
        port: int = self.servers[name].sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        for server in self.servers.values():
            server.close()
        for server in self.servers.values():
            await server.wait_closed()

