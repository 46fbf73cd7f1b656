"""The relay's decisions: MX order, what a host's replies mean, and the retry schedule.

No sockets and no clock: answers, replies and times are data. The fake resolver below is the
same shape the delivery worker uses, so the lookups read as the worker would see them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.config import Retry
from services.smtp.relay import (
    MAX_ATTEMPT_TIMES,
    Action,
    DeliveryAttempt,
    DnsTemporaryFailure,
    ImplicitMx,
    MxAnswer,
    MxHost,
    MxRecords,
    NoSuchDomain,
    NullMx,
    Outcome,
    Result,
    Route,
    address_literal,
    decide,
    delivered,
    permanent,
    plan_route,
    reply_result,
    retry_delay,
    transient,
)
from services.smtp.spool import RecipientState, Status
from services.smtp.wire import Reply

T0 = 1_700_000_000.0
RETRY = Retry(schedule=(5.0, 10.0, 20.0), give_up=100.0)


@dataclass
class FakeResolver:
    zones: dict[str, MxAnswer]

    def resolve_mx(self, domain: str) -> MxAnswer:
        return self.zones.get(domain, NoSuchDomain())


RESOLVER = FakeResolver({
    "stevenchoy.test": MxRecords((
        MxHost(20, "backup.stevenchoy.test", ("10.0.0.20",)),
        MxHost(10, "mail.stevenchoy.test", ("10.0.0.10",)),
    )),
    "twins.test": MxRecords((
        MxHost(10, "a.twins.test", ("10.0.1.1",)),
        MxHost(10, "b.twins.test", ("10.0.1.2",)),
        MxHost(10, "c.twins.test", ("10.0.1.3",)),
        MxHost(5, "first.twins.test", ("10.0.1.5",)),
    )),
    "bare.test": ImplicitMx("bare.test", ("10.0.2.1", "fd00::1")),
    "empty.test": ImplicitMx("empty.test", ()),
    "nomail.test": NullMx(),
    "broken.test": DnsTemporaryFailure("DNS timeout"),
    "dangling.test": MxRecords((
        MxHost(10, "gone.dangling.test", ()),
        MxHost(20, "mail.dangling.test", ("10.0.3.1",)),
    )),
    "allgone.test": MxRecords((MxHost(10, "gone.allgone.test", ()),)),
})


def route(domain: str, seed: int = 0, **kw: object) -> Route | Outcome:
    return plan_route(domain, RESOLVER.resolve_mx(domain), random.Random(seed), **kw)  # type: ignore[arg-type]


def exchanges(r: Route | Outcome) -> list[str]:
    assert isinstance(r, Route), r
    return [h.exchange for h in r.hosts]


# -- MX order ------------------------------------------------------------------------------


def test_mx_hosts_are_tried_in_preference_order() -> None:
    assert exchanges(route("stevenchoy.test")) == ["mail.stevenchoy.test", "backup.stevenchoy.test"]


def test_equal_preferences_are_shuffled_by_the_injected_rng() -> None:
    orders = {tuple(exchanges(route("twins.test", seed))) for seed in range(40)}
    assert all(o[0] == "first.twins.test" for o in orders)  # the better preference stays first
    assert {o[1:] for o in orders} == {
        ("a.twins.test", "b.twins.test", "c.twins.test"), ("a.twins.test", "c.twins.test", "b.twins.test"),
        ("b.twins.test", "a.twins.test", "c.twins.test"), ("b.twins.test", "c.twins.test", "a.twins.test"),
        ("c.twins.test", "a.twins.test", "b.twins.test"), ("c.twins.test", "b.twins.test", "a.twins.test"),
    }
    assert exchanges(route("twins.test", 7)) == exchanges(route("twins.test", 7))  # same seed, same order


mx_hosts = st.lists(
    st.builds(MxHost, st.integers(0, 3), st.from_regex(r"[a-z]{1,6}\.test", fullmatch=True),
              st.lists(st.just("10.9.9.9"), max_size=2).map(tuple)),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(mx_hosts, st.integers(0, 2**32))
def test_route_order_holds_for_any_answer(hosts: list[MxHost], seed: int) -> None:
    result = plan_route("any.test", MxRecords(tuple(hosts)), random.Random(seed))
    resolvable = [h for h in hosts if h.addresses]
    if not resolvable:
        assert isinstance(result, Outcome) and result.result is Result.TRANSIENT and result.status == "4.4.4"
        return
    assert isinstance(result, Route)
    prefs = [h.preference for h in result.hosts]
    assert prefs == sorted(prefs)
    assert sorted(result.hosts, key=repr) == sorted(resolvable, key=repr)  # none lost, none invented


def test_implicit_mx_is_the_domain_itself() -> None:
    r = route("bare.test")
    assert isinstance(r, Route)
    assert r.hosts == (MxHost(0, "bare.test", ("10.0.2.1", "fd00::1")),)


def test_domain_without_mx_and_address_bounces() -> None:
    assert route("empty.test") == permanent("5.4.4", "domain empty.test has no MX and no address record")


def test_null_mx_bounces_at_once() -> None:
    r = route("nomail.test")
    assert isinstance(r, Outcome)
    assert (r.result, r.status) == (Result.PERMANENT, "5.1.10")
    assert "null MX" in r.reason


def test_nxdomain_bounces() -> None:
    r = route("nowhere.test")
    assert isinstance(r, Outcome)
    assert (r.result, r.status) == (Result.PERMANENT, "5.1.2")
    assert "does not exist" in r.reason


def test_temporary_dns_failure_is_retried() -> None:
    r = route("broken.test")
    assert isinstance(r, Outcome)
    assert (r.result, r.status) == (Result.TRANSIENT, "4.4.3")
    assert "DNS timeout" in r.reason


def test_unresolvable_mx_host_is_skipped() -> None:
    assert exchanges(route("dangling.test")) == ["mail.dangling.test"]
    r = route("allgone.test")
    assert isinstance(r, Outcome) and (r.result, r.status) == (Result.TRANSIENT, "4.4.4")


def test_mx_pointing_back_at_us_is_dropped_with_every_worse_one() -> None:
    # RFC 5321 §5.1: if we are an MX of the domain, only better MX hosts are candidates.
    assert exchanges(route("stevenchoy.test", local_names={"BACKUP.stevenchoy.test."})) == ["mail.stevenchoy.test"]
    r = route("stevenchoy.test", local_names={"mail.stevenchoy.test"})
    assert isinstance(r, Outcome) and (r.result, r.status) == (Result.PERMANENT, "5.4.6")


def test_address_literals() -> None:
    assert address_literal("[10.0.0.3]") == "10.0.0.3"
    assert address_literal("[IPv6:fd00::1]") == "fd00::1"
    assert address_literal("[mail.test]") is None
    assert address_literal("stevenchoy.test") is None


# -- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "text", "result", "status"), [
    (250, "2.0.0 Ok: queued as 123", Result.DELIVERED, "2.0.0"),
    (250, "Ok", Result.DELIVERED, "2.0.0"),
    (450, "4.2.1 Mailbox busy", Result.TRANSIENT, "4.2.1"),
    (421, "Service not available", Result.TRANSIENT, "4.0.0"),
    (550, "5.1.1 <betty@stevenchoy.test>: No such user", Result.PERMANENT, "5.1.1"),
    (556, "5.1.10 null MX", Result.PERMANENT, "5.1.10"),
    (550, "4.1.1 mismatched class", Result.PERMANENT, "5.0.0"),  # RFC 3463: classes must agree
    (354, "go ahead", Result.TRANSIENT, "4.0.0"),  # out of place: not a reason to bounce
    (-1, "", Result.TRANSIENT, "4.0.0"),  # smtplib's code for an unreadable reply
])
def test_reply_meaning(code: int, text: str, result: Result, status: str) -> None:
    reply = Reply.parse(code, [text])
    assert (reply_result(reply), reply.dsn_status) == (result, status)
    assert str(reply) == f"{code} {text}".rstrip()  # as the queue and the bounce show it


# -- one attempt over several hosts --------------------------------------------------------

TWO_MX = Route("stevenchoy.test", (
    MxHost(10, "mail.stevenchoy.test", ("10.0.0.10",)),
    MxHost(20, "backup.stevenchoy.test", ("10.0.0.20", "10.0.0.21")),
))
OK = Reply(250, "2.0.0", "Ok: queued")
BUSY = Reply(450, "4.2.0", "Mailbox busy")
UNKNOWN = Reply(550, "5.1.1", "No such user")


def test_first_host_takes_everything() -> None:
    a = DeliveryAttempt(TWO_MX, ["betty@stevenchoy.test", "carol@stevenchoy.test"])
    t = a.next_target()
    assert t is not None and (t.relay, t.recipients) == (
        "mail.stevenchoy.test[10.0.0.10]", ("betty@stevenchoy.test", "carol@stevenchoy.test"))
    a.host_result(t, {"betty@stevenchoy.test": OK, "carol@stevenchoy.test": UNKNOWN})
    assert a.next_target() is None and a.finished
    out = a.outcomes()
    assert out["betty@stevenchoy.test"].result is Result.DELIVERED
    carol = out["carol@stevenchoy.test"]
    assert (carol.result, carol.status, carol.remote_mta, carol.reply) == (
        Result.PERMANENT, "5.1.1", "mail.stevenchoy.test", UNKNOWN)
    assert "said: 550 5.1.1 No such user" in carol.reason


def test_refused_connection_moves_on_to_the_next_mx() -> None:
    a = DeliveryAttempt(TWO_MX, ["betty@stevenchoy.test"])
    t1 = a.next_target()
    assert t1 is not None
    a.host_result(t1, {}, "connection refused")
    t2 = a.next_target()
    assert t2 is not None and t2.relay == "backup.stevenchoy.test[10.0.0.20]"
    a.host_result(t2, {"betty@stevenchoy.test": OK})
    assert a.next_target() is None
    assert a.outcomes()["betty@stevenchoy.test"].remote_mta == "backup.stevenchoy.test"


def test_4xx_moves_only_the_deferred_recipients_on() -> None:
    a = DeliveryAttempt(TWO_MX, ["betty@stevenchoy.test", "carol@stevenchoy.test", "dave@stevenchoy.test"])
    t1 = a.next_target()
    assert t1 is not None
    a.host_result(t1, {"betty@stevenchoy.test": OK, "carol@stevenchoy.test": BUSY, "dave@stevenchoy.test": UNKNOWN})
    t2 = a.next_target()
    assert t2 is not None and t2.recipients == ("carol@stevenchoy.test",)
    a.host_result(t2, {"carol@stevenchoy.test": OK})
    assert {r: o.result for r, o in a.outcomes().items()} == {
        "betty@stevenchoy.test": Result.DELIVERED,
        "carol@stevenchoy.test": Result.DELIVERED,
        "dave@stevenchoy.test": Result.PERMANENT,
    }


def test_every_host_failing_makes_the_attempt_transient_with_the_last_error() -> None:
    a = DeliveryAttempt(TWO_MX, ["betty@stevenchoy.test"])
    errors = iter([({}, "connection refused", "4.4.1"), ({"betty@stevenchoy.test": BUSY}, "", "4.4.1"),
                   ({}, "connection closed by the server", "4.4.2")])
    tried = []
    while (t := a.next_target()) is not None:
        replies, error, status = next(errors)
        a.host_result(t, replies, error, error_status=status)
        tried.append(t.address)
    assert tried == ["10.0.0.10", "10.0.0.20", "10.0.0.21"]  # every address of every host
    out = a.outcomes()["betty@stevenchoy.test"]
    assert (out.result, out.status) == (Result.TRANSIENT, "4.4.2")
    assert out.reason == "backup.stevenchoy.test[10.0.0.21]: connection closed by the server"


def test_the_number_of_addresses_tried_is_limited() -> None:
    many = Route("big.test", tuple(MxHost(i, f"mx{i}.big.test", (f"10.1.0.{i}",)) for i in range(9)))
    a = DeliveryAttempt(many, ["x@big.test"], max_targets=3)
    count = 0
    while (t := a.next_target()) is not None:
        a.host_result(t, {}, "timed out")
        count += 1
    assert count == 3
    assert a.outcomes()["x@big.test"].status == "4.4.1"


# -- what happens next ---------------------------------------------------------------------

BETTY = RecipientState("betty@stevenchoy.test", next_attempt=T0)
REFUSED = Outcome(Result.TRANSIENT, "4.4.1", "mail.stevenchoy.test[10.0.0.10]: connection refused",
                  remote_mta="mail.stevenchoy.test", relay="mail.stevenchoy.test[10.0.0.10]")


def test_delivered() -> None:
    sent = Outcome(Result.DELIVERED, "2.0.0", "host said: 250 Ok", remote_mta="mail.stevenchoy.test", reply=OK)
    d = decide(BETTY, sent, now=T0 + 1, queued_at=T0, retry=RETRY, sender="andy@ouhk.test")
    assert d.action is Action.SENT
    assert d.state == RecipientState("betty@stevenchoy.test", Status.DELIVERED, attempts=1, next_attempt=T0,
                                     last_attempt=T0 + 1, dsn_status="2.0.0", remote_mta="mail.stevenchoy.test",
                                     diagnostic="250 2.0.0 Ok: queued", attempt_times=(T0 + 1,))


def test_retry_delay_repeats_the_last_interval() -> None:
    assert [retry_delay(RETRY, n) for n in range(1, 7)] == [5, 10, 20, 20, 20, 20]
    assert retry_delay(Retry(schedule=(), give_up=60), 1) == 60


def test_a_message_lifecycle_of_transient_failures_until_give_up() -> None:
    """A playbook: each line is (time of the attempt) -> (action, next attempt)."""
    state, now, seen = BETTY, T0, []
    while True:
        d = decide(state, REFUSED, now=now, queued_at=T0, retry=RETRY, sender="andy@ouhk.test")
        seen.append((now - T0, d.action, d.state.next_attempt - T0 if d.action is Action.DEFERRED else None))
        if d.action is not Action.DEFERRED:
            break
        state, now = d.state, d.state.next_attempt
    assert seen == [
        (0, Action.DEFERRED, 5),
        (5, Action.DEFERRED, 15),
        (15, Action.DEFERRED, 35),
        (35, Action.DEFERRED, 55),  # the last interval repeats
        (55, Action.DEFERRED, 75),
        (75, Action.DEFERRED, 95),
        (95, Action.DEFERRED, 100),  # never past the give-up time
        (100, Action.BOUNCED, None),
    ]
    assert d.state.status is Status.BOUNCED and d.state.attempts == 8
    assert d.state.dsn_status == "4.4.7"  # RFC 3463: delivery time expired
    assert d.state.last_error.startswith("delivery time expired after 8 attempts; last error: ")
    assert "connection refused" in d.state.last_error
    # What the bounce's Diagnostic-Code tells: the last attempt's own error, no SMTP reply having come.
    assert (d.state.attempt_error, d.state.diagnostic) == (REFUSED.reason, "")
    assert d.state.last_attempt == T0 + 100


def test_given_up_after_a_4xx_the_last_reply_is_the_diagnostic() -> None:
    busy = Outcome(Result.TRANSIENT, "4.2.0", "host mail said: 450 4.2.0 Mailbox busy",
                   remote_mta="mail.stevenchoy.test", reply=BUSY)
    d = decide(BETTY, busy, now=T0 + 100, queued_at=T0, retry=RETRY, sender="andy@ouhk.test")
    assert d.action is Action.BOUNCED
    assert (d.state.dsn_status, d.state.diagnostic, d.state.attempt_error) == ("4.4.7", "450 4.2.0 Mailbox busy", "")


def test_deferred_state_keeps_the_reason_and_the_reply() -> None:
    busy = Outcome(Result.TRANSIENT, "4.2.0", "host mail said: 450 4.2.0 Mailbox busy",
                   remote_mta="mail.stevenchoy.test", reply=BUSY)
    d = decide(BETTY, busy, now=T0 + 2, queued_at=T0, retry=RETRY, sender="andy@ouhk.test")
    assert d.action is Action.DEFERRED
    assert d.state.next_attempt == T0 + 7  # from the attempt's end, not from the queue time
    assert (d.state.last_error, d.state.diagnostic, d.state.dsn_status) == (
        "host mail said: 450 4.2.0 Mailbox busy", "450 4.2.0 Mailbox busy", "4.2.0")


def test_5xx_bounces_at_once() -> None:
    refused = Outcome(Result.PERMANENT, "5.1.1", "host said: 550 5.1.1 No such user",
                      remote_mta="mail.stevenchoy.test", reply=UNKNOWN)
    d = decide(BETTY, refused, now=T0 + 1, queued_at=T0, retry=RETRY, sender="andy@ouhk.test")
    assert d.action is Action.BOUNCED
    assert (d.state.status, d.state.dsn_status, d.state.diagnostic) == (
        Status.BOUNCED, "5.1.1", "550 5.1.1 No such user")


@pytest.mark.parametrize("sender", ["", "<>"])
def test_a_bounce_is_never_bounced(sender: str) -> None:
    d = decide(BETTY, permanent("5.1.2", "no such domain"), now=T0, queued_at=T0, retry=RETRY, sender=sender)
    assert d.action is Action.DROPPED and d.state.status is Status.BOUNCED
    d = decide(BETTY, REFUSED, now=T0 + 200, queued_at=T0, retry=RETRY, sender=sender)
    assert d.action is Action.DROPPED


def test_bounced_after_give_up_even_if_attempts_were_rare() -> None:
    # A message that sat in a stopped MTA past its give-up time gets one try, then bounces.
    d = decide(BETTY, transient("4.4.3", "DNS timeout"), now=T0 + 500, queued_at=T0, retry=RETRY,
               sender="andy@ouhk.test")
    assert d.action is Action.BOUNCED and d.state.attempts == 1


@settings(max_examples=200, deadline=None)
@given(
    attempts=st.integers(0, 50),
    elapsed=st.floats(0, 1000),
    result=st.sampled_from(list(Result)),
    schedule=st.lists(st.floats(0.5, 100), min_size=1, max_size=5).map(tuple),
    give_up=st.floats(1, 500),
)
def test_decide_invariants(attempts: int, elapsed: float, result: Result, schedule: tuple[float, ...],
                           give_up: float) -> None:
    retry = Retry(schedule=schedule, give_up=give_up)
    outcome = {Result.DELIVERED: delivered("ok"), Result.TRANSIENT: transient("4.0.0", "later"),
               Result.PERMANENT: permanent("5.0.0", "no")}[result]
    rcpt = RecipientState("x@y.test", attempts=attempts)
    d = decide(rcpt, outcome, now=T0 + elapsed, queued_at=T0, retry=retry, sender="a@b.test")
    assert d.state.attempts == attempts + 1 and d.state.last_attempt == T0 + elapsed
    if d.action is Action.DEFERRED:
        assert d.state.status is Status.PENDING
        assert T0 + elapsed < d.state.next_attempt <= T0 + give_up
    else:
        assert d.state.status is {Action.SENT: Status.DELIVERED}.get(d.action, Status.BOUNCED)
    assert (d.action is Action.SENT) == (result is Result.DELIVERED)
    assert (d.action is Action.DEFERRED) == (result is Result.TRANSIENT and elapsed < give_up)


def test_the_hosts_that_failed_before_the_one_that_took_it_stay_in_the_outcome() -> None:
    route = Route("backup.test", (MxHost(10, "mx1.backup.test", ("10.0.0.1",)),
                                  MxHost(20, "mx2.backup.test", ("10.0.0.2",))))
    a = DeliveryAttempt(route, ["carol@backup.test"])
    first = a.next_target()
    assert first is not None
    a.host_result(first, {}, "host unreachable (no answer to ARP: the host is down or off the network)")
    second = a.next_target()
    assert second is not None
    a.host_result(second, {"carol@backup.test": OK})
    outcome = a.outcomes()["carol@backup.test"]
    assert outcome.result is Result.DELIVERED
    assert outcome.tried == ("mx1.backup.test[10.0.0.1]: host unreachable (no answer to ARP: the host is down or "
                             "off the network)",)
    d = decide(BETTY, outcome, now=T0 + 3, queued_at=T0, retry=RETRY, sender="andy@ouhk.test")
    assert d.state.tried == outcome.tried and d.state.attempt_times == (T0 + 3,)


def test_attempt_times_are_kept_for_the_first_attempts_only() -> None:
    state = replace(BETTY, attempt_times=tuple(float(t) for t in range(MAX_ATTEMPT_TIMES)))
    d = decide(state, REFUSED, now=T0, queued_at=T0, retry=RETRY, sender="andy@ouhk.test")
    assert len(d.state.attempt_times) == MAX_ATTEMPT_TIMES and d.state.attempt_times[-1] == MAX_ATTEMPT_TIMES - 1


def test_a_failed_connect_in_the_words_of_the_queue() -> None:
    import errno

    from services.smtp.client import describe

    assert describe(OSError(errno.EHOSTUNREACH, "No route to host")) == (
        "host unreachable (no answer to ARP: the host is down or off the network)")
    assert describe(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == "connection refused"
    assert describe(TimeoutError()) == "timed out"
