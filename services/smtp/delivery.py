"""The delivery worker: moves queued mail to its next hop, the asyncio shell around relay.

Each pass takes the due messages from the spool, one at a time, and for each domain of their
due recipients either hands them to the local mailbox writer or looks up the MX, asks
:mod:`services.smtp.relay` which host to try, runs an SMTP client session
(:mod:`services.smtp.client`, on the event loop) and feeds the replies back.
:func:`relay.decide` then says what each recipient's new state is; the worker records it,
enqueues a bounce if one is due, and removes finished messages. Connections stay open for the
rest of a pass, so several messages for one MX share a session (RFC 5321 §4.5.4.1 encourages it).

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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from services.config import LabConfig
from services.smtp import relay
from services.smtp.bounce import build_bounce
from services.smtp.client import Connections, RelayTls, describe
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
)
from services.smtp.spool import QueueEntry, RecipientState, Spool

log = logging.getLogger("services.smtp.delivery")

__all__ = ["DeliveryWorker", "DnsMxResolver", "LocalDelivery", "MxResolver"]

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

# -- DNS -----------------------------------------------------------------------------------


def _dns_error(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "DNS timeout"
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "NXDOMAIN: no such name"
    if isinstance(exc, dns.resolver.NoNameservers):
        # Say which: SERVFAIL is a broken server, REFUSED a name it does not serve.
        codes = sorted({dns.rcode.to_text(r.rcode()) for *_, r in exc.kwargs.get("errors", ())
                        if isinstance(r, dns.message.Message)})
        return f"the name server answered {' / '.join(codes)}" if codes else \
            "no name server answered (SERVFAIL or REFUSED)"
    return f"DNS error: {exc}"


def _refused(exc: dns.exception.DNSException) -> bool:
    """Did the name server answer REFUSED (RFC 1035 §4.1.1: it will not serve this name)?"""
    return isinstance(exc, dns.resolver.NoNameservers) and any(
        isinstance(r, dns.message.Message) and r.rcode() == dns.rcode.REFUSED for *_, r in exc.kwargs.get("errors", ()))


def _additional_addresses(response: dns.message.Message, name: dns.name.Name) -> tuple[str, ...]:
    """The A then AAAA records for ``name`` in a response's additional section, in its order."""
    found: list[str] = []
    for rdtype in ADDRESS_TYPES:
        for rrset in response.additional:
            if rrset.name == name and rrset.rdtype == dns.rdatatype.from_text(rdtype):
                found.extend(r.to_text() for r in rrset)
    return tuple(found)


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

    def _mx_host(self, preference: int, exchange: dns.name.Name, additional: dns.message.Message) -> MxHost:
        name = exchange.to_text(omit_final_dot=True).lower()
        if exchange == dns.name.root:
            return MxHost(preference, name, ())
        # The MX answer's additional section usually has the host's addresses (RFC 1035 §3.3.9;
        # ours and NSD's do): no second round trip then. Without them, ask for A and AAAA.
        glue = _additional_addresses(additional, exchange)
        if glue:
            return MxHost(preference, name, glue)
        try:
            addresses = self._addresses(exchange.to_text())
        except dns.exception.DNSException as exc:
            # relay skips a host without addresses (and defers if none is left), naming this.
            log.info("MX host %s does not resolve: %s", name, _dns_error(exc))
            return MxHost(preference, name, (), lookup=_dns_error(exc))
        return MxHost(preference, name, addresses, lookup="" if addresses else "no A or AAAA record")

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
            return DnsTemporaryFailure(_dns_error(exc), refused=_refused(exc))
        records = [(int(r.preference), r.exchange) for r in answer]
        if len(records) == 1 and records[0][1] == dns.name.root:
            return NullMx()
        return MxRecords(tuple(self._mx_host(pref, exchange, answer.response) for pref, exchange in records))

    def _implicit(self, domain: str) -> MxAnswer:
        try:
            return ImplicitMx(domain.lower().rstrip("."), self._addresses(domain))
        except dns.resolver.NXDOMAIN:
            return NoSuchDomain()
        except dns.exception.DNSException as exc:
            return DnsTemporaryFailure(_dns_error(exc))


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
        relay_tls: RelayTls | None = None,
    ) -> None:
        self._cfg = cfg
        self._spool = spool
        self._local_delivery = local_delivery
        self._resolver: MxResolver = resolver or DnsMxResolver(cfg.nameserver)
        self._clock = clock
        self._smtp_port = smtp_port
        # STARTTLS to the MX as the lab's tls.relay says; the contexts are made once, here.
        self._relay_tls = relay_tls if relay_tls is not None else RelayTls.from_config(cfg)
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
        work = _Pass(Connections(self._fqdn, self._smtp_port, self._relay_tls))
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
            await work.connections.close()
            await self._spool.settled()  # the pass's removals are on disk when it ends
        except BaseException:  # cancelled: keep no session
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
            if self._cfg.account(self._cfg.mailbox_owner(r.address)) is None:  # postmaster@ is an alias
                outcome = relay.permanent("5.1.1", f"no mailbox for {r.address} here")
            else:
                try:
                    await asyncio.to_thread(self._local_delivery, entry.sender, r.address, data)
                except OSError as exc:  # disk full, permissions: the mailbox may work later
                    outcome = relay.transient("4.3.0", f"cannot write the mailbox: {describe(exc)}")
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
        return relay.plan_route(domain, answer, self._rng, local_names={self._fqdn}, outside=self._cfg.outside(domain))

    async def _deliver_remote(
        self, entry: QueueEntry, domain: str, rcpts: Sequence[RecipientState], data: bytes, work: _Pass
    ) -> dict[str, Outcome]:
        connections = work.connections
        route = await self._route(domain, work)
        if isinstance(route, Outcome):
            return {r.address: route for r in rcpts}
        attempt = DeliveryAttempt(route, [r.address for r in rcpts])
        while (target := attempt.next_target()) is not None:
            result = await connections.transact(target, entry.sender, data)
            attempt.host_result(target, result.replies, result.error, error_status=result.error_status)
            if result.error and not result.replies:
                # Said now, not only in the attempt's summary: a host switched off costs seconds
                # (ARP gives up after about 3), and the log must show where they went.
                log.info("%s: relay=%s:%d failed: %s; %s", entry.id, target.relay, self._smtp_port, result.error,
                         "trying the next MX" if not attempt.finished else "no MX left to try")
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
            bounce_id = await self._spool.enqueue_async("", [entry.sender], bounce, now=end)
            log.info("%s: sender non-delivery notification: %s", entry.id, bounce_id)
            self.wake()  # the bounce is due now: deliver it in this pass
        states = {d.state.address: d.state for d in decisions}
        if replace(entry, recipients=tuple(states.get(r.address, r) for r in entry.recipients)).done:
            # Nothing left to try: forget the message at once rather than first writing (and
            # fsyncing) a state that says so. A crash in between means, at worst, a duplicate.
            self._spool.remove_soon(entry.id)
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
