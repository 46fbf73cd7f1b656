"""The MTA's SMTP client: sessions to the MX hosts, on the event loop, kept for the next message.

asyncio streams rather than smtplib in worker threads: with eight deliveries in flight, eight
threads each blocking in send and recv fought the event loop for the GIL (a few hundred futex
calls per relayed message, most of the MTA's CPU). Here a session is a reader and a writer on
the loop, and a transaction costs two round trips with PIPELINING (RFC 2920): MAIL, every RCPT
and DATA in one write, then the message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from services import textwire
from services.errors import PeerError
from services.smtp import wire
from services.smtp.relay import SmtpReply, Target

# RFC 5321 §4.5.3.2 gives the real client timeouts: 5 minutes for the greeting, MAIL and
# RCPT, 2 for the DATA command, 3 per data block and 10 for the final reply. A lab wants a
# dead MX noticed while the student watches, so ours are seconds; nothing in the lab is slow.
CONNECT_TIMEOUT = 5.0  # TCP connect and the 220 greeting (§4.5.3.2.1)
COMMAND_TIMEOUT = 10.0  # EHLO, MAIL, RCPT, DATA, RSET (§4.5.3.2.2-4)
DATA_TIMEOUT = 30.0  # sending the message and waiting for its final reply (§4.5.3.2.5-6)
QUIT_TIMEOUT = 2.0  # the goodbye is a courtesy: nobody waits long for it
REPLY_LINE_LIMIT = 64 * 1024  # far past §4.5.3.1.5's 512; a longer line is a broken server


@dataclass
class HostResult:
    """What one SMTP session did: each recipient's deciding reply, or why there was none."""

    replies: dict[str, SmtpReply] = field(default_factory=dict)
    error: str = ""
    error_status: str = "4.4.1"  # RFC 3463: no answer from host; 4.4.2 once the session broke
    mail_code: int | None = None  # the reply to MAIL; None: the session failed before it


class Unavailable(PeerError):
    """The host could not be talked to at all (refused, timed out, bad greeting)."""


class SessionBroken(PeerError, ConnectionError):
    """The server closed the connection, or sent something that is no SMTP reply."""


def describe(exc: BaseException) -> str:
    """A failure as the queue shows it: "connection refused", "timed out", ..."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, SessionBroken):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _reply(code: int, text: str) -> SmtpReply:
    return SmtpReply(code, " ".join(text.split()))


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
            code, text = await session.reply(CONNECT_TIMEOUT)
            if code != 220:
                # 554 here means "no SMTP service" (RFC 5321 §3.1): try the next MX.
                raise Unavailable(f"greeted with {_reply(code, text)}")
            code, text = await session.command(f"EHLO {helo}")
            if code == 250:
                for line in text.split("\n")[1:]:
                    keyword, _, params = line.strip().partition(" ")
                    session.extensions[keyword.upper()] = params
            else:
                code, text = await session.command(f"HELO {helo}")  # §3.2: an old server may know only HELO
                if code != 250:
                    raise Unavailable(f"refused HELO: {_reply(code, text)}")
        except (OSError, TimeoutError, Unavailable) as exc:
            session.abort()
            raise exc if isinstance(exc, Unavailable) else Unavailable(describe(exc)) from exc
        return session

    # -- the wire ----------------------------------------------------------------------------

    async def reply(self, timeout: float) -> tuple[int, str]:
        """The next reply: its code and its text, the lines of a multi-line reply joined by LF."""
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
                return line.code, "\n".join(lines)

    async def _send(self, data: bytes, timeout: float) -> None:
        self._writer.write(data)
        await asyncio.wait_for(self._writer.drain(), timeout)

    async def command(self, line: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        await self._send(line.encode("utf-8") + textwire.CRLF, timeout)
        return await self.reply(timeout)

    # -- a transaction -----------------------------------------------------------------------

    async def transaction(self, sender: str, recipients: Sequence[str], data: bytes, out: HostResult) -> bool:
        """MAIL, RCPT..., DATA, filling ``out.replies``; whether the session may carry another
        message (no 421, RFC 5321 §3.8). Raises OSError or TimeoutError if the session breaks."""
        options = []
        if "SIZE" in self.extensions:
            options.append(f"SIZE={len(data)}")  # RFC 1870: lets the server refuse before DATA
        if not data.isascii() and "8BITMIME" in self.extensions:
            options.append("BODY=8BITMIME")  # RFC 6152
        if not all(a.isascii() for a in (sender, *recipients)) and "SMTPUTF8" in self.extensions:
            options.append("SMTPUTF8")  # RFC 6531; without it the server refuses the address
        mail = f"MAIL FROM:<{sender}>" + "".join(f" {o}" for o in options)
        rcpts = [f"RCPT TO:<{r}>" for r in recipients]
        if "PIPELINING" in self.extensions:
            return await self._pipelined(mail, rcpts, recipients, data, out)
        code, text = await self.command(mail)
        out.mail_code = code
        if code != 250:
            out.replies.update({r: _reply(code, text) for r in recipients})
            return code != 421
        accepted = []
        for rcpt, command in zip(recipients, rcpts, strict=True):
            code, text = await self.command(command)
            if code in (250, 251):
                accepted.append(rcpt)  # not settled yet: the reply after the data decides
            else:
                out.replies[rcpt] = _reply(code, text)
                if code == 421:
                    return False
        if not accepted:
            code, _ = await self.command("RSET")
            return code != 421
        code, text = await self.command("DATA")
        if code != wire.DATA_GO_AHEAD_CODE:
            out.replies.update({r: _reply(code, text) for r in accepted})
            return code != 421
        return await self._data(data, accepted, out)

    async def _pipelined(self, mail: str, rcpts: Sequence[str], recipients: Sequence[str], data: bytes,
                         out: HostResult) -> bool:
        """MAIL, every RCPT and DATA in one write; the replies come back in order (RFC 2920).

        The data follow only after a 354 and only if some recipient was accepted (§3.1). A 354
        with no recipient accepted (a server may give it) gets an empty message ended at once,
        as the RFC says, and its reply is ignored.
        """
        await self._send("".join(f"{c}\r\n" for c in (mail, *rcpts, "DATA")).encode("utf-8"), COMMAND_TIMEOUT)
        code, text = await self.reply(COMMAND_TIMEOUT)
        out.mail_code = code
        closing = code == 421
        accepted = []
        for rcpt in recipients:
            rcode, rtext = await self.reply(COMMAND_TIMEOUT)
            if code != 250:
                out.replies[rcpt] = _reply(code, text)  # the sender was refused: every recipient's answer
            elif rcode in (250, 251):
                accepted.append(rcpt)
            else:
                out.replies[rcpt] = _reply(rcode, rtext)
            closing = closing or rcode == 421
        dcode, dtext = await self.reply(COMMAND_TIMEOUT)
        closing = closing or dcode == 421
        if dcode != wire.DATA_GO_AHEAD_CODE:
            out.replies.update({r: _reply(dcode, dtext) for r in accepted})
            return not closing
        if not accepted:
            await self._send(b".\r\n", DATA_TIMEOUT)
            await self.reply(DATA_TIMEOUT)
            return not closing
        return await self._data(data, accepted, out) and not closing

    async def _data(self, data: bytes, accepted: Sequence[str], out: HostResult) -> bool:
        await self._send(textwire.stuff(data), DATA_TIMEOUT)
        code, text = await self.reply(DATA_TIMEOUT)
        final = _reply(code, text)
        out.replies.update({r: final for r in accepted})
        return code != 421

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
        out = HostResult()
        try:
            reusable = await session.transaction(sender, target.recipients, data, out)
        except (OSError, TimeoutError) as exc:
            session.abort()
            out.error, out.error_status = describe(exc), "4.4.2"
            return out
        except BaseException:  # cancelled mid-transaction: the session's state is unknown
            session.abort()
            raise
        if reusable:
            self._idle.setdefault(target.address, []).append(session)
        else:
            session.abort()  # after a 421 the server is closing: no QUIT to wait for
        return out

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
