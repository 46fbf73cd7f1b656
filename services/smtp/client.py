"""The MTA's SMTP client: sessions to the MX hosts, on the event loop, kept for the next message.

asyncio streams rather than smtplib in worker threads: with eight deliveries in flight, eight
threads each blocking in send and recv fought the event loop for the GIL (a few hundred futex
calls per relayed message, most of the MTA's CPU). Here a session is a reader and a writer on
the loop, and a transaction costs two round trips with PIPELINING (RFC 2920): MAIL, every RCPT
and DATA in one write, then the message. What to send and what the replies mean is
:class:`~services.smtp.transaction.Transaction`'s to say; this module moves the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno

from services import textwire
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


class Unavailable(PeerError):
    """The host could not be talked to at all (refused, timed out, bad greeting)."""


class SessionBroken(PeerError, ConnectionError):
    """The server closed the connection, or sent something that is no SMTP reply."""


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

    @classmethod
    async def open(cls, address: str, port: int, helo: str) -> Session:
        """Connect, take the greeting, say EHLO (or HELO); raises :class:`Unavailable`."""
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
            ehlo = await session.command(f"EHLO {helo}")
            if ehlo.code == 250:
                for line in ehlo.text.split("\n")[1:]:
                    keyword, _, params = line.strip().partition(" ")
                    session.extensions[keyword.upper()] = params
            else:
                hello = await session.command(f"HELO {helo}")  # §3.2: an old server may know only HELO
                if hello.code != 250:
                    raise Unavailable(f"refused HELO: {hello}")
        except (OSError, TimeoutError, Unavailable) as exc:
            session.abort()
            raise exc if isinstance(exc, Unavailable) else Unavailable(describe(exc)) from exc
        return session

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

    def __init__(self, helo_name: str, port: int) -> None:
        self._helo = helo_name
        self._port = port
        self._idle: dict[str, list[Session]] = {}

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
            session = await Session.open(target.address, self._port, self._helo)
        except Unavailable as exc:
            return HostResult(error=str(exc))
        return await self._offer(session, target, sender, data)

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
