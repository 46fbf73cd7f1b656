"""The lab DNS server: a thin asyncio shell over UDP and TCP around :func:`services.dns.answer.respond`.

Every DNS decision is in ``answer.py``; this module moves messages and logs one line per query
(transport, client, qname, qtype, rcode). Over TCP (RFC 7766) each message has a two-octet length
prefix, a connection carries any number of queries, pipelined ones are answered in order, an idle
connection is closed, and the number of open connections is bounded. A stream that ends mid-message
or frames a message too short to have a header is closed: after a bad frame nothing that follows can
be trusted to start on a message boundary. Nothing a peer sends reaches another client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.rdatatype

from services import config, runtime
from services.dns.answer import Reply
from services.dns.batch import DATAGRAM_MAX, Batch, open_batch
from services.dns.cache import Answerer
from services.dns.zones import Zone, ZoneError, Zones, load_dir

log = logging.getLogger("services.dns")

DNS_PORT = 53  # RFC 1035 §4.2: UDP and TCP alike
TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 §6.2.3: servers close idle connections after a few seconds
PRECOMPUTE_AFTER = 1.0  # seconds after the server listens (see start)
# RFC 7766 §6.2.2: bound what clients can hold open; a five-host lab needs a handful.
TCP_CONNECTIONS_MAX = 64
LENGTH_PREFIX = 2  # RFC 1035 §4.2.2: each TCP message is preceded by its length in two octets
# With port 0, UDP picks a free port and TCP must get the same number; another process may hold it.
PORT_ATTEMPTS = 20


# A student reads every query of a lab in the log; a benchmark's thousands a second would drown
# it (and the engine that stores each line): past this many in a second, one line counts the rest.
QUERY_LOG_PER_SECOND = 50


class _QueryLog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._second = -1
        self._logged = 0
        self._unlogged = 0

    def __call__(self, transport: str, addr: Any, reply: Reply) -> None:
        self.many(transport, (reply,), lambda _: addr)

    def many(self, transport: str, replies: Sequence[Reply], peer: Callable[[int], Any]) -> None:
        """Log a burst of replies; ``peer(i)``, the address reply i goes to, is asked only for a line written."""
        second = int(self._clock())
        if second != self._second:
            if self._unlogged:
                log.info("... and %d more queries in that second (the log shows at most %d a second)",
                         self._unlogged, QUERY_LOG_PER_SECOND)
            self._second, self._logged, self._unlogged = second, 0, 0
        for i, reply in enumerate(replies):
            if reply.bug is not None:
                log.error("internal error answering %s from %s:\n%s", reply.qname, _client(peer(i)), reply.bug.rstrip())
            if self._logged < QUERY_LOG_PER_SECOND:
                self._logged += 1
                note = f" ({reply.note})" if reply.note else ""
                log.info("%s %s %s %s %s%s", transport, _client(peer(i)), reply.qname, reply.qtype, reply.rcode, note)
            else:
                self._unlogged += 1


_log_reply = _QueryLog()


def _client(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


UDP_BURST = 64  # datagrams answered per wake-up of the loop, before others get their turn


class _Udp:
    """UDP, answered in bursts straight from the socket.

    asyncio's datagram transport wakes the loop once per datagram and makes a system call per
    datagram each way; here a wake-up reads every datagram waiting (up to :data:`UDP_BURST`) in
    one ``recvmmsg`` and sends their replies in one ``sendmmsg`` (``batch.py``), which is what
    lets the server keep up with a load generator like dnsperf (design: thin shell, the answering
    is :class:`Answerer`'s). Where those calls are missing, it reads one datagram per call.
    """

    def __init__(self, sock: socket.socket, answerer: Answerer, batch: Batch | None) -> None:
        self.sock = sock
        self.answerer = answerer
        self.batch = batch

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self._readable if self.batch is not None else self._readable_singly)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        batch = self.batch
        assert batch is not None
        for _ in range(UDP_BURST):  # bounded like the one-by-one loop, should the socket keep erring
            try:
                datagrams = batch.receive()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier reply (the client's port is gone)
                log.info("udp: %s", exc)
                continue
            answerer = self.answerer
            replies: list[Reply] = []
            for slot, data in enumerate(datagrams):
                try:
                    replies.append(answerer.respond(data, transport="udp"))
                except Exception:  # a bug of ours must not stop the server: log it, keep serving
                    log.exception("udp %s: internal error", _client(batch.peer(slot)))
                    replies.append(Reply(None, rcode="dropped", note="internal error"))
            _log_reply.many("udp", replies, batch.peer)
            # Send buffer full, or the client unreachable: UDP drops, the client asks again.
            for slot, error in batch.send([reply.wire for reply in replies]):
                log.info("udp %s: reply not sent: %s", _client(batch.peer(slot)), error)
            return

    def _readable_singly(self) -> None:
        for _ in range(UDP_BURST):
            try:
                data, addr = self.sock.recvfrom(DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier reply (the client's port is gone)
                log.info("udp: %s", exc)
                continue
            try:
                reply = self.answerer.respond(data, transport="udp")
                _log_reply("udp", addr, reply)
                if reply.wire is not None:
                    self.sock.sendto(reply.wire, addr)
            except OSError as exc:  # send buffer full, or the client unreachable: UDP drops, it asks again
                log.info("udp %s: reply not sent: %s", _client(addr), exc)
            except Exception:  # a bug of ours must not stop the server: log it, keep serving
                log.exception("udp %s: internal error", _client(addr))


@dataclass
class _Tcp:
    answerer: Answerer
    idle_timeout: float
    max_connections: int
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _client(writer.get_extra_info("peername"))
        if len(self.connections) >= self.max_connections:
            log.warning("tcp %s: refused, %d connections already open", client, len(self.connections))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            while (message := await self._read(reader, client)) is not None:
                reply = self.answerer.respond(message, transport="tcp")
                _log_reply("tcp", client, reply)  # already "ip:port"
                if reply.wire is None:
                    break
                writer.write(len(reply.wire).to_bytes(LENGTH_PREFIX, "big") + reply.wire)
                # A client that never reads must not pin us: the idle timeout covers writes too.
                async with asyncio.timeout(self.idle_timeout):
                    await writer.drain()
        except (ConnectionError, TimeoutError) as exc:
            log.info("tcp %s: connection lost: %s", client, exc or type(exc).__name__)
        except Exception:
            log.exception("tcp %s: internal error", client)
        finally:
            del self.connections[task]
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, client: str) -> bytes | None:
        """The next framed message, or None when the connection should end."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                prefix = await reader.readexactly(LENGTH_PREFIX)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                log.info("tcp %s: closed in the middle of a length prefix", client)
            return None  # an orderly close between messages is how a client says goodbye
        except TimeoutError:
            log.info("tcp %s: idle for %g s, closing", client, self.idle_timeout)
            return None
        length = int.from_bytes(prefix, "big")
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            log.info("tcp %s: closed after %d of %d octets of a message", client, len(exc.partial), length)
        except TimeoutError:
            log.info("tcp %s: stalled after part of a %d-octet message, closing", client, length)
        return None

    async def close_all(self) -> None:
        # Aborting the transports, rather than cancelling the tasks, ends each handler through its
        # ordinary connection-lost path, wherever it is waiting.
        for writer in self.connections.values():
            writer.transport.abort()
        if self.connections:
            await asyncio.wait(list(self.connections))


@dataclass
class DnsServer:
    """A running server; UDP and TCP share :attr:`port`."""

    port: int
    _udp: _Udp
    _tcp_server: asyncio.Server
    _tcp: _Tcp
    _precomputing: asyncio.Task[None] | None = None

    @property
    def zones(self) -> Zones:
        return self._tcp.answerer.zones

    def replace_zones(self, zones: Zones) -> None:
        """Serve ``zones`` from the next query on (a zone changed live: a scenario's DNS fault).

        A query being answered keeps the zones it started with; the answers remembered for the
        old zones go with them.
        """
        answerer = Answerer(zones)
        self._udp.answerer = answerer
        self._tcp.answerer = answerer

    async def close(self) -> None:
        if self._precomputing is not None:
            # Not needed any more; a worker thread already making them finishes on its own.
            self._precomputing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._precomputing
        self._udp.close(asyncio.get_running_loop())
        self._tcp_server.close()
        await self._tcp.close_all()
        await self._tcp_server.wait_closed()


async def start(
    zones: Zones,
    host: str = "0.0.0.0",
    port: int = DNS_PORT,
    *,
    idle_timeout: float = TCP_IDLE_TIMEOUT,
    max_tcp_connections: int = TCP_CONNECTIONS_MAX,
    batched: bool = True,
    precompute_after: float = PRECOMPUTE_AFTER,
) -> DnsServer:
    """Serve ``zones`` on UDP and TCP ``host:port`` (port 0: a free port, the same for both).

    ``batched=False`` reads one datagram per call, as where ``recvmmsg`` is missing.
    ``precompute_after``: seconds until the kept replies are made (services.dns.cache).
    """
    loop = asyncio.get_running_loop()
    # The replies kept per question are made once the sockets listen, on a worker thread: making
    # them first (64 ms of CPU for the lab's zones) held the name server's first answer back, and
    # it was the last service `labctl up` waited for. Until they are there, respond() answers.
    # And a moment later (PRECOMPUTE_AFTER): at `up` every host starts at once on the same cores.
    answerer = Answerer(zones, precompute=False)
    tcp = _Tcp(answerer, idle_timeout, max_tcp_connections)
    attempts = PORT_ATTEMPTS if port == 0 else 1
    for attempt in range(1, attempts + 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        bound: int = sock.getsockname()[1]
        try:
            tcp_server = await asyncio.start_server(tcp.serve, host, bound)
        except OSError as exc:
            sock.close()
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == attempts:
                raise
            continue
        log.info("DNS server listening on %s port %d (udp, tcp) for %s", host, bound,
                 ", ".join(z.origin.to_text(omit_final_dot=True) for z in zones))
        udp = _Udp(sock, answerer, open_batch(sock, UDP_BURST) if batched else None)
        udp.start(loop)
        server = DnsServer(bound, udp, tcp_server, tcp)
        server._precomputing = loop.create_task(_precompute(answerer, precompute_after))
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _precompute(answerer: Answerer, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
        answerer.adopt(await asyncio.to_thread(answerer.precomputed))
    except Exception:  # our bug: the server answers on without them, each reply made when asked
        log.exception("could not make the kept DNS replies; answering each query afresh")


def reload(server: DnsServer, directory: Path) -> bool:
    """Read the zone files again and serve them; on any error keep serving the old ones.

    ``labctl`` rewrites a zone file and sends SIGHUP (like ``rndc reload`` or NSD's SIGHUP) when a
    scenario changes a record live. A broken file must not take the lab's DNS down: the log says
    what is wrong and the previous zones stay.
    """
    try:
        zones = load_dir(directory)
    except ZoneError as exc:
        log.error("reload refused, still serving the previous zones: %s", exc)
        return False
    server.replace_zones(zones)
    serials = ", ".join(f"{z.origin.to_text(omit_final_dot=True)} {_serial(z)}" for z in zones)
    log.info("reloaded %d zones from %s (serials: %s)", len(zones), directory, serials)
    return True


def _serial(zone: Zone) -> int:
    soa = zone.rdataset(zone.origin, dns.rdatatype.SOA)
    return int(soa[0].serial) if soa else 0


def main(argv: list[str]) -> int:
    """``python3 -m services dns``: serve the zones in config.ZONES_DIR until SIGTERM; SIGHUP reloads."""
    argparse.ArgumentParser(prog="python3 -m services dns", description="The lab's authoritative DNS server.",
                            epilog=f"Zone files: {config.ZONES_DIR}/*.zone; SIGHUP reloads them").parse_args(argv)
    cfg = runtime.start_role("dns")
    if cfg is None:
        return 1
    try:
        zones = load_dir(config.ZONES_DIR)
    except ZoneError as exc:
        log.error("cannot serve the lab zones: %s", exc)
        return 1
    for z in zones:
        log.info("zone %s from %s", z.origin, z.source)
    status: int = 0

    async def run() -> None:
        nonlocal status
        try:
            server = await start(zones)
        except OSError as exc:
            log.error("cannot listen on port %d: %s", DNS_PORT, exc.strerror or exc)
            status = 1
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload, server, config.ZONES_DIR)
        try:
            await runtime.forever()
        finally:
            await server.close()

    return runtime.serve(run) or status

