"""The delivery worker: moves queued mail to its next hop, the asyncio shell around relay.

Each pass takes the due messages from the spool, one at a time, and for each domain of their
due recipients either hands them to the local mailbox writer or looks up the MX, asks
:mod:`services.smtp.relay` which host to try, runs an SMTP client session (smtplib in a
thread) and feeds the replies back. :func:`relay.decide` then says what each recipient's new
state is; the worker records it, enqueues a bounce if one is due, and removes finished
messages. Connections stay open for the rest of a pass, so several messages for one MX share
a session (RFC 5321 §4.5.4.1 encourages it; the transaction is reset with RSET between).

A pass delivers up to DELIVERY_CONCURRENCY messages at once, as a pipeline: a message queued
during the pass starts as soon as a slot is free. The messages of a pass share one MX lookup per
domain (renewed after MX_ANSWER_REUSE seconds), so a capture shows the lookup once per burst.

A failure of one message (a peer's misbehaviour, or a bug of ours) never stops the worker:
peer trouble is an outcome like any other; a bug is logged with its traceback and the
message is retried on the normal schedule.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import re
import smtplib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from services.config import LabConfig
from services.smtp import relay
from services.smtp.bounce import build_bounce
from services.smtp.relay import (
    Action,
    DeliveryAttempt,
    DnsTemporaryFailure,
    ImplicitMx,
    MxAnswer,
    MxHost,
    MxRecords,
    MxResolver,
    NoSuchDomain,
    NullMx,
    Outcome,
    Route,
    SmtpReply,
    Target,
)
from services.smtp.spool import QueueEntry, RecipientState, Spool

log = logging.getLogger("services.smtp.delivery")

__all__ = ["DeliveryWorker", "DnsMxResolver", "LocalDelivery", "MxResolver"]

# RFC 5321 §4.5.3.2 gives the real client timeouts: 5 minutes for the greeting, MAIL and
# RCPT, 2 for the DATA command, 3 per data block and 10 for the final reply. A lab wants a
# dead MX noticed while the student watches, so ours are seconds; nothing in the lab is slow.
CONNECT_TIMEOUT = 5.0  # TCP connect and the 220 greeting (§4.5.3.2.1)
COMMAND_TIMEOUT = 10.0  # EHLO, MAIL, RCPT, DATA, RSET (§4.5.3.2.2-4)
DATA_TIMEOUT = 30.0  # sending the message and waiting for its final reply (§4.5.3.2.5-6)

DNS_TIMEOUT = 2.0  # one query to the lab DNS server
DNS_LIFETIME = 5.0  # a whole lookup, retries included; past it, a temporary DNS failure
ADDRESS_TYPES = ("A", "AAAA")  # RFC 5321 §5.1: an MX host is reached by either

# Messages delivered at once, each on its own SMTP session (Postfix's default per destination is
# 20, RFC 5321 §4.5.4.1 asks for "some" limit); small, since the lab has one MX per domain.
DELIVERY_CONCURRENCY = 8
IDLE_POLL = 30.0  # longest sleep without wake(): a safety net if a wake-up is missed
ERROR_HOLD = 30.0  # a message whose failure could not even be recorded rests this long
# One MX lookup per domain serves the messages of a pass for this long; then the next message asks
# again. Per message, the lookup (MX, then A and AAAA of each host) was the largest CPU cost of a
# relayed message; a pass still shows its lookup in a capture, and the lab's zones rarely change.
MX_ANSWER_REUSE = 5.0

LocalDelivery = Callable[[str, str, bytes], None]  # (envelope sender, recipient, data)

_EOL = re.compile(rb"\r\n|\r|\n")


# -- DNS -----------------------------------------------------------------------------------


def _dns_error(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "DNS timeout"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no name server answered (SERVFAIL or REFUSED)"
    return f"DNS error: {exc}"


class DnsMxResolver:
    """MX lookups against the lab DNS server, mapped onto relay's answer model."""

    def __init__(
        self, nameserver: str, *, port: int = 53, timeout: float = DNS_TIMEOUT, lifetime: float = DNS_LIFETIME
    ) -> None:
        # configure=False: never read the host's resolv.conf; the lab names one server.
        self._resolver = dns.resolver.Resolver(configure=False)
        self._resolver.nameservers = [nameserver]
        self._resolver.port = port
        self._resolver.timeout = timeout
        self._resolver.lifetime = lifetime

    def _addresses(self, name: str) -> tuple[str, ...]:
        """A then AAAA records; NXDOMAIN propagates, a missing type is just none."""
        found: list[str] = []
        for rdtype in ADDRESS_TYPES:
            try:
                answer = self._resolver.resolve(name, rdtype, search=False)
            except dns.resolver.NoAnswer:
                continue
            found.extend(r.to_text() for r in answer)
        return tuple(found)

    def _host_addresses(self, name: str) -> tuple[str, ...]:
        try:
            return self._addresses(name)
        except dns.exception.DNSException as exc:
            # relay skips a host without addresses (and defers if none is left).
            log.info("MX host %s does not resolve: %s", name, _dns_error(exc))
            return ()

    def resolve_mx(self, domain: str) -> MxAnswer:
        try:
            dns.name.from_text(domain)
        except dns.exception.DNSException:  # "a..b", a 64-octet label: no such domain can exist
            return NoSuchDomain()
        try:
            answer = self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            return NoSuchDomain()
        except dns.resolver.NoAnswer:
            return self._implicit(domain)
        except dns.exception.DNSException as exc:
            return DnsTemporaryFailure(_dns_error(exc))
        records = [(int(r.preference), r.exchange) for r in answer]
        if len(records) == 1 and records[0][1] == dns.name.root:
            return NullMx()
        return MxRecords(
            tuple(
                MxHost(
                    preference,
                    exchange.to_text(omit_final_dot=True).lower(),
                    () if exchange == dns.name.root else self._host_addresses(exchange.to_text()),
                )
                for preference, exchange in records
            )
        )

    def _implicit(self, domain: str) -> MxAnswer:
        try:
            return ImplicitMx(domain.lower().rstrip("."), self._addresses(domain))
        except dns.resolver.NXDOMAIN:
            return NoSuchDomain()
        except dns.exception.DNSException as exc:
            return DnsTemporaryFailure(_dns_error(exc))


# -- SMTP client ---------------------------------------------------------------------------


@dataclass
class HostResult:
    """What one SMTP session did: each recipient's deciding reply, or why there was none."""

    replies: dict[str, SmtpReply] = field(default_factory=dict)
    error: str = ""
    error_status: str = "4.4.1"  # RFC 3463: no answer from host; 4.4.2 once the session broke
    mail_code: int | None = None  # the reply to MAIL; None: the session failed before it


class _Unavailable(Exception):
    """The host could not be talked to at all (refused, timed out, bad greeting)."""


def _reply(code: int, msg: bytes | str) -> SmtpReply:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return SmtpReply(code, " ".join(text.split()))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib turns a read timeout or reset into this; the original is the context.
        cause = exc.__context__
        return _describe(cause) if isinstance(cause, OSError) else "connection closed by the server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _close(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        smtp.close()


def _transaction(smtp: smtplib.SMTP, sender: str, recipients: Sequence[str], data: bytes, out: HostResult) -> bool:
    """MAIL, RCPT..., DATA on an open session, filling ``out.replies``.

    Returns whether the session may carry another message (no 421, RFC 5321 §3.8).
    """
    assert smtp.sock is not None
    smtp.sock.settimeout(COMMAND_TIMEOUT)
    options: list[str] = []
    if smtp.has_extn("size"):
        options.append(f"SIZE={len(data)}")  # RFC 1870: lets the server refuse before DATA
    if not data.isascii() and smtp.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")  # RFC 6152
    if not all(a.isascii() for a in (sender, *recipients)):
        smtp.command_encoding = "utf-8"  # RFC 6531; the server refuses if it does not do it
        if smtp.has_extn("smtputf8"):
            options.append("SMTPUTF8")
    if smtp.has_extn("pipelining"):
        return _pipelined(smtp, sender, options, recipients, data, out)
    code, msg = smtp.mail(sender, options)
    out.mail_code = code
    if code != 250:
        out.replies.update({r: _reply(code, msg) for r in recipients})
        return code != 421
    accepted = []
    for rcpt in recipients:
        code, msg = smtp.rcpt(rcpt)
        if code in (250, 251):
            accepted.append(rcpt)  # not settled yet: the reply after the data decides
        else:
            out.replies[rcpt] = _reply(code, msg)
            if code == 421:
                return False
    if not accepted:
        smtp.rset()
        return True
    smtp.sock.settimeout(DATA_TIMEOUT)
    try:
        code, msg = smtp.data(_canonical(data))
        final = _reply(code, msg)
    except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
        final = _reply(exc.smtp_code, exc.smtp_error)
    out.replies.update({r: final for r in accepted})
    return final.code != 421


_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def _canonical(data: bytes) -> bytes:
    # Data leave in canonical form: CRLF only, never a bare CR or LF (the smuggling vector,
    # RFC 5321 §2.3.8); smtplib adds the dot-stuffing and the final ".".
    return _EOL.sub(b"\r\n", data)


def _pipelined(smtp: smtplib.SMTP, sender: str, options: Sequence[str], recipients: Sequence[str], data: bytes,
               out: HostResult) -> bool:
    """The transaction with PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write.

    Two round trips instead of one per command: the replies come back in order, and the data
    follow only after a 354 and only if some recipient was accepted (§3.1). A 354 with no
    recipient accepted (a server may give it) gets an empty message ended at once, as the RFC
    says, and its reply is ignored.
    """
    assert smtp.sock is not None
    mail = f"MAIL FROM:{smtplib.quoteaddr(sender)}" + "".join(f" {o}" for o in options)
    commands = [mail] + [f"RCPT TO:{smtplib.quoteaddr(r)}" for r in recipients] + ["DATA"]
    smtp.send("".join(f"{c}\r\n" for c in commands))
    code, msg = smtp.getreply()
    out.mail_code = code
    accepted = []
    closing = code == 421
    for rcpt in recipients:
        rcode, rmsg = smtp.getreply()
        if code != 250:
            out.replies[rcpt] = _reply(code, msg)  # the sender was refused: that is every recipient's answer
        elif rcode in (250, 251):
            accepted.append(rcpt)  # not settled yet: the reply after the data decides
        else:
            out.replies[rcpt] = _reply(rcode, rmsg)
        closing = closing or rcode == 421
    dcode, dmsg = smtp.getreply()
    closing = closing or dcode == 421
    if dcode != 354:
        out.replies.update({r: _reply(dcode, dmsg) for r in accepted})
        return not closing
    smtp.sock.settimeout(DATA_TIMEOUT)
    body = _LEADING_DOT.sub(b"..", _canonical(data)) if accepted else b""  # §4.5.2 transparency
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    smtp.send(body + b".\r\n")
    final = _reply(*smtp.getreply())
    out.replies.update({r: final for r in accepted})
    return not closing and final.code != 421


class Connections:
    """SMTP client sessions, kept open across the messages of one delivery pass.

    ``transact`` and ``close`` run in worker threads; ``abort`` may come from the event loop
    meanwhile (the worker is cancelled), hence the lock.
    """

    def __init__(self, helo_name: str, port: int) -> None:
        self._helo = helo_name
        self._port = port
        self._open: dict[str, list[smtplib.SMTP]] = {}  # idle sessions by server address
        self._lock = threading.Lock()
        self._aborted = False

    def _connect(self, address: str) -> smtplib.SMTP:
        smtp = smtplib.SMTP(local_hostname=self._helo, timeout=CONNECT_TIMEOUT)
        try:
            code, msg = smtp.connect(address, self._port)
            if code != 220:
                # 554 here means "no SMTP service" (RFC 5321 §3.1): try the next MX.
                raise _Unavailable(f"greeted with {_reply(code, msg)}")
            assert smtp.sock is not None
            smtp.sock.settimeout(COMMAND_TIMEOUT)
            code, msg = smtp.ehlo()
            if code != 250:
                code, msg = smtp.helo()  # RFC 5321 §3.2: an old server may know only HELO
                if code != 250:
                    raise _Unavailable(f"refused HELO: {_reply(code, msg)}")
        except (OSError, _Unavailable) as exc:
            _close(smtp)
            raise _Unavailable(_describe(exc)) from exc
        return smtp

    def _idle(self, address: str) -> smtplib.SMTP | None:
        with self._lock:
            idle = self._open.get(address)
            return idle.pop() if idle else None

    def transact(self, target: Target, sender: str, data: bytes) -> HostResult:
        """Offer the message to ``target`` for ``target.recipients``. Blocking."""
        smtp = self._idle(target.address)
        if smtp is not None:
            # No RSET first: a transaction ended by the reply to the data leaves the session
            # ready for the next MAIL (RFC 5321 §4.1.1.4). A probe per message cost a round
            # trip on both sides. If the server has dropped the idle session meanwhile (no
            # reply to MAIL, or 421), nothing was accepted: a fresh session takes the message.
            out = self._offer(smtp, target, sender, data)
            if out.mail_code not in (None, 421):
                return out
        out = HostResult()
        try:
            smtp = self._connect(target.address)
        except _Unavailable as exc:
            out.error = str(exc)
            return out
        return self._offer(smtp, target, sender, data)

    def _offer(self, smtp: smtplib.SMTP, target: Target, sender: str, data: bytes) -> HostResult:
        """One transaction on an open session, which is kept for the next if still good."""
        out = HostResult()
        try:
            reusable = _transaction(smtp, sender, target.recipients, data, out)
        except OSError as exc:  # smtplib's errors are OSErrors too
            _close(smtp)
            out.error, out.error_status = _describe(exc), "4.4.2"
            return out
        with self._lock:
            kept = reusable and not self._aborted
            if kept:
                self._open.setdefault(target.address, []).append(smtp)
        if not kept:
            _close(smtp)
        return out

    def _take_all(self) -> list[smtplib.SMTP]:
        with self._lock:
            sessions = [smtp for idle in self._open.values() for smtp in idle]
            self._open.clear()
            return sessions

    def close(self) -> None:
        """QUIT every open session. Blocking."""
        for smtp in self._take_all():
            with contextlib.suppress(OSError):
                smtp.quit()
            _close(smtp)

    def abort(self) -> None:
        """Drop every session without a word (the worker is being cancelled)."""
        with self._lock:
            self._aborted = True
        for smtp in self._take_all():
            _close(smtp)


# -- the worker ----------------------------------------------------------------------------


@dataclass
class _Pass:
    """What the messages of one delivery pass share: SMTP sessions and MX answers."""

    connections: Connections
    # domain -> (when asked, the lookup): in flight or done, so concurrent messages ask once
    answers: dict[str, tuple[float, asyncio.Future[MxAnswer]]] = field(default_factory=dict)


def _by_domain(recipients: Iterable[RecipientState]) -> dict[str, list[RecipientState]]:
    groups: dict[str, list[RecipientState]] = {}
    for r in recipients:
        groups.setdefault(r.address.rpartition("@")[2].lower(), []).append(r)
    return groups


class DeliveryWorker:
    """Delivers the spool's messages until cancelled. Use it from the event loop; wake() from anywhere."""

    def __init__(
        self,
        cfg: LabConfig,
        spool: Spool,
        *,
        local_delivery: LocalDelivery,
        resolver: MxResolver | None = None,
        clock: Callable[[], float] = time.time,
        smtp_port: int = 25,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._spool = spool
        self._local_delivery = local_delivery
        self._resolver: MxResolver = resolver or DnsMxResolver(cfg.nameserver)
        self._clock = clock
        self._smtp_port = smtp_port
        self._rng = rng or random.Random()
        self._local_domains = {d.name for d in cfg.local_domains}
        self._fqdn = cfg.this.fqdn
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_requested = False
        self._held: dict[str, float] = {}  # queue id -> until when it is left alone

    # -- control ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the queue now (after an enqueue). Safe from any thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is not None and running is not self._loop:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        else:
            self._wakeup.set()

    def flush(self) -> None:
        """Make every pending recipient due now, then wake (the next pass does the writing)."""
        self._flush_requested = True
        self.wake()

    async def run(self) -> None:
        """Deliver forever: a pass, then sleep until the next due time or wake()."""
        self._loop = asyncio.get_running_loop()
        log.info("delivery worker started; retry schedule %s s, give up after %s s",
                 "/".join(f"{t:g}" for t in self._cfg.retry.schedule), f"{self._cfg.retry.give_up:g}")
        while True:
            self._wakeup.clear()  # a wake() during the pass makes the next wait return at once
            try:
                await self.run_once()
                # A flush during the pass found its messages already tried in it: pass again now.
                delay = 0.0 if self._flush_requested else await self._idle_delay()
            except Exception:  # our bug (or a broken spool): log it, keep the worker alive
                log.exception("delivery pass failed; next pass in %g s", ERROR_HOLD)
                delay = ERROR_HOLD
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _idle_delay(self) -> float:
        entries = self._spool.queued()  # from memory: the MTA's spool keeps an index
        times = [
            max(t, self._held.get(e.id, t)) for e in entries if (t := e.next_attempt) is not None
        ]
        if not times:
            return IDLE_POLL
        return min(max(min(times) - self._clock(), 0.0), IDLE_POLL)

    async def run_once(self) -> int:
        """Attempt every due message once (and the bounces that creates); return how many."""
        if self._flush_requested:
            self._flush_requested = False
            self._held.clear()
            count = await asyncio.to_thread(self._spool.flush, self._clock())
            log.info("queue flushed: %d recipient(s) due now", count)
        work = _Pass(Connections(self._fqdn, self._smtp_port))
        seen: set[str] = set()
        # Several messages in flight at once, each on its own session: one slow or dead MX no
        # longer holds up the rest, and the disk writes of different messages overlap. The rest
        # wait here, not as tasks: a backlog of tasks made every wake-up cost as much as the queue.
        waiting: collections.deque[tuple[QueueEntry, float]] = collections.deque()
        running: set[asyncio.Task[None]] = set()
        scan = True
        try:
            while True:
                # A pipeline, not batches: mail queued (or a bounce made) while others are in
                # flight starts as soon as a slot is free. Waiting for a whole batch to finish
                # before looking again left slots idle behind the slowest message of each batch.
                if scan:
                    self._wakeup.clear()  # before due(): a wake-up after it is seen below
                    now = self._clock()
                    self._held = {q: t for q, t in self._held.items() if t > now}
                    for e in self._spool.due(now):  # from the spool's memory: no disk read
                        if e.id not in seen and e.id not in self._held:
                            seen.add(e.id)
                            waiting.append((e, now))
                while waiting and len(running) < DELIVERY_CONCURRENCY:
                    task = asyncio.create_task(self._attempt(*waiting.popleft(), work))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if not running:
                    if scan:
                        break
                    scan = True  # all done: one last look before the pass ends
                    continue
                if waiting:
                    # Every slot busy and more known work behind it: a wake-up can wait until that
                    # drains (it stays set), or under load every new message would scan the queue.
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    scan = False
                    continue
                woken = asyncio.ensure_future(self._wakeup.wait())
                try:
                    await asyncio.wait({woken, *running}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
                # Look at the queue again only when told something changed (new mail, a bounce),
                # not after every message, which would scan the queue once per message.
                scan = self._wakeup.is_set()
            await asyncio.to_thread(work.connections.close)
        except BaseException:  # cancelled: the threads may run on, but keep no session
            for task in running:
                task.cancel()
            work.connections.abort()
            raise
        return len(seen)

    # -- one message -----------------------------------------------------------------------

    async def _attempt(self, entry: QueueEntry, now: float, work: _Pass) -> None:
        due = entry.due_recipients(now)
        try:
            data = self._spool.take_recent(entry.id)  # just queued: still in memory, no disk read
            if data is None:
                data = await asyncio.to_thread(self._spool.read, entry.id)
            outcomes: dict[str, Outcome] = {}
            for domain, rcpts in _by_domain(due).items():
                if not domain:
                    outcomes.update({r.address: relay.permanent("5.1.3", "recipient address has no domain")
                                     for r in rcpts})
                elif domain in self._local_domains:
                    outcomes.update(await self._deliver_local(entry, rcpts, data))
                else:
                    outcomes.update(await self._deliver_remote(entry, domain, rcpts, data, work))
            await self._settle(entry, due, outcomes, data)
        except Exception:
            log.exception("%s: internal error during delivery", entry.id)
            internal = relay.transient("4.3.0", "internal error in the delivery worker (see the MTA log)")
            try:
                await self._settle(entry, due, {r.address: internal for r in due}, None)
            except Exception:
                log.exception("%s: cannot record the failure; leaving it alone for %g s", entry.id, ERROR_HOLD)
                self._held[entry.id] = self._clock() + ERROR_HOLD

    async def _deliver_local(
        self, entry: QueueEntry, rcpts: Sequence[RecipientState], data: bytes
    ) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for r in rcpts:
            if self._cfg.account(r.address) is None:
                outcome = relay.permanent("5.1.1", f"no mailbox for {r.address} here")
            else:
                try:
                    await asyncio.to_thread(self._local_delivery, entry.sender, r.address, data)
                except OSError as exc:  # disk full, permissions: the mailbox may work later
                    outcome = relay.transient("4.3.0", f"cannot write the mailbox: {_describe(exc)}")
                else:
                    outcome = relay.delivered("delivered to the local mailbox")
            outcomes[r.address] = replace(outcome, relay="local")
        return outcomes

    async def _route(self, domain: str, work: _Pass) -> Route | Outcome:
        literal = relay.address_literal(domain)
        if literal is not None:
            return Route(domain, (MxHost(0, domain, (literal,)),))
        now = self._clock()
        asked = work.answers.get(domain)
        if asked is None or now - asked[0] >= MX_ANSWER_REUSE:
            asked = now, asyncio.ensure_future(asyncio.to_thread(self._resolver.resolve_mx, domain))
            work.answers[domain] = asked
        # shield: one message being cancelled must not cancel the lookup the others wait for
        answer = await asyncio.shield(asked[1])
        # Planned per message: hosts of equal preference are shuffled each time (RFC 5321 §5.1).
        return relay.plan_route(domain, answer, self._rng, local_names={self._fqdn})

    async def _deliver_remote(
        self, entry: QueueEntry, domain: str, rcpts: Sequence[RecipientState], data: bytes, work: _Pass
    ) -> dict[str, Outcome]:
        connections = work.connections
        route = await self._route(domain, work)
        if isinstance(route, Outcome):
            return {r.address: route for r in rcpts}
        attempt = DeliveryAttempt(route, [r.address for r in rcpts])
        while (target := attempt.next_target()) is not None:
            result = await asyncio.to_thread(connections.transact, target, entry.sender, data)
            attempt.host_result(target, result.replies, result.error, error_status=result.error_status)
        return attempt.outcomes()

    async def _settle(
        self, entry: QueueEntry, due: Sequence[RecipientState], outcomes: dict[str, Outcome], data: bytes | None
    ) -> None:
        """Record the attempt: new states, a bounce if one is due, removal when all is done."""
        end = self._clock()
        decisions = [
            relay.decide(r, outcomes[r.address], now=end, queued_at=entry.queued_at,
                         retry=self._cfg.retry, sender=entry.sender)
            for r in due
        ]
        for r, d in zip(due, decisions, strict=True):
            self._log_attempt(entry, r.address, outcomes[r.address], d, end)
        failed = [d.state for d in decisions if d.action is Action.BOUNCED]
        if failed:
            # Before recording: a crash in between repeats the bounce rather than losing it
            # (RFC 5321 §6.1 prefers a duplicate to a loss).
            original = data if data is not None else await asyncio.to_thread(self._spool.read, entry.id)
            bounce = build_bounce(original=original, sender=entry.sender, failed=failed,
                                  reporting_mta=self._fqdn, queue_id=entry.id, arrival=entry.queued_at, now=end)
            bounce_id = await asyncio.to_thread(self._spool.enqueue, "", [entry.sender], bounce, now=end)
            log.info("%s: sender non-delivery notification: %s", entry.id, bounce_id)
            self.wake()  # the bounce is due now: deliver it in this pass
        states = {d.state.address: d.state for d in decisions}
        if replace(entry, recipients=tuple(states.get(r.address, r) for r in entry.recipients)).done:
            # Nothing left to try: forget the message at once rather than first writing (and
            # fsyncing) a state that says so. A crash in between means, at worst, a duplicate.
            await asyncio.to_thread(self._spool.remove, entry.id)
            log.info("%s: removed", entry.id)
        else:
            await asyncio.to_thread(self._spool.record, entry.id, list(states.values()))

    def _log_attempt(self, entry: QueueEntry, rcpt: str, outcome: Outcome, d: relay.Decision, now: float) -> None:
        via = f"{outcome.relay}:{self._smtp_port}" if outcome.remote_mta else outcome.relay or "none"
        detail = d.state.last_error or outcome.reason
        if d.action is Action.DEFERRED:
            detail += f"; next try in {d.state.next_attempt - now:.0f} s"
        elif d.action is Action.DROPPED:
            detail = f"not bouncing a bounce: {detail}"
        log.info("%s: to=<%s>, relay=%s, attempt=%d, dsn=%s, status=%s (%s)",
                 entry.id, rcpt, via, d.state.attempts, d.state.dsn_status, d.action, detail)
