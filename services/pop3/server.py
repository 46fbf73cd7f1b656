"""The POP3 server: a thin asyncio shell around :class:`services.pop3.core.Session`.

The shell moves bytes and performs the session's actions; every protocol decision is in the core.
It reads in bounded chunks (the core bounds its own line buffer), enforces the idle timeout, waits
out login delays without holding up other clients, and logs one line per command. A peer that
hangs up or stalls costs a log line; a bug of ours costs that one session a generic ``-ERR`` and
the log a traceback; neither reaches another client.

The MX and MTA roles call :func:`start` next to their SMTP servers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services import config
from services.accounts import AccountAuthenticator
from services.actions import Action, Close, Log, Send, Wait
from services.config import LabConfig
from services.mailstore import Maildir, mailbox_dir
from services.pop3.core import DEFAULT_LIMITS, Limits, Session

log = logging.getLogger("services.pop3")

READ_CHUNK = 4096  # one socket read; a few pipelined command lines (each at most 255 octets)


class _Client:
    """One connection: feed the session, perform its actions, until it or the peer closes."""

    def __init__(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def run(self) -> None:
        timeout = self.session.limits.idle_timeout
        log.info("pop3 %s connected", self.peer)
        try:
            await self._perform(self.session.start())
            while not self.session.closed:
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
                except TimeoutError:
                    await self._perform(self.session.timed_out())
                    break
                if not data:
                    break
                self.session.feed(data)
                while actions := self.session.next_actions():
                    await self._perform(actions)
        except (ConnectionError, TimeoutError) as exc:  # reset by the peer, or it stopped reading
            log.info("%s connection lost: %s", self.peer, exc or type(exc).__name__)
        except Exception:
            log.exception("%s internal error in the POP3 session", self.peer)
            try:
                await self._perform(self.session.internal_error())
            except Exception as exc:  # noqa: BLE001 - the peer may be gone too; the log has the cause
                log.info("%s could not report the internal error: %s", self.peer, exc)
        finally:
            for action in self.session.connection_lost():
                if isinstance(action, Log):
                    self._log(action)
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass  # already reset; nothing left to flush

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(data):
                    self.writer.write(data)
                    # A client that never reads must not pin us: the idle timeout covers writes too.
                    await asyncio.wait_for(self.writer.drain(), self.session.limits.idle_timeout)
                case Wait(seconds):
                    await asyncio.sleep(seconds)  # this task only; other clients carry on
                case Log():
                    self._log(action)
                case Close():
                    return

    def _log(self, action: Log) -> None:
        who = self.session.address or "-"
        log.log(action.level, "pop3 %s %s %s", self.peer, who, action.text)


async def start(
    cfg: LabConfig,
    *,
    mail_root: Path = config.MAIL_DIR,
    host: str = "0.0.0.0",
    port: int = 110,
    limits: Limits = DEFAULT_LIMITS,
) -> asyncio.Server:
    """Serve POP3 for the mailboxes of ``cfg.local_domains`` under ``mail_root``; returns at once."""
    hostname = cfg.this.fqdn
    authenticator = AccountAuthenticator(cfg.local_domains)

    def open_mailbox(address: str) -> Maildir:
        return Maildir(mailbox_dir(mail_root, address))

    async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(hostname, authenticator, open_mailbox, limits)
        await _Client(session, reader, writer).run()

    server = await asyncio.start_server(serve_client, host, port)
    bound = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    domains = ", ".join(d.name for d in cfg.local_domains) or "no domains"
    log.info("POP3 server %s listening on %s for %s", hostname, bound, domains)
    return server
