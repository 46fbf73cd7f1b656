"""The MTA's SMTP client: sessions to the MX hosts, on the event loop, kept for the next message.

asyncio streams rather than smtplib in worker threads: with eight deliveries in flight, eight
threads each blocking in send and recv fought the event loop for the GIL (a few hundred futex
calls per relayed message, most of the MTA's CPU). Here a session is a reader and a writer on
the loop, and a transaction costs two round trips with PIPELINING (RFC 2920): MAIL, every RCPT
and DATA in one write, then the message. What to send and what the replies mean is
:class:`~services.smtp.transaction.Transaction`'s to say; this module moves the bytes.

STARTTLS to the next hop (RFC 3207) follows the lab's ``tls.relay``, as Postfix's
``smtp_tls_security_level`` does: "may" starts TLS when the MX offers it, without checking the
certificate, and if the handshake fails tries that MX again at once in clear (saying why in the
log); "verify" requires TLS and a certificate that the lab CA signed for the MX's host name, or
the attempt fails, transiently, with the reason; "none" never starts TLS (:class:`RelayTls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from services import textwire
from services import tls as lab_tls
from services.config import LabConfig
from services.errors import PeerError
from services.smtp import wire
from services.smtp.relay import Target
from services.smtp.transaction import HostResult, Transaction
from services.smtp.wire import Reply

# RFC 5321 §4.5.3.2 gives the real client timeouts: 5 minutes for the greeting, MAIL and
# RCPT, 2 for the DATA command, 3 per data block and 10 for the final reply. A lab wants a
# dead MX noticed while the student watches, so ours are seconds; nothing in the lab is slow.
CONNECT_TIMEOUT = 5.0  # TCP connect and the 220 greeting (§4.5.3.2.1)
COMMAND_TIMEOUT = 10.0  # EHLO, MAIL, RCPT, DATA, RSET (§4.5.3.2.2-4)
DATA_TIMEOUT = 30.0  # sending the message and waiting for its final reply (§4.5.3.2.5-6)
QUIT_TIMEOUT = 2.0  # the goodbye is a courtesy: nobody waits long for it
REPLY_LINE_LIMIT = 64 * 1024  # far past §4.5.3.1.5's 512; a longer line is a broken server
TLS_HANDSHAKE_TIMEOUT = 10.0  # a lab MX finishes its handshake in milliseconds
CRYPTO_FAILURE = "4.7.5"  # RFC 3463 X.7.5: cryptographic failure (relay=verify without TLS or trust)

log = logging.getLogger("services.smtp.client")

MAY, VERIFY, NONE = "may", "verify", "none"  # the lab's tls.relay, Postfix's smtp_tls_security_level


@dataclass(frozen=True)
class RelayTls:
    """The relay's TLS to the next hop: ``policy`` (``tls.relay``) and the context it uses."""

    policy: str = NONE
    context: ssl.SSLContext | None = None  # "may": no verification; "verify": the lab CA and the name

    @classmethod
    def from_config(cls, cfg: LabConfig) -> RelayTls:
        """As the lab says: never with TLS off; else one context for every session of the worker."""
        policy = cfg.tls.relay if cfg.tls.enabled else NONE
        if policy not in (MAY, VERIFY):
            return cls()
        return cls(policy, lab_tls.client_context(verify=policy == VERIFY))

    @property
    def wanted(self) -> bool:
        return self.policy in (MAY, VERIFY) and self.context is not None


class Unavailable(PeerError):
    """The host could not be talked to at all (refused, timed out, bad greeting)."""


class SessionBroken(PeerError, ConnectionError):
    """The server closed the connection, or sent something that is no SMTP reply."""


class TlsFailed(Unavailable):
    """STARTTLS was agreed but no TLS came of it (the handshake failed, or the certificate did
    not verify); the connection is gone. With relay=may the MX is tried again in clear."""


class TlsRequired(Unavailable):
    """relay=verify, and the MX offers no STARTTLS or refuses it: the message waits (RFC 3463 4.7.5)."""


def describe_tls(exc: BaseException) -> str:
    """Why a TLS handshake failed, in words: the verification error, or OpenSSL's reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {describe(exc)}"


# What a failed connect means on the lab's one network, in the words of the queue and the log. A
# host switched off never answers ARP, so the kernel gives up before a SYN leaves (EHOSTUNREACH,
# after about 3 s of asking); one whose port is closed answers the SYN with RST.
CONNECT_ERRORS = {
    errno.EHOSTUNREACH: "host unreachable (no answer to ARP: the host is down or off the network)",
    errno.ENETUNREACH: "network unreachable (no route to that network)",
    errno.ECONNREFUSED: "connection refused",
}


def describe(exc: BaseException) -> str:
    """A failure as the queue shows it: "connection refused", "timed out", "host unreachable ..."."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno in CONNECT_ERRORS:
        return CONNECT_ERRORS[exc.errno]
    if isinstance(exc, SessionBroken):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class Session:
    """One open SMTP session to one server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.extensions: dict[str, str] = {}  # EHLO keyword (upper case) -> its parameters
        self.tls = ""  # the TLS version and cipher, once STARTTLS succeeded

    @classmethod
    async def open(cls, address: str, port: int, helo: str, *, tls: RelayTls = RelayTls(),
                   server_name: str = "") -> Session:
        """Connect, take the greeting, say EHLO (or HELO), start TLS as ``tls`` says, checking
        the certificate against ``server_name`` for "verify"; raises :class:`Unavailable`
        (:class:`TlsFailed` if the TLS handshake failed)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, limit=REPLY_LINE_LIMIT), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(describe(exc)) from exc
        session = cls(reader, writer)
        try:
            greeting = await session.reply(CONNECT_TIMEOUT)
            if greeting.code != 220:
                # 554 here means "no SMTP service" (RFC 5321 §3.1): try the next MX.
                raise Unavailable(f"greeted with {greeting}")
            await session._hello(helo)
            if tls.wanted:
                await session._starttls(tls, helo, server_name or address)
        except (OSError, TimeoutError, Unavailable) as exc:
            session.abort()
            raise exc if isinstance(exc, Unavailable) else Unavailable(describe(exc)) from exc
        return session

    async def _hello(self, helo: str) -> None:
        ehlo = await self.command(f"EHLO {helo}")
        self.extensions = {}
        if ehlo.code == 250:
            for line in ehlo.text.split("\n")[1:]:
                keyword, _, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params
        else:
            hello = await self.command(f"HELO {helo}")  # §3.2: an old server may know only HELO
            if hello.code != 250:
                raise Unavailable(f"refused HELO: {hello}")

    async def _starttls(self, tls: RelayTls, helo: str, server_name: str) -> None:
        """STARTTLS, the handshake, and EHLO again (RFC 3207 §4.2: the server forgot the first)."""
        verify = tls.policy == VERIFY
        if "STARTTLS" not in self.extensions:
            if verify:
                raise TlsRequired("offers no STARTTLS, and the lab's relay=verify requires TLS")
            return  # "may": clear, as before
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            if verify:
                raise TlsRequired(f"refused STARTTLS ({reply}), and the lab's relay=verify requires TLS")
            log.info("%s refused STARTTLS (%s); relay=may: going on in clear", server_name, reply)
            return
        reader: Any = self._reader
        if reader._buffer:  # a reply injected behind the 220, in clear: never read it as the server's
            raise TlsFailed("the server sent data after its 220 to STARTTLS, before TLS (injection?)")
        assert tls.context is not None  # tls.wanted
        try:
            await self._writer.start_tls(tls.context, server_hostname=server_name,
                                         ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            raise TlsFailed(describe_tls(exc)) from exc
        tls_object: Any = self._writer.get_extra_info("ssl_object")
        if tls_object is not None:
            self.tls = f"{tls_object.version()} {tls_object.cipher()[0]}"
        await self._hello(helo)

    # -- the wire ----------------------------------------------------------------------------

    async def reply(self, timeout: float) -> Reply:
        """The next reply, all its lines."""
        lines = []
        while True:
            try:
                raw = await asyncio.wait_for(self._reader.readline(), timeout)
            except ValueError as exc:  # a line past REPLY_LINE_LIMIT
                raise SessionBroken("the server sent an over-long reply line") from exc
            if not raw.endswith(b"\n"):
                raise SessionBroken("connection closed by the server")
            line = wire.parse_reply_line(raw.rstrip(b"\r\n"))
            if line is None:
                raise SessionBroken(f"the server sent no SMTP reply: {raw[:60]!r}")
            lines.append(line.text)
            if line.last:
                return Reply.parse(line.code, lines)

    async def _send(self, data: bytes, timeout: float) -> None:
        self._writer.write(data)
        await asyncio.wait_for(self._writer.drain(), timeout)

    async def command(self, line: str, timeout: float = COMMAND_TIMEOUT) -> Reply:
        await self._send(line.encode("utf-8") + textwire.CRLF, timeout)
        return await self.reply(timeout)

    # -- a transaction -----------------------------------------------------------------------

    async def transaction(self, txn: Transaction) -> None:
        """Run ``txn`` to its end (:attr:`Transaction.done`). Raises OSError or TimeoutError if
        the session breaks; ``txn.result`` then holds what was settled before."""
        await self._send(txn.start(), COMMAND_TIMEOUT)
        while not txn.done:
            reply = await self.reply(DATA_TIMEOUT if txn.in_data else COMMAND_TIMEOUT)
            data = txn.receive(reply)
            if data:
                await self._send(data, DATA_TIMEOUT if txn.in_data else COMMAND_TIMEOUT)

    # -- the end -----------------------------------------------------------------------------

    async def quit(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, SessionBroken):
            await self.command("QUIT", QUIT_TIMEOUT)
        self.abort()

    def abort(self) -> None:
        self._writer.transport.abort()


class Connections:
    """SMTP sessions kept open across the messages of one delivery pass, by server address."""

    def __init__(self, helo_name: str, port: int, tls: RelayTls = RelayTls()) -> None:
        self._helo = helo_name
        self._port = port
        self._tls = tls
        self._idle: dict[str, list[Session]] = {}
        self._clear_only: set[str] = set()  # "may": addresses whose handshake failed in this pass

    async def transact(self, target: Target, sender: str, data: bytes) -> HostResult:
        """Offer the message to ``target`` for ``target.recipients``."""
        idle = self._idle.get(target.address)
        if idle:
            # No RSET first: a transaction ended by the reply to the data leaves the session
            # ready for the next MAIL (RFC 5321 §4.1.1.4). A probe per message cost a round
            # trip on both sides. If the server has dropped the idle session meanwhile (no
            # reply to MAIL, or 421), nothing was accepted: a fresh session takes the message.
            out = await self._offer(idle.pop(), target, sender, data)
            if out.mail_code not in (None, 421):
                return out
        try:
            session = await self._open(target)
        except TlsFailed as exc:  # only with relay=verify: "may" tried again in clear
            return HostResult(error=f"{exc}; the lab's relay=verify requires TLS", error_status=CRYPTO_FAILURE)
        except TlsRequired as exc:
            return HostResult(error=str(exc), error_status=CRYPTO_FAILURE)
        except Unavailable as exc:
            return HostResult(error=str(exc))
        return await self._offer(session, target, sender, data)

    async def _open(self, target: Target) -> Session:
        """A new session to ``target``, with TLS as the lab says; "may" falls back to clear."""
        tls = self._tls if target.address not in self._clear_only else RelayTls()
        try:
            return await Session.open(target.address, self._port, self._helo, tls=tls,
                                      server_name=target.host.exchange)
        except TlsFailed as exc:
            if tls.policy != MAY:
                raise
            # Postfix's "may" does the same: a failed handshake is no reason not to deliver.
            log.warning("%s:%d: %s; relay=may: trying again in clear", target.relay, self._port, exc)
            self._clear_only.add(target.address)
            return await Session.open(target.address, self._port, self._helo)

    async def _offer(self, session: Session, target: Target, sender: str, data: bytes) -> HostResult:
        """One transaction on an open session, which is kept for the next if still good."""
        txn = Transaction(sender, target.recipients, data, session.extensions)
        try:
            await session.transaction(txn)
        except (OSError, TimeoutError) as exc:
            txn.broken(describe(exc))
        except BaseException:  # cancelled mid-transaction: the session's state is unknown
            session.abort()
            raise
        if txn.reusable:
            self._idle.setdefault(target.address, []).append(session)
        else:
            session.abort()  # after a 421 the server is closing: no QUIT to wait for
        return txn.result

    def _take_all(self) -> list[Session]:
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        return sessions

    async def close(self) -> None:
        """QUIT every idle session."""
        await asyncio.gather(*(s.quit() for s in self._take_all()))

    def abort(self) -> None:
        """Drop every session without a word (the worker is being cancelled)."""
        for session in self._take_all():
            session.abort()
