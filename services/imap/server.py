"""The IMAP server: a thin asyncio shell around :class:`services.imap.core.Session`.

The shell moves bytes and performs the session's actions; every protocol decision is in the core.
It reads in bounded chunks (the core's parser bounds its own buffers), enforces the autologout
timer, waits out login delays without holding up other clients, and while a client idles
(RFC 2177) asks the session every ``poll_interval`` what changed in its mailbox: a look at the
mtimes of ``new/`` and ``cur/``, so that a delivery reaches the client within a second.

The MX and MTA roles start it on port 143 next to POP3 on 110, on the same Maildirs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from services import config
from services.accounts import AccountAuthenticator
from services.actions import Close, Log, Send, Wait
from services.config import LabConfig
from services.imap.core import DEFAULT_LIMITS, IdleStart, IdleStop, ImapAction, Limits, Session
from services.imap.store import Mailboxes
from services.mailstore import mailbox_dir

log = logging.getLogger("services.imap")

READ_CHUNK = 65536  # one socket read: an APPENDed message arrives in pieces this big
PORT = 143  # RFC 3501 §2.1


class _Client:
    """One connection: feed the session, perform its actions, until it or the peer closes."""

    def __init__(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.idle_interval: float | None = None  # polling the mailbox for an IDLE client
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def run(self) -> None:
        log.info("imap %s connected", self.peer)
        try:
            await self._perform(self.session.start())
            while not self.session.closed:
                data = await self._read()
                if data is None:
                    await self._perform(self.session.timed_out())
                    break
                if not data:
                    break
                self.session.feed(data)
                while actions := self.session.next_actions():
                    await self._perform(actions)
        except (ConnectionError, TimeoutError) as exc:
            log.info("imap %s connection lost: %s", self.peer, exc or type(exc).__name__)
        except Exception:
            log.exception("imap %s internal error in the IMAP session", self.peer)
            try:
                await self._perform(self.session.internal_error())
            except Exception as exc:  # noqa: BLE001 - the peer may be gone too; the log has the cause
                log.info("imap %s could not report the internal error: %s", self.peer, exc)
        finally:
            for action in self.session.connection_lost():
                if isinstance(action, Log):
                    self._log(action)
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _read(self) -> bytes | None:
        """The next bytes from the client; None once the autologout timer ran out. While the
        client idles, the mailbox is polled between reads (cancelling a StreamReader.read loses
        nothing: what arrived stays buffered)."""
        deadline = time.monotonic() + self.session.limits.idle_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            wait = left if self.idle_interval is None else min(left, self.idle_interval)
            try:
                return await asyncio.wait_for(self.reader.read(READ_CHUNK), wait)
            except TimeoutError:
                if self.idle_interval is not None:
                    await self._perform(self.session.poll())

    async def _perform(self, actions: list[ImapAction]) -> None:
        for action in actions:
            match action:
                case Send(data):
                    self.writer.write(data)
                    await asyncio.wait_for(self.writer.drain(), self.session.limits.idle_timeout)
                case Wait(seconds):
                    await asyncio.sleep(seconds)
                case Log():
                    self._log(action)
                case IdleStart(interval):
                    self.idle_interval = interval
                case IdleStop():
                    self.idle_interval = None
                case Close():
                    return

    def _log(self, action: Log) -> None:
        log.log(action.level, "imap %s %s %s", self.peer, self.session.address or "-", action.text)


async def start(
    cfg: LabConfig,
    *,
    mail_root: Path = config.MAIL_DIR,
    host: str = "0.0.0.0",
    port: int = PORT,
    limits: Limits = DEFAULT_LIMITS,
) -> asyncio.Server:
    """Serve IMAP for the mailboxes of ``cfg.local_domains`` under ``mail_root``; returns at once."""
    hostname = cfg.this.fqdn
    authenticator = AccountAuthenticator(cfg.local_domains)

    def open_mailboxes(address: str) -> Mailboxes:
        return Mailboxes(mailbox_dir(mail_root, address))

    async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(hostname, authenticator, open_mailboxes, limits)
        await _Client(session, reader, writer).run()

    server = await asyncio.start_server(serve_client, host, port)
    bound = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    domains = ", ".join(d.name for d in cfg.local_domains) or "no domains"
    log.info("IMAP server %s listening on %s for %s", hostname, bound, domains)
    return server
