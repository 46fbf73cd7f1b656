"""What the fuzz suite shares: the servers under attack, the log watch, the budget, the case count.

The servers are the real ones (the MX's and the MTA's SMTP on aiosmtpd, POP3, the lab DNS),
listening on 127.0.0.1 in an event loop on a background thread, as in production. Each fuzz case
is a real client on a real socket; after it, :class:`LogWatch` says whether any server logged an
error or a traceback, and a normal session proves that the server still serves.

Budget: the ``fuzz-ci`` hypothesis profile runs :data:`CI_EXAMPLES` cases per test (the whole
suite in well under a minute on two cores). ``MAILLAB_FUZZ_EXAMPLES=5000 make fuzz`` runs that
many per test instead (the ``fuzz-deep`` profile). Every case run is counted per server in
:data:`CASES` and printed at the end of the pytest run.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings

from services.config import LabConfig
from services.dns.server import DnsServer
from services.dns.server import start as start_dns
from services.dns.zones import Zones, load_dir
from services.imap import core as imap_core
from services.imap import server as imap_server
from services.logins import LoginDelay
from services.mailstore import Maildir, deliver, mailbox_dir
from services.pop3 import server as pop3_server
from services.pop3.core import Limits
from services.smtp.mta import start_mta
from services.smtp.mx import MxHandler
from services.smtp.server import Listeners, listen
from services.smtp.spool import Spool
from tests import labconfig
from tests.support import BackgroundLoop, server_closer

HOST = "127.0.0.1"
TIMEOUT = 10.0  # a socket wait that only runs out when a server is broken (or stuck)

# -- budget ------------------------------------------------------------------------------------

CI_EXAMPLES = 300  # per fuzz test: the suite takes about 30 s on two cores
EXAMPLES_ENV = "MAILLAB_FUZZ_EXAMPLES"


def _examples() -> int:
    raw = os.environ.get(EXAMPLES_ENV, "")
    if not raw:
        return CI_EXAMPLES
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{EXAMPLES_ENV}={raw!r}: give a positive number of cases per fuzz test")
    return int(raw)


_COMMON = {
    # A case is a few socket round trips; a slow one on a busy machine is not a finding.
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    # Print the seed and the failing case as a @reproduce_failure blob.
    "print_blob": True,
}
settings.register_profile("fuzz-ci", max_examples=CI_EXAMPLES, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("fuzz-deep", max_examples=_examples(), **_COMMON)  # type: ignore[arg-type]
PROFILE = "fuzz-deep" if os.environ.get(EXAMPLES_ENV) else "fuzz-ci"
FUZZ = settings(settings.get_profile(PROFILE))

# Cases actually run (hypothesis's own shrinking and replayed examples included), per server.
CASES: collections.Counter[str] = collections.Counter()


# -- the lab, on loopback ----------------------------------------------------------------------

BETTY = "betty@stevenchoy.example"
ANDY = "andy@ouhk.example"
BETTY_PASSWORD = labconfig.password(BETTY)
ANDY_PASSWORD = labconfig.password(ANDY)


def lab_config(me: str) -> LabConfig:
    """The shipped lab with its servers on loopback (the MX at HOST, the MTA beside it)."""
    return labconfig.lab_config(me, addresses={"smtp": "127.0.0.2", "mail": HOST}, nameserver=HOST)


# betty's mailbox as every POP3 case finds it: what the RETR/TOP lines may contain.
MAILBOX = (
    b"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: one\r\n\r\nHello Betty.\r\n",
    b"Subject: two\r\n\r\nline 1\r\n.starts with a dot\r\n\r\n",
)
# POP3 and SMTP AUTH may only use fast login delays here: the real ones (1 s and up) would make a
# run take hours. The delay itself is checked by the component tests and tests/lab/test_security.py.
FAST_LIMITS = Limits(auth_delay_first=0.001, auth_delay_max=0.002)
FAST_LOGINS = LoginDelay(first=0.001, cap=0.002)
IMAP_FAST_LIMITS = imap_core.Limits(auth_delay_first=0.001, auth_delay_max=0.002)


@dataclass
class Servers:
    """Every server of the lab on 127.0.0.1, in one background loop; the attack's targets."""

    root: Path
    background: BackgroundLoop = field(default_factory=BackgroundLoop)
    listeners: list[Listeners] = field(default_factory=list)
    pop3_servers: list[asyncio.Server] = field(default_factory=list)  # and the IMAP server
    dns: DnsServer | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints the fixtures of a failing case
        return f"Servers({self.ports})"

    def start(self, zones: Zones) -> None:
        run = self.background.run
        mail_root = self.root / "mx-mail"
        mx = run(listen(MxHandler(lab_config("mail"), mail_root=mail_root), hostname="mail.stevenchoy.example",
                        host=HOST, port=0))
        self.listeners.append(Listeners({"smtp": mx}))
        self.ports["mx"] = Listeners({"smtp": mx}).port("smtp")
        self.spool = Spool(self.root / "spool")
        mta = run(start_mta(lab_config("smtp"), spool=self.spool, on_enqueued=lambda: None,
                            mail_root=self.root / "mta-mail", host=HOST, smtp_port=0, submission_port=0,
                            pop3_port=0, imap_port=0, login_delay=FAST_LOGINS))
        self.listeners.append(mta)
        self.ports["mta"] = mta.port("smtp")
        self.ports["submission"] = mta.port("submission")
        pop3 = run(pop3_server.start(lab_config("mail"), mail_root=self.root / "pop3-mail", host=HOST, port=0,
                                     limits=FAST_LIMITS))
        self.pop3_servers.append(pop3)
        self.ports["pop3"] = int(pop3.sockets[0].getsockname()[1])
        self.pop3_mailbox = mailbox_dir(self.root / "pop3-mail", BETTY)
        self.refill_pop3()
        imap = run(imap_server.start(lab_config("mail"), mail_root=self.root / "imap-mail", host=HOST, port=0,
                                     limits=IMAP_FAST_LIMITS))
        self.pop3_servers.append(imap)
        self.ports["imap"] = int(imap.sockets[0].getsockname()[1])
        self.imap_mailbox = mailbox_dir(self.root / "imap-mail", BETTY)
        self.refill_imap()
        self.dns = run(start_dns(zones, HOST, 0))
        self.ports["dns"] = self.dns.port
        self.mx_mailbox = Maildir(mailbox_dir(mail_root, BETTY))

    def refill_pop3(self) -> None:
        """Put betty's POP3 mailbox back as :data:`MAILBOX` (a case may have deleted with QUIT)."""
        box = Maildir(self.pop3_mailbox)
        for key in box.keys():
            box.delete(key)
        for message in MAILBOX:
            deliver(self.pop3_mailbox, message)

    def refill_imap(self) -> None:
        """betty's IMAP store as every IMAP case finds it: :data:`MAILBOX` in INBOX, no folders."""
        shutil.rmtree(self.imap_mailbox, ignore_errors=True)
        for message in MAILBOX:
            deliver(self.imap_mailbox, message)

    def mx_stored(self) -> int:
        return len(self.mx_mailbox.keys())

    def mta_queued(self) -> int:
        # By name: loading every entry made each case cost more than the last (hours at 20,000).
        return self.spool.count()

    def close(self) -> None:
        closers = [lst.close for lst in self.listeners] + [server_closer(s) for s in self.pop3_servers]
        if self.dns is not None:
            closers.append(self.dns.close)
        self.background.close(closers)


def zones() -> Zones:
    return load_dir(Path(__file__).parent.parent / "unit" / "data" / "zones")


# -- the log watch -----------------------------------------------------------------------------


class LogWatch(logging.Handler):
    """Records every error a server logs, and every exception the event loop catches.

    The servers log a bug of theirs with its traceback and carry on serving other clients; the
    wire shows only a generic reply. So "no server task dies, no unhandled exception" is checked
    here, on the log, after every case.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.found.append(f"{record.name}: {text}")

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        self.found.append(f"event loop: {context.get('message')}: {context.get('exception')!r}")

    def take(self) -> list[str]:
        found, self.found = self.found, []
        return found


# -- talking to the servers ----------------------------------------------------------------------


def converse(port: int, data: bytes, *, timeout: float = TIMEOUT) -> bytes:
    """Connect, read the greeting, send ``data`` all at once, half-close, read until the server closes.

    The half-close is how ``printf ... | nc`` ends a session: the servers answer everything sent
    before it, then close. A server may also close first (``421`` after a flood, say); the reset that
    follows is not a finding, and what arrived before it is still checked.
    """
    got = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            got += sock.recv(4096)  # the greeting; nothing is sent before it, as a real client waits
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return bytes(got)


SMTP_LINE = re.compile(rb"([2-5]\d\d)([ -])([\x20-\x7e]*)")


def smtp_replies(wire: bytes) -> list[tuple[int, list[str]]]:
    """Parse a server's whole output into replies; AssertionError at the first ill-formed line."""
    assert b"Traceback" not in wire, wire
    lines = wire.split(b"\r\n")
    tail = lines.pop()
    assert tail == b"", f"output does not end with CRLF: ...{wire[-200:]!r}"
    replies: list[tuple[int, list[str]]] = []
    pending: list[str] = []
    pending_code = 0
    for line in lines:
        m = SMTP_LINE.fullmatch(line)
        assert m, f"not an SMTP reply line: {line!r}"
        code = int(m.group(1))
        assert not pending or code == pending_code, f"code changes inside a multi-line reply: {line!r}"
        pending.append(m.group(3).decode("ascii"))
        pending_code = code
        if m.group(2) == b" ":
            replies.append((code, pending))
            pending = []
    assert not pending, f"multi-line reply never ended: {pending}"
    return replies


def count(counter: str, n: int = 1) -> None:
    CASES[counter] += n


def summary_lines(cases: Iterable[tuple[str, int]]) -> list[str]:
    rows = sorted(cases)
    total = sum(n for _, n in rows)
    lines = [f"fuzz cases tried ({PROFILE} profile, {FUZZ.max_examples} examples per test): {total}"]
    lines += [f"  {name:<22} {n}" for name, n in rows]
    return lines
