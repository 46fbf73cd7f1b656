"""What the POP3 and IMAP servers' asyncio shells share: a connection driven by a pure session core.

A :class:`Connection` moves bytes and performs the session's actions (:mod:`services.actions`);
every protocol decision is in the core. It reads in bounded chunks (each core bounds its own
buffers), enforces the autologout timer on reads and writes, waits out login delays without
holding up other clients, and polls for a session that asked it to (an IMAP client's IDLE). A peer
that hangs up or stalls costs a log line; a bug of ours costs that one session the core's generic
goodbye and the log a traceback; neither reaches another client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from services.actions import Action, Close, Log, Poll, Send, StartTls, StopPolling, Wait
from services.config import LabConfig


class Core(Protocol):
    """A pure session core (:class:`services.pop3.core.Session`, :class:`services.imap.core.Session`)."""

    @property
    def closed(self) -> bool: ...

    @property
    def address(self) -> str | None: ...

    def start(self) -> Sequence[Action]: ...

    def feed(self, data: bytes) -> None: ...

    def next_actions(self) -> Sequence[Action]: ...

    def timed_out(self) -> Sequence[Action]: ...

    def connection_lost(self) -> Sequence[Action]: ...

    def internal_error(self) -> Sequence[Action]: ...


class TlsCore(Core, Protocol):
    """A core that can ask for :class:`StartTls` and is told when the handshake is done."""

    def tls_started(self) -> Sequence[Action]: ...


class Connection:
    """One client: feed the session, perform its actions, until it or the peer closes."""

    def __init__(self, protocol: str, log: logging.Logger, session: Core, idle_timeout: float,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_chunk: int,
                 tls: Callable[[], ssl.SSLContext] | None = None) -> None:
        self.protocol = protocol  # "pop3", "imap": the first word of every log line
        self.log = log
        self.session = session
        self.idle_timeout = idle_timeout
        self.reader = reader
        self.writer = writer
        self.read_chunk = read_chunk
        self.polling: Poll | None = None
        self.tls = tls  # makes the server context when the core asks for StartTls
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def run(self) -> None:
        self.log.info("%s %s connected", self.protocol, self.peer)
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
        except (ConnectionError, TimeoutError) as exc:  # reset by the peer, or it stopped reading
            self.log.info("%s connection lost: %s", self.peer, exc or type(exc).__name__)
        except Exception:
            self.log.exception("%s internal error in the %s session", self.peer, self.protocol.upper())
            try:
                await self._perform(self.session.internal_error())
            except Exception as exc:  # noqa: BLE001 - the peer may be gone too; the log has the cause
                self.log.info("%s could not report the internal error: %s", self.peer, exc)
        finally:
            for action in self.session.connection_lost():
                if isinstance(action, Log):
                    self._log(action)
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass  # already reset; nothing left to flush

    async def _read(self) -> bytes | None:
        """The next bytes from the client; None once the autologout timer ran out. While polling,
        the session is asked between reads (a cancelled StreamReader.read loses nothing)."""
        deadline = time.monotonic() + self.idle_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            polling = self.polling
            try:
                return await asyncio.wait_for(self.reader.read(self.read_chunk),
                                              left if polling is None else min(left, polling.interval))
            except TimeoutError:
                if polling is not None:
                    await self._perform(polling.poll())

    async def _perform(self, actions: Sequence[Action]) -> None:
        for action in actions:
            match action:
                case Send(data):
                    self.writer.write(data)
                    # A client that never reads must not pin us: the idle timeout covers writes too.
                    # asyncio.timeout, not wait_for: no task, so no turn of the loop unless the
                    # transport is really full (see _start_tls for why that matters).
                    async with asyncio.timeout(self.idle_timeout):
                        await self.writer.drain()
                case Wait(seconds):
                    await asyncio.sleep(seconds)  # this task only; other clients carry on
                case Log():
                    self._log(action)
                case Poll():
                    self.polling = action
                case StopPolling():
                    self.polling = None
                case StartTls():
                    await self._start_tls()
                case Close():
                    return

    async def _start_tls(self) -> None:
        """Perform :class:`StartTls`: drop the clear-text bytes already read, shake hands, tell
        the core. Without a context (a shell wired without TLS) the core asked wrongly: a bug."""
        if self.tls is None or not hasattr(self.session, "tls_started"):
            raise RuntimeError("the session asked for TLS on a connection that cannot start it")
        # No await between the go-ahead written and start_tls taking over the transport's input
        # (it does so before it first waits): the bytes buffered now were sent before the client
        # saw the go-ahead, and its ClientHello goes to TLS, not into the StreamReader.
        self._drop_cleartext()
        try:
            async with asyncio.timeout(self.idle_timeout):
                await self.writer.start_tls(self.tls())
        except ssl.SSLError as exc:
            self.log.info("%s TLS handshake failed: %s", self.peer, exc.reason or exc)
            raise ConnectionError("TLS handshake failed") from exc
        await self._perform(self.session.tls_started())

    def _drop_cleartext(self) -> None:
        """Discard what the StreamReader holds: it came in clear after STLS/STARTTLS, before the
        go-ahead, so a pipelined "b LOGIN x y" injected before the handshake never runs under TLS.
        Bytes still in flight then reach the handshake and fail it: never run either."""
        reader: Any = self.reader
        buffered = getattr(reader, "_buffer", None)
        if isinstance(buffered, bytearray) and buffered:
            self._log(Log(f"dropped {len(buffered)} bytes sent in clear after the TLS command"))
            buffered.clear()
            reader._maybe_resume_transport()  # a full buffer had paused reading

    def _log(self, action: Log) -> None:
        self.log.log(action.level, "%s %s %s %s", self.protocol, self.peer, self.session.address or "-", action.text)


async def listen(protocol: str, log: logging.Logger, cfg: LabConfig, new_session: Callable[[], Core],
                 idle_timeout: float, *, host: str, port: int, read_chunk: int,
                 tls: Callable[[], ssl.SSLContext] | None = None, implicit: bool = False) -> asyncio.Server:
    """Serve ``protocol`` on ``host:port``, a new session per client; returns once listening.

    ``tls`` makes the server context for a core's :class:`StartTls`; with ``implicit`` every
    connection is TLS from its first byte (RFC 8314: POP3 on 995, IMAP on 993)."""

    async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await Connection(protocol, log, new_session(), idle_timeout, reader, writer, read_chunk, tls).run()

    if implicit and tls is None:
        raise ValueError("implicit TLS needs a server context maker (tls=services.tls.server_context)")
    server = await asyncio.start_server(serve_client, host, port,
                                        ssl=tls() if implicit and tls is not None else None)
    bound = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    domains = ", ".join(d.name for d in cfg.local_domains) or "no domains"
    log.info("%s server %s listening on %s for %s", protocol.upper(), cfg.this.fqdn, bound, domains)
    return server
