"""The relay's decisions, with no I/O: where to send a message, and what to do after a try.

Shaped like dnspython's ``_Resolution``: the asyncio shell (:mod:`services.smtp.delivery`) asks
this module what to do next, does it (a DNS lookup, an SMTP session), and feeds the result back.
Randomness and time come in as arguments, so every decision here is a unit test.

1. :func:`plan_route` turns an MX answer (:data:`MxAnswer`) into an ordered list of hosts to
   try, or into a failure (null MX, no such domain, DNS trouble). RFC 5321 §5.1, RFC 7505.
2. :class:`DeliveryAttempt` walks those hosts for one message's recipients in one domain: a
   recipient settled by a host (2xx or 5xx) is done; one that got a 4xx or no answer moves on
   to the next host. The result is one :class:`Outcome` per recipient.
3. :func:`decide` turns a recipient's outcome, its history and the clock into the next state:
   delivered, try again at time t (RFC 5321 §4.5.4.1), or give up and bounce (or, for a
   message with the null sender, drop: never a bounce for a bounce, RFC 5321 §4.5.5).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import groupby
from typing import Protocol

from services.config import Retry
from services.smtp.spool import RecipientState, Status
from services.smtp.wire import Reply

# RFC 5321 §5.1 lets a client limit how many MX addresses it tries per attempt; Postfix's
# smtp_mx_address_limit is 5. Past that, the rest are for the next attempt.
MAX_MX_TARGETS = 5
# The queue record keeps when each attempt ended, for the first this many (a lab's scenarios check
# the retry schedule's first gaps; a week of retries every minute would be ten thousand).
MAX_ATTEMPT_TIMES = 100


# -- the MX answer model ------------------------------------------------------------------


@dataclass(frozen=True)
class MxHost:
    preference: int
    exchange: str  # host name, lower case, no trailing dot
    addresses: tuple[str, ...]  # its A/AAAA records; empty if the name did not resolve
    # Without addresses, what the DNS said of the name: "NXDOMAIN", "no A or AAAA record", "REFUSED".
    lookup: str = ""


@dataclass(frozen=True)
class MxRecords:
    """The domain has MX records (RFC 5321 §5.1), in the order DNS gave them."""

    hosts: tuple[MxHost, ...]


@dataclass(frozen=True)
class ImplicitMx:
    """No MX record, but the name exists: its own A/AAAA records are the MX (§5.1)."""

    domain: str
    addresses: tuple[str, ...]  # empty: the name exists but has no address either


@dataclass(frozen=True)
class NullMx:
    """``MX 0 .``: the domain accepts no mail at all (RFC 7505)."""


@dataclass(frozen=True)
class NoSuchDomain:
    """NXDOMAIN: the domain does not exist, a permanent failure."""


@dataclass(frozen=True)
class DnsTemporaryFailure:
    """Timeout, SERVFAIL, no name server answered: try again later."""

    reason: str
    refused: bool = False  # the server answered REFUSED: it does not serve the name


MxAnswer = MxRecords | ImplicitMx | NullMx | NoSuchDomain | DnsTemporaryFailure


class MxResolver(Protocol):
    """Looks up where a domain's mail goes. Blocking; the shell calls it in a thread."""

    def resolve_mx(self, domain: str) -> MxAnswer: ...


# -- outcomes ------------------------------------------------------------------------------


class Result(StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # 4xx, no connection, timeout, DNS trouble: try again later
    PERMANENT = "permanent"  # 5xx, no such domain, null MX: bounce now


def reply_result(reply: Reply) -> Result:
    """What a host's reply settles for a recipient: 2xx delivered, 5xx refused for good."""
    if 200 <= reply.code < 300:
        return Result.DELIVERED
    if 500 <= reply.code < 600:
        return Result.PERMANENT
    # 4xx, and anything unexpected (a 3xx to RCPT, smtplib's -1 for garbage): the peer is
    # confused now, which is no proof the address is bad.
    return Result.TRANSIENT


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved for one recipient."""

    result: Result
    status: str  # RFC 3463 code: "2.0.0", "4.4.1", "5.1.10"
    reason: str  # for the log and the bounce, in words
    remote_mta: str = ""  # the MX host that answered
    relay: str = ""  # where we were connected, "mail.example[10.0.0.3]:25", for the log
    reply: Reply | None = None  # that host's reply, if one was the cause
    # every host of the attempt that failed for this recipient, with why, in the order tried:
    # "mail.example[10.0.0.3]: host unreachable (...)" (a delivery by a backup MX comes after one)
    tried: tuple[str, ...] = ()


def delivered(reason: str) -> Outcome:
    return Outcome(Result.DELIVERED, "2.0.0", reason)


def transient(status: str, reason: str) -> Outcome:
    return Outcome(Result.TRANSIENT, status, reason)


def permanent(status: str, reason: str) -> Outcome:
    return Outcome(Result.PERMANENT, status, reason)


# -- routing: which hosts, in which order -------------------------------------------------


@dataclass(frozen=True)
class Route:
    """The MX hosts to try, best first; every one has at least one address."""

    domain: str
    hosts: tuple[MxHost, ...]


def address_literal(domain: str) -> str | None:
    """``[10.0.0.3]`` names a host by address and skips DNS (RFC 5321 §4.1.3, §5.1)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def plan_route(
    domain: str, answer: MxAnswer, rng: random.Random, *, local_names: Collection[str] = (),
    outside: str | None = None,
) -> Route | Outcome:
    """Order the MX hosts of ``domain`` for delivery, or say why there is nowhere to go.

    ``local_names`` are this MTA's own names: an MX that points back at us, and every MX
    not better than it, is dropped (RFC 5321 §5.1), or the message would loop. ``outside``:
    why ``domain`` lies outside the sealed lab, if it does (LabConfig.outside).
    """
    match answer:
        case DnsTemporaryFailure(refused=True) if outside is not None:
            # The lab DNS refuses every name outside its zones, and always will: bounce now
            # rather than after the whole retry period.
            return permanent("5.1.2", f"domain {outside}")
        case NoSuchDomain():
            return permanent("5.1.2", f"domain {domain} does not exist (DNS: NXDOMAIN)")
        case NullMx():
            return permanent("5.1.10", f"domain {domain} accepts no mail (null MX, RFC 7505)")
        case DnsTemporaryFailure(reason=reason):
            return transient("4.4.3", f"cannot look up MX for {domain}: {reason}")
        case ImplicitMx(addresses=()):
            return permanent("5.4.4", f"domain {domain} has no MX and no address record")
        case ImplicitMx(domain=name, addresses=addresses):
            return Route(domain, (MxHost(0, _norm(name), addresses),))
    hosts = answer.hosts
    ordered: list[MxHost] = []
    local = {_norm(n) for n in local_names}
    for _, group in groupby(sorted(hosts, key=lambda h: h.preference), key=lambda h: h.preference):
        same = list(group)
        if any(_norm(h.exchange) in local for h in same):
            break  # this preference and everything after it would loop back to us
        if len(same) > 1:
            rng.shuffle(same)  # RFC 5321 §5.1: spread load over equal preferences
        ordered.extend(same)
    if hosts and not ordered:  # the best MX is us: nowhere better to send it
        return permanent("5.4.6", f"mail for {domain} loops back to myself")
    usable = tuple(replace(h, exchange=_norm(h.exchange)) for h in ordered if h.addresses and _norm(h.exchange))
    if not usable:
        # Often a typo or a half-configured zone; the owner may fix it, so keep trying.
        said = "; ".join(f"{_norm(h.exchange)}: {h.lookup or 'no address'}" for h in ordered)
        return transient("4.4.4", f"no MX host of {domain} has an address ({said})")
    return Route(domain, usable)


# -- one attempt: the hosts of a route in turn --------------------------------------------


@dataclass(frozen=True)
class Target:
    host: MxHost
    address: str
    recipients: tuple[str, ...]  # the ones still open: offer only these to this host

    @property
    def relay(self) -> str:
        return f"{self.host.exchange}[{self.address}]"


@dataclass
class DeliveryAttempt:
    """One delivery attempt of a message to the recipients of one domain.

    Loop: ``t = next_target()``; run an SMTP session with ``t.recipients``; report with
    :meth:`host_result`; until ``next_target()`` is None; then read :meth:`outcomes`.
    """

    route: Route
    recipients: Sequence[str]
    max_targets: int = MAX_MX_TARGETS
    _open: dict[str, Outcome] = field(init=False)  # tried, not settled: the last failure
    _settled: dict[str, Outcome] = field(init=False, default_factory=dict)
    _tried: dict[str, list[str]] = field(init=False, default_factory=dict)  # failures so far, per recipient
    _targets: list[tuple[MxHost, str]] = field(init=False)

    def __post_init__(self) -> None:
        self._open = {
            r: transient("4.4.1", f"no MX host of {self.route.domain} was tried") for r in self.recipients
        }
        pairs = [(h, a) for h in self.route.hosts for a in h.addresses]
        self._targets = pairs[: self.max_targets]

    def next_target(self) -> Target | None:
        if not self._open or not self._targets:
            return None
        host, address = self._targets.pop(0)
        return Target(host, address, tuple(self._open))

    def host_result(
        self, target: Target, replies: Mapping[str, Reply], error: str = "", *, error_status: str = "4.4.1"
    ) -> None:
        """What ``target`` did for each offered recipient.

        ``replies`` holds each recipient's deciding reply (the end-of-data reply for an
        accepted one, or the refusal of MAIL, RCPT or DATA); a recipient without a reply
        got none, and ``error`` says why: RFC 3463 4.4.1 (no answer: refused, timed out)
        or 4.4.2 (the connection broke mid-session) as ``error_status``.
        """
        base = Outcome(Result.TRANSIENT, "4.4.1", error, remote_mta=target.host.exchange, relay=target.relay)
        for rcpt in target.recipients:
            reply = replies.get(rcpt)
            if reply is None:
                self._open[rcpt] = replace(base, status=error_status, reason=f"{target.relay}: {error}")
                self._tried.setdefault(rcpt, []).append(self._open[rcpt].reason)
                continue
            outcome = replace(
                base, result=reply_result(reply), status=reply.dsn_status,
                reason=f"host {target.relay} said: {reply}", reply=reply,
            )
            if outcome.result is Result.TRANSIENT:
                self._open[rcpt] = outcome  # the next MX may take it (RFC 5321 §5.1)
                self._tried.setdefault(rcpt, []).append(outcome.reason)
            else:
                del self._open[rcpt]
                self._settled[rcpt] = outcome

    @property
    def finished(self) -> bool:
        return not self._open or not self._targets

    def outcomes(self) -> dict[str, Outcome]:
        """One outcome per recipient; the open ones are transient with their last failure. Each
        carries the hosts that failed for it before (:attr:`Outcome.tried`)."""
        return {r: replace(self._settled.get(r) or self._open[r], tried=tuple(self._tried.get(r, ())))
                for r in self.recipients}


# -- the decision after an attempt --------------------------------------------------------


class Action(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"  # try again at state.next_attempt
    BOUNCED = "bounced"  # give up; send the sender a delivery status notification
    DROPPED = "dropped"  # give up; the sender was <>, so nobody to tell


EXPIRED = "4.4.7"  # RFC 3463: delivery time expired


@dataclass(frozen=True)
class Decision:
    action: Action
    state: RecipientState  # what the spool should record for the recipient


def retry_delay(retry: Retry, attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed try; the last interval repeats."""
    if not retry.schedule:
        return retry.give_up
    return retry.schedule[min(max(attempts, 1), len(retry.schedule)) - 1]


def decide(
    rcpt: RecipientState, outcome: Outcome, *, now: float, queued_at: float, retry: Retry, sender: str
) -> Decision:
    """The recipient's next state after an attempt that ended at ``now`` with ``outcome``."""
    attempts = rcpt.attempts + 1
    state = replace(
        rcpt,
        attempts=attempts,
        last_attempt=now,
        attempt_times=(*rcpt.attempt_times, now)[:MAX_ATTEMPT_TIMES],
        tried=outcome.tried,
        dsn_status=outcome.status,
        remote_mta=outcome.remote_mta,
        diagnostic=str(outcome.reply) if outcome.reply else "",
    )
    if outcome.result is Result.DELIVERED:
        return Decision(Action.SENT, replace(state, status=Status.DELIVERED, last_error=""))
    deadline = queued_at + retry.give_up
    if outcome.result is Result.TRANSIENT and now < deadline:
        # Never later than the deadline, so the last try happens when the lab said it would.
        next_attempt = min(now + retry_delay(retry, attempts), deadline)
        return Decision(Action.DEFERRED, replace(state, next_attempt=next_attempt, last_error=outcome.reason))
    reason = outcome.reason
    if outcome.result is Result.TRANSIENT:
        # RFC 3463 X.4.7 "delivery time expired"; the class stays 4: it never got a 5xx. The
        # bounce still says what the last attempt met (RFC 3464 §2.3.6): its reply, or its error.
        reason = f"delivery time expired after {attempts} attempts; last error: {outcome.reason}"
        state = replace(state, dsn_status=EXPIRED, attempt_error="" if outcome.reply else outcome.reason)
    action = Action.DROPPED if sender in ("", "<>") else Action.BOUNCED
    return Decision(action, replace(state, status=Status.BOUNCED, last_error=reason))
