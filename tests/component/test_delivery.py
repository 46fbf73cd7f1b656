"""The delivery worker against a real SMTP server on 127.0.0.1 playing the recipient MX.

The MX is an aiosmtpd ``Controller`` on port 0 whose replies follow a script (accept, 4xx,
5xx); the worker finds it through a fake resolver and a fake clock, so a retry "an hour
later" is one assignment. The last tests point the real dnspython resolver at a DNS stub on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.controller import Controller

from services.config import Retry
from services.smtp import client, delivery, transaction
from services.smtp.delivery import DeliveryWorker, DnsMxResolver
from services.smtp.relay import (
    DnsTemporaryFailure,
    ImplicitMx,
    MxAnswer,
    MxHost,
    MxRecords,
    NoSuchDomain,
    NullMx,
    Outcome,
    Result,
    Target,
    plan_route,
)
from services.smtp.spool import Spool, Status
from tests.labconfig import lab_config

T0 = 1_700_000_000.0
MTA_FQDN = "smtp.ouhk.example"
CONFIG = lab_config("smtp", addresses={"smtp": "127.0.0.1", "mail": "127.0.0.1"}, subnet="127.0.0.0/8",
                    nameserver="127.0.0.1", retry=Retry(schedule=(5.0, 10.0), give_up=60.0))
MESSAGE = (b"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: Lunch?\r\n"
           b"Message-ID: <1@ouhk.example>\r\n\r\nShall we?\r\n.A line with a leading dot\r\n")


# -- the MX --------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    helo: str
    session: int


@dataclass
class ScriptedMx:
    """An aiosmtpd handler: replies come from the scripts (consumed in order), else 250.

    With ``pipelining`` it offers PIPELINING (RFC 2920), as the lab's MX does, and the client
    sends MAIL, RCPT and DATA in one write: aiosmtpd then reads them from its buffer in turn.
    """

    pipelining: bool = False
    mail_replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    sessions: int = 0
    rcpt_seen: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        session.number = self.sessions
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.mail_replies:
            return self.mail_replies.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        script = self.rcpt_replies.get(address)
        reply = script.pop(0) if script else "250 2.1.5 Recipient ok"
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        self.rcpt_seen.set()
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      session.host_name, session.number))
        self.arrived.set()
        return "250 2.0.0 Message accepted for delivery"


class PortZeroController(Controller):
    """aiosmtpd 1.4 probes its own port after binding; with port 0, ask the socket which."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@contextlib.contextmanager
def running_mx(handler: ScriptedMx, port: int = 0) -> Iterator[int]:
    controller = PortZeroController(handler, hostname="127.0.0.1", port=port,
                                    server_hostname="mail.stevenchoy.example", ready_timeout=5.0)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelining"])
def mx(request: pytest.FixtureRequest) -> Iterator[tuple[ScriptedMx, int]]:
    handler = ScriptedMx(pipelining=request.param)
    with running_mx(handler) as port:
        yield handler, port


def closed_port() -> socket.socket:
    """A port that refuses connections: bound, never listening. Close it to free the port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


# -- the worker ----------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeResolver:
    zones: dict[str, MxAnswer]
    asked: list[str] = field(default_factory=list)

    def resolve_mx(self, domain: str) -> MxAnswer:
        self.asked.append(domain)
        answer = self.zones.get(domain, NoSuchDomain())
        if isinstance(answer, Exception):
            raise answer
        return answer


LAB_DNS = {
    "stevenchoy.example": MxRecords((MxHost(10, "mail.stevenchoy.example", ("127.0.0.1",)),)),
    "twomx.test": MxRecords((MxHost(10, "mx1.twomx.test", ("127.0.0.1",)),
                             MxHost(20, "mx2.twomx.test", ("127.0.0.1",)))),
    "nomail.test": NullMx(),
    "flaky.test": DnsTemporaryFailure("DNS timeout"),
}


@dataclass
class Lab:
    spool: Spool
    clock: Clock
    resolver: FakeResolver
    worker: DeliveryWorker
    local: list[tuple[str, str, bytes]]  # what local_delivery got
    local_fails: set[str]

    def enqueue(self, sender: str, recipients: list[str], data: bytes = MESSAGE) -> str:
        return self.spool.enqueue(sender, recipients, data, now=self.clock())

    def run_once(self) -> int:
        return asyncio.run(self.worker.run_once())

    def bounces(self) -> list[bytes]:
        return [data for sender, _, data in self.local if sender == ""]


def make_lab(tmp_path: Path, port: int, zones: dict[str, Any] | None = None) -> Lab:
    spool = Spool(tmp_path / "queue")
    clock = Clock()
    resolver = FakeResolver(dict(LAB_DNS, **(zones or {})))
    local: list[tuple[str, str, bytes]] = []
    fails: set[str] = set()

    def local_delivery(sender: str, rcpt: str, data: bytes) -> None:
        if rcpt in fails:
            raise OSError(28, "No space left on device")
        local.append((sender, rcpt, data))

    worker = DeliveryWorker(CONFIG, spool, local_delivery=local_delivery, resolver=resolver, clock=clock,
                            smtp_port=port, rng=random.Random(1))
    return Lab(spool, clock, resolver, worker, local, fails)


def parse_report(raw: bytes) -> list[dict[str, str]]:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert msg.get_content_type() == "multipart/report"
    return [dict(block.items()) for block in msg.get_payload()[1].get_payload()]


# -- delivery ------------------------------------------------------------------------------


def test_delivered_once(tmp_path: Path, mx: tuple[ScriptedMx, int], caplog: pytest.LogCaptureFixture) -> None:
    handler, port = mx
    lab = make_lab(tmp_path, port)
    qid = lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
    with caplog.at_level(logging.INFO, "services.smtp.delivery"):
        assert lab.run_once() == 1
    [got] = handler.received
    assert (got.mail_from, got.rcpt_tos, got.helo) == ("andy@ouhk.example", ["betty@stevenchoy.example"], MTA_FQDN)
    assert got.data == MESSAGE  # byte for byte, the leading dot included (stuffed and unstuffed)
    assert lab.spool.entries() == []
    assert lab.resolver.asked == ["stevenchoy.example"]
    assert f"{qid}: to=<betty@stevenchoy.example>, relay=mail.stevenchoy.example[127.0.0.1]:{port}, attempt=1" \
        in caplog.text
    assert "status=sent" in caplog.text
    assert lab.run_once() == 0  # nothing left, nothing sent twice
    assert len(handler.received) == 1


def test_4xx_then_a_retry_delivers(tmp_path: Path, mx: tuple[ScriptedMx, int]) -> None:
    handler, port = mx
    handler.rcpt_replies["betty@stevenchoy.example"] = ["450 4.2.0 Mailbox busy, try later"]
    lab = make_lab(tmp_path, port)
    qid = lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
    lab.run_once()
    assert handler.received == []
    betty = lab.spool.entry(qid).recipient("betty@stevenchoy.example")
    assert (betty.status, betty.attempts, betty.next_attempt) == (Status.PENDING, 1, T0 + 5)
    assert betty.last_error == "host mail.stevenchoy.example[127.0.0.1] said: 450 4.2.0 Mailbox busy, try later"
    assert (betty.dsn_status, betty.remote_mta) == ("4.2.0", "mail.stevenchoy.example")
    assert lab.run_once() == 0  # not due yet
    lab.clock.now = T0 + 5
    assert lab.run_once() == 1
    assert [r.rcpt_tos for r in handler.received] == [["betty@stevenchoy.example"]]
    assert lab.spool.entries() == []


def test_refused_connection_then_a_retry_delivers(tmp_path: Path) -> None:
    blocker = closed_port()
    port = blocker.getsockname()[1]
    lab = make_lab(tmp_path, port)
    qid = lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
    lab.run_once()
    betty = lab.spool.entry(qid).recipient("betty@stevenchoy.example")
    assert (betty.status, betty.attempts, betty.dsn_status) == (Status.PENDING, 1, "4.4.1")
    assert betty.last_error == "mail.stevenchoy.example[127.0.0.1]: connection refused"
    blocker.close()
    handler = ScriptedMx()
    with running_mx(handler, port):  # the MX comes back on the same address
        lab.clock.now = betty.next_attempt
        lab.run_once()
    assert len(handler.received) == 1 and lab.spool.entries() == []


def test_transient_failure_of_one_mx_tries_the_next_in_the_same_attempt(
        tmp_path: Path, mx: tuple[ScriptedMx, int], caplog: pytest.LogCaptureFixture) -> None:
    handler, port = mx
    handler.mail_replies = ["451 4.3.0 Greylisted, try another host"]
    lab = make_lab(tmp_path, port)
    lab.enqueue("andy@ouhk.example", ["carol@twomx.test"])
    with caplog.at_level(logging.INFO, "services.smtp.delivery"):
        lab.run_once()
    assert [r.rcpt_tos for r in handler.received] == [["carol@twomx.test"]]
    assert "relay=mx2.twomx.test[127.0.0.1]" in caplog.text and "status=sent" in caplog.text


def test_a_failed_primary_is_logged_and_recorded_before_the_backup_takes_it(
        tmp_path: Path, mx: tuple[ScriptedMx, int], caplog: pytest.LogCaptureFixture) -> None:
    # issue 14, defect 7: the primary's failure was in neither the log nor the queue record.
    handler, port = mx
    backup = MxRecords((MxHost(10, "mx1.backup.test", ("127.0.0.2",)),  # nothing listens there
                        MxHost(20, "mx2.backup.test", ("127.0.0.1",))))
    lab = make_lab(tmp_path, port, {"backup.test": backup})
    lab.enqueue("andy@ouhk.example", ["carol@backup.test"])
    with caplog.at_level(logging.INFO, "services.smtp.delivery"):
        lab.run_once()
    assert [r.rcpt_tos for r in handler.received] == [["carol@backup.test"]]
    assert f"relay=mx1.backup.test[127.0.0.2]:{port} failed: connection refused; trying the next MX" in caplog.text
    assert caplog.text.index("mx1.backup.test[127.0.0.2]") < caplog.text.index("status=sent")
    # With both down, the queue record names every host tried and why, and when each attempt was.
    lab = make_lab(tmp_path / "down", closed_port().getsockname()[1], {"backup.test": backup})
    qid = lab.enqueue("andy@ouhk.example", ["carol@backup.test"])
    lab.run_once()
    carol = lab.spool.entry(qid).recipient("carol@backup.test")
    assert carol.tried == ("mx1.backup.test[127.0.0.2]: connection refused",
                           "mx2.backup.test[127.0.0.1]: connection refused")
    assert carol.attempt_times == (T0,)
    assert carol.last_error == "mx2.backup.test[127.0.0.1]: connection refused"


def test_5xx_bounces_to_the_sender_through_local_delivery(tmp_path: Path, mx: tuple[ScriptedMx, int]) -> None:
    handler, port = mx
    handler.rcpt_replies["nobody@stevenchoy.example"] = ["550 5.1.1 <nobody@stevenchoy.example>: No such user"]
    lab = make_lab(tmp_path, port)
    qid = lab.enqueue("andy@ouhk.example", ["nobody@stevenchoy.example", "betty@stevenchoy.example"])
    assert lab.run_once() == 2  # the message, then its bounce in the same pass
    assert [r.rcpt_tos for r in handler.received] == [["betty@stevenchoy.example"]]  # the good one went
    [(sender, rcpt, raw)] = lab.local
    assert (sender, rcpt) == ("", "andy@ouhk.example")  # bounces travel with the null sender
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert msg["From"] == f"Mail Delivery System <MAILER-DAEMON@{MTA_FQDN}>" and msg["To"] == "andy@ouhk.example"
    per_message, nobody = parse_report(raw)
    assert per_message["Reporting-MTA"] == f"dns; {MTA_FQDN}"
    assert nobody["Final-Recipient"] == "rfc822; nobody@stevenchoy.example"
    assert (nobody["Action"], nobody["Status"]) == ("failed", "5.1.1")
    assert nobody["Remote-MTA"] == "dns; mail.stevenchoy.example"
    assert nobody["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@stevenchoy.example>: No such user"
    assert "Subject: Lunch?" in msg.get_payload()[2].get_content()
    assert qid in msg.get_payload()[0].get_content()
    assert lab.spool.entries() == []


def test_several_messages_to_one_mx_share_sessions(tmp_path: Path, mx: tuple[ScriptedMx, int]) -> None:
    handler, port = mx
    lab = make_lab(tmp_path, port)
    count = delivery.DELIVERY_CONCURRENCY * 3
    for i in range(count):
        lab.enqueue(f"andy+{i}@ouhk.example", ["betty@stevenchoy.example"], MESSAGE + f"{i}\r\n".encode())
    assert lab.run_once() == count
    # Queued in the same (fake) second, and delivered concurrently: in no particular order.
    assert sorted((r.mail_from, r.data) for r in handler.received) == sorted(
        (f"andy+{i}@ouhk.example", MESSAGE + f"{i}\r\n".encode()) for i in range(count))
    # at most one session per delivery slot, each carrying several transactions
    sessions = {r.session for r in handler.received}
    assert 1 <= len(sessions) <= delivery.DELIVERY_CONCURRENCY
    assert lab.spool.entries() == []


def test_null_mx_bounces_at_once(tmp_path: Path, mx: tuple[ScriptedMx, int]) -> None:
    _, port = mx
    lab = make_lab(tmp_path, port)
    lab.enqueue("andy@ouhk.example", ["someone@nomail.test"])
    lab.run_once()
    [bounce] = lab.bounces()
    _, rcpt = parse_report(bounce)
    assert (rcpt["Status"], rcpt["Final-Recipient"]) == ("5.1.10", "rfc822; someone@nomail.test")
    assert "Remote-MTA" not in rcpt
    assert lab.spool.entries() == []


def test_a_failed_bounce_is_dropped_not_bounced(tmp_path: Path, mx: tuple[ScriptedMx, int],
                                                caplog: pytest.LogCaptureFixture) -> None:
    handler, port = mx
    handler.rcpt_replies["gone@stevenchoy.example"] = ["550 5.1.1 No such user"]
    lab = make_lab(tmp_path, port)
    lab.enqueue("", ["gone@stevenchoy.example"])
    with caplog.at_level(logging.INFO, "services.smtp.delivery"):
        assert lab.run_once() == 1
    assert lab.local == [] and lab.spool.entries() == []
    assert "status=dropped (not bouncing a bounce" in caplog.text


def test_give_up_after_the_retry_period_bounces_with_4_4_7(tmp_path: Path) -> None:
    blocker = closed_port()
    lab = make_lab(tmp_path, blocker.getsockname()[1])
    lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
    schedule = []
    while lab.spool.entries():
        assert lab.run_once() >= 1
        schedule.append(lab.clock.now - T0)
        nxt = lab.spool.next_due()
        if nxt is not None:
            lab.clock.now = nxt
    blocker.close()
    assert schedule == [0, 5, 15, 25, 35, 45, 55, 60]
    _, rcpt = parse_report(lab.bounces()[0])
    assert rcpt["Status"] == "4.4.7" and rcpt["Action"] == "failed"
    # The last attempt's own failure, not only "expired" (RFC 3464 §2.3.6): no reply, so a private type.
    assert re.fullmatch(r"X-maillab; mail\.stevenchoy\.example\[127\.0\.0\.1\]\S*: .*refused.*",
                        rcpt["Diagnostic-Code"], re.IGNORECASE), rcpt
    assert parsedate_to_datetime(rcpt["Last-Attempt-Date"]).timestamp() == T0 + 60


def test_postmaster_of_a_local_domain_is_delivered_to_its_alias(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, 9)
    lab.enqueue("betty@stevenchoy.example", ["PostMaster@ouhk.example"])
    assert lab.run_once() == 1
    assert [(s, r) for s, r, _ in lab.local] == [("betty@stevenchoy.example", "PostMaster@ouhk.example")]
    assert lab.spool.entries() == []  # delivered, no bounce (it was "no mailbox for postmaster@ouhk.example")


def test_give_up_after_4xx_replies_reports_the_last_reply(tmp_path: Path, mx: tuple[ScriptedMx, int]) -> None:
    handler, port = mx
    handler.rcpt_replies["betty@stevenchoy.example"] = ["450 4.2.0 Mailbox busy, try later"] * 20
    lab = make_lab(tmp_path, port)
    lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
    while lab.spool.entries():
        assert lab.run_once() >= 1
        nxt = lab.spool.next_due()
        if nxt is not None:
            lab.clock.now = nxt
    _, rcpt = parse_report(lab.bounces()[0])
    assert (rcpt["Status"], rcpt["Diagnostic-Code"]) == ("4.4.7", "smtp; 450 4.2.0 Mailbox busy, try later")
    assert rcpt["Remote-MTA"] == "dns; mail.stevenchoy.example" and "Last-Attempt-Date" in rcpt


def test_a_silent_mx_times_out_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "CONNECT_TIMEOUT", 0.3)  # the lab's 5 s would slow the suite
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the kernel completes the handshake; nobody ever says 220
    try:
        lab = make_lab(tmp_path, silent.getsockname()[1])
        qid = lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
        lab.run_once()
    finally:
        silent.close()
    betty = lab.spool.entry(qid).recipient("betty@stevenchoy.example")
    assert (betty.status, betty.dsn_status, betty.next_attempt) == (Status.PENDING, "4.4.1", T0 + 5)
    assert betty.last_error == "mail.stevenchoy.example[127.0.0.1]: timed out"


def test_dns_temporary_failure_is_retried(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, 0)  # never connects: there is no route
    qid = lab.enqueue("andy@ouhk.example", ["x@flaky.test"])
    lab.run_once()
    rcpt = lab.spool.entry(qid).recipient("x@flaky.test")
    assert (rcpt.status, rcpt.dsn_status) == (Status.PENDING, "4.4.3")


def test_local_recipients_and_unknown_local_users(tmp_path: Path) -> None:
    blocker = closed_port()  # betty's MX is down: her bounce stays queued
    lab = make_lab(tmp_path, blocker.getsockname()[1])
    qid = lab.enqueue("betty@stevenchoy.example", ["andy@ouhk.example", "ghost@ouhk.example"])
    # andy's mailbox write fails (deferred); ghost has no mailbox (a bounce to betty, over SMTP).
    lab.local_fails.add("andy@ouhk.example")
    lab.run_once()
    andy = lab.spool.entry(qid).recipient("andy@ouhk.example")
    assert (andy.status, andy.dsn_status) == (Status.PENDING, "4.3.0")
    assert "no space left on device" in andy.last_error
    assert lab.spool.entry(qid).recipient("ghost@ouhk.example").status is Status.BOUNCED
    bounces = [e for e in lab.spool.entries() if e.sender == ""]
    assert [r.address for r in bounces[0].recipients] == ["betty@stevenchoy.example"]
    lab.local_fails.clear()
    lab.clock.now = andy.next_attempt
    lab.run_once()
    assert [(s, r) for s, r, _ in lab.local] == [("betty@stevenchoy.example", "andy@ouhk.example")]
    blocker.close()


def test_one_broken_message_does_not_stop_the_others(tmp_path: Path, mx: tuple[ScriptedMx, int],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    handler, port = mx
    lab = make_lab(tmp_path, port, {"bug.test": RuntimeError("a bug in a resolver")})
    bad = lab.enqueue("andy@ouhk.example", ["x@bug.test"])
    lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
    with caplog.at_level(logging.INFO, "services.smtp.delivery"):
        assert lab.run_once() == 2
    assert len(handler.received) == 1
    rcpt = lab.spool.entry(bad).recipient("x@bug.test")
    assert (rcpt.status, rcpt.dsn_status, rcpt.next_attempt) == (Status.PENDING, "4.3.0", T0 + 5)
    assert "internal error" in caplog.text and "RuntimeError: a bug in a resolver" in caplog.text


def test_run_wakes_on_enqueue_and_flush(tmp_path: Path, mx: tuple[ScriptedMx, int]) -> None:
    handler, port = mx
    handler.rcpt_replies["betty@stevenchoy.example"] = ["451 4.3.0 later"]
    lab = make_lab(tmp_path, port)

    async def scenario() -> None:
        task = asyncio.create_task(lab.worker.run())
        try:
            lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
            lab.worker.wake()
            # The first try gets 451; the next is 5 s away on the fake clock, which never moves.
            assert await asyncio.to_thread(handler.rcpt_seen.wait, 5.0)
            assert handler.received == []
            lab.worker.flush()  # what SIGUSR1 does: retry now
            assert await asyncio.to_thread(handler.arrived.wait, 5.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert len(handler.received) == 1


# -- the real resolver against a DNS stub on 127.0.0.1 --------------------------------------


class DnsStub:
    """Answers from a table: name -> {type: [rdata text]}; a name absent is NXDOMAIN."""

    def __init__(self, records: dict[str, dict[str, list[str]]], silent: bool = False,
                 refused: tuple[str, ...] = (), additional: bool = False) -> None:
        self.records = records
        self.silent = silent
        self.additional = additional  # put each MX host's A and AAAA in the additional section
        self.asked: list[tuple[str, str]] = []
        self.refused = refused  # names (and their subdomains) answered REFUSED, as the lab DNS does outside its zones
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.silent:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            q = query.question[0]
            name = q.name.to_text(omit_final_dot=True).lower()
            if any(name == r or name.endswith("." + r) for r in self.refused):
                response.set_rcode(dns.rcode.REFUSED)
            elif name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                rtype = dns.rdatatype.to_text(q.rdtype)
                self.asked.append((name, rtype))
                data = self.records[name].get(rtype, [])
                if data:
                    response.answer.append(dns.rrset.from_text_list(q.name, 300, dns.rdataclass.IN, rtype, data))
                for mx in data if self.additional and rtype == "MX" else ():
                    host = mx.split()[1].rstrip(".").lower()
                    for atype in ("A", "AAAA"):
                        if self.records.get(host, {}).get(atype):
                            response.additional.append(dns.rrset.from_text_list(
                                host + ".", 300, dns.rdataclass.IN, atype, self.records[host][atype]))
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dns_stub() -> Iterator[DnsStub]:
    stub = DnsStub({
        "stevenchoy.test": {"MX": ["20 backup.stevenchoy.test.", "10 mail.stevenchoy.test.", "30 gone.test."]},
        "mail.stevenchoy.test": {"A": ["10.0.0.3"]},
        "backup.stevenchoy.test": {"A": ["10.0.0.4"], "AAAA": ["fd00::4"]},
        "bare.test": {"A": ["10.0.0.5"]},
        "nomail.test": {"MX": ["0 ."]},
        "empty.test": {"TXT": ['"v=spf1 -all"']},
        "nohost.test": {"MX": ["10 mail.nohost.test.", "20 outside.example.net."]},
        "mail.nohost.test": {"TXT": ['"no address here"']},
    }, refused=("gmail.com", "example.net"))
    yield stub
    stub.close()


def test_dns_resolver_maps_answers_to_the_model(dns_stub: DnsStub) -> None:
    resolver = DnsMxResolver("127.0.0.1", port=dns_stub.port)
    answer = resolver.resolve_mx("stevenchoy.test")
    assert isinstance(answer, MxRecords)
    assert sorted(answer.hosts, key=lambda h: h.preference) == [
        MxHost(10, "mail.stevenchoy.test", ("10.0.0.3",)),
        MxHost(20, "backup.stevenchoy.test", ("10.0.0.4", "fd00::4")),
        MxHost(30, "gone.test", (), lookup="NXDOMAIN: no such name"),  # kept, without addresses
    ]
    assert resolver.resolve_mx("bare.test") == ImplicitMx("bare.test", ("10.0.0.5",))
    assert resolver.resolve_mx("empty.test") == ImplicitMx("empty.test", ())
    assert resolver.resolve_mx("nomail.test") == NullMx()
    assert resolver.resolve_mx("nowhere.test") == NoSuchDomain()
    assert resolver.resolve_mx("bad..name.test") == NoSuchDomain()  # never asked: it cannot exist


def test_dns_resolver_takes_mx_hosts_addresses_from_the_additional_section(dns_stub: DnsStub) -> None:
    # The same answers as without the additional section, in one question instead of one MX plus
    # an A and an AAAA per host; a host the section leaves out (gone.test) is still asked for.
    dns_stub.additional = True
    answer = DnsMxResolver("127.0.0.1", port=dns_stub.port).resolve_mx("stevenchoy.test")
    assert isinstance(answer, MxRecords)
    assert sorted(answer.hosts, key=lambda h: h.preference) == [
        MxHost(10, "mail.stevenchoy.test", ("10.0.0.3",)),
        MxHost(20, "backup.stevenchoy.test", ("10.0.0.4", "fd00::4")),
        MxHost(30, "gone.test", (), lookup="NXDOMAIN: no such name"),
    ]
    assert [q for q in dns_stub.asked if q[0] != "gone.test"] == [("stevenchoy.test", "MX")]


def test_dns_resolver_names_each_mx_host_s_dns_answer(dns_stub: DnsStub) -> None:
    """"no MX host of nohost.test has an address" named no host and read the same for NXDOMAIN and REFUSED."""
    resolver = DnsMxResolver("127.0.0.1", port=dns_stub.port)
    answer = resolver.resolve_mx("nohost.test")
    assert isinstance(answer, MxRecords)
    assert sorted(answer.hosts, key=lambda h: h.preference) == [
        MxHost(10, "mail.nohost.test", (), lookup="no A or AAAA record"),
        MxHost(20, "outside.example.net", (), lookup="the name server answered REFUSED"),
    ]
    route = plan_route("nohost.test", answer, random.Random(1))
    assert isinstance(route, Outcome) and route.status == "4.4.4"
    assert route.reason == ("no MX host of nohost.test has an address (mail.nohost.test: no A or AAAA record; "
                            "outside.example.net: the name server answered REFUSED)")


def test_mail_outside_the_sealed_lab_bounces_at_once(tmp_path: Path, dns_stub: DnsStub) -> None:
    """gmail.com was retried for ten minutes on "no name server answered"; the lab DNS refuses it for good."""
    answer = DnsMxResolver("127.0.0.1", port=dns_stub.port).resolve_mx("gmail.com")
    assert answer == DnsTemporaryFailure("the name server answered REFUSED", refused=True)
    lab = make_lab(tmp_path, 9, zones={"gmail.com": answer})
    lab.enqueue("andy@ouhk.example", ["someone@gmail.com"])
    assert lab.run_once() == 2  # the message, then its bounce, in one pass
    _, rcpt = parse_report(lab.bounces()[0])
    assert rcpt["Status"] == "5.1.2"
    [(_, _, bounce)] = lab.local
    assert (b"domain gmail.com is outside the sealed lab: the lab DNS serves only lab.example, ouhk.example, "
            b"stevenchoy.example") in bounce.replace(b"\r\n ", b" ")
    # A lab domain the server refuses (a broken zone) is still retried: its owner may fix it.
    assert isinstance(plan_route("stevenchoy.example", answer, random.Random(1), outside=None), Outcome)
    assert plan_route("stevenchoy.example", answer, random.Random(1)).result is Result.TRANSIENT  # type: ignore[union-attr]


def test_dns_resolver_reports_a_silent_server_as_temporary() -> None:
    stub = DnsStub({}, silent=True)
    try:
        answer = DnsMxResolver("127.0.0.1", port=stub.port, timeout=0.2, lifetime=0.4).resolve_mx("x.test")
    finally:
        stub.close()
    assert isinstance(answer, DnsTemporaryFailure) and "timeout" in answer.reason.lower()


# -- throughput: what the messages of a pass share ------------------------------------------


def test_one_mx_lookup_serves_the_messages_of_a_pass(tmp_path: Path, mx: tuple[ScriptedMx, int]) -> None:
    handler, port = mx
    lab = make_lab(tmp_path, port)
    count = delivery.DELIVERY_CONCURRENCY * 2
    for i in range(count):
        lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"], MESSAGE + f"{i}\r\n".encode())
    assert lab.run_once() == count
    assert len(handler.received) == count
    assert lab.resolver.asked == ["stevenchoy.example"]  # concurrent messages waited for one lookup
    lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example"])
    assert lab.run_once() == 1
    assert lab.resolver.asked == ["stevenchoy.example"] * 2  # a new pass asks again: visible in a capture


def test_an_idle_session_the_server_dropped_is_replaced_without_a_deferral(mx: tuple[ScriptedMx, int]) -> None:
    handler, port = mx
    connections = client.Connections("smtp.ouhk.example", port)
    target = Target(MxHost(10, "mail.stevenchoy.example", ("127.0.0.1",)), "127.0.0.1", ("betty@stevenchoy.example",))

    async def two_messages() -> transaction.HostResult:
        try:
            first = await connections.transact(target, "andy@ouhk.example", MESSAGE)
            assert first.replies["betty@stevenchoy.example"].code == 250
            # The next MAIL on the kept session is the first command of the next message (no RSET
            # probe): a server that has given up on the idle session answers it 421 (RFC 5321 §3.8).
            handler.mail_replies.append("421 4.4.2 mail.stevenchoy.example idle too long, closing")
            return await connections.transact(target, "carol@ouhk.example", MESSAGE)
        finally:
            await connections.close()

    result = asyncio.run(two_messages())
    assert result.error == "" and result.replies["betty@stevenchoy.example"].code == 250
    assert [r.mail_from for r in handler.received] == ["andy@ouhk.example", "carol@ouhk.example"]
    assert handler.sessions == 2 and handler.received[1].session == 2


def test_with_pipelining_mail_rcpt_and_data_leave_in_one_write(tmp_path: Path) -> None:
    """A server that answers nothing until it holds MAIL, both RCPTs and DATA: only a
    pipelining client gets through (one command at a time would wait for the MAIL reply)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"220 mail.stevenchoy.example ESMTP\r\n")
            reader.readline()  # EHLO
            conn.sendall(b"250-mail.stevenchoy.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            batch = [reader.readline() for _ in range(4)]  # no reply before all four are in
            seen.extend(batch)
            conn.sendall(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n")
            while (line := reader.readline()) != b".\r\n":
                seen.append(line)
            conn.sendall(b"250 2.0.0 queued\r\n")
            reader.readline()  # QUIT, or the connection closes
            conn.sendall(b"221 bye\r\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    lab = make_lab(tmp_path, port)
    lab.enqueue("andy@ouhk.example", ["betty@stevenchoy.example", "nobody@stevenchoy.example"])
    lab.run_once()
    server.join(timeout=10)
    listener.close()
    assert seen[:4] == [b"MAIL FROM:<andy@ouhk.example>\r\n",  # no SIZE: this server does not offer it
                        b"RCPT TO:<betty@stevenchoy.example>\r\n", b"RCPT TO:<nobody@stevenchoy.example>\r\n",
                        b"DATA\r\n"]
    assert b"".join(seen[4:]) == MESSAGE.replace(b"\r\n.A line", b"\r\n..A line")  # dot-stuffed on the wire
    assert lab.spool.entries() == []  # betty delivered, nobody bounced (the bounce went to andy, locally)
