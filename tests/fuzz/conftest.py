"""Fixtures of the fuzz suite: one set of servers for the whole run, watched, checked at the end."""

from __future__ import annotations

import imaplib
import logging
import poplib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.fuzz import harness
from tests.fuzz.harness import BETTY, BETTY_PASSWORD, HOST, TIMEOUT, LogWatch, Servers


# Package scope: torn down (and checked) when the fuzz tests end, before other packages' tests
# log errors of their own on purpose.
@pytest.fixture(scope="package")
def watch() -> Iterator[LogWatch]:
    handler = LogWatch()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture(scope="package")
def servers(tmp_path_factory: pytest.TempPathFactory, watch: LogWatch) -> Iterator[Servers]:
    s = Servers(Path(tmp_path_factory.mktemp("fuzz")))
    s.background.loop.set_exception_handler(watch.loop_exception)
    s.start(harness.zones())
    yield s
    # After the whole run: each server still serves a complete normal session.
    try:
        check_full_sessions(s)
        assert watch.take() == []
    finally:
        s.close()


def smtp_session(port: int) -> None:
    """A normal client's short session: greeting, EHLO, NOOP, QUIT, all answered positively."""
    with smtplib.SMTP(HOST, port, local_hostname="client.example", timeout=TIMEOUT) as client:
        assert client.ehlo()[0] == 250
        assert client.noop()[0] == 250


def pop3_session(servers: Servers) -> None:
    """A normal client's session: login, STAT shows betty's two messages, QUIT."""
    client = poplib.POP3(HOST, servers.ports["pop3"], timeout=TIMEOUT)
    try:
        client.user("betty")
        client.pass_(BETTY_PASSWORD)
        assert client.stat() == (len(harness.MAILBOX), sum(len(m) for m in harness.MAILBOX))
    finally:
        client.quit()


def imap_session(servers: Servers) -> None:
    """A normal client's session: login, SELECT finds betty's messages, LOGOUT."""
    client = imaplib.IMAP4(HOST, servers.ports["imap"], timeout=TIMEOUT)
    try:
        client.login("betty", BETTY_PASSWORD)
        typ, data = client.select("INBOX")
        assert typ == "OK" and int(data[0] or 0) >= 1, data
    finally:
        client.logout()


def dns_session(servers: Servers, *, tcp: bool = False) -> None:
    query = dns.message.make_query("mail.stevenchoy.example", "A")
    ask = dns.query.tcp if tcp else dns.query.udp
    reply = ask(query, HOST, port=servers.ports["dns"], timeout=TIMEOUT)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer, reply


def check_full_sessions(s: Servers) -> None:
    before = s.mx_stored()
    with smtplib.SMTP(HOST, s.ports["mx"], local_hostname="client.example", timeout=TIMEOUT) as client:
        refused = client.sendmail(harness.ANDY, [BETTY], b"Subject: after the fuzz run\r\n\r\nstill here\r\n")
        assert refused == {}
    assert s.mx_stored() == before + 1
    queued = s.mta_queued()
    with smtplib.SMTP(HOST, s.ports["submission"], local_hostname="client.example", timeout=TIMEOUT) as client:
        client.login("andy", harness.ANDY_PASSWORD)
        assert client.sendmail(harness.ANDY, [BETTY], b"Subject: after the fuzz run\r\n\r\nsubmitted\r\n") == {}
    assert s.mta_queued() == queued + 1
    pop3_session(s)
    imap_session(s)
    dns_session(s)
    dns_session(s, tcp=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if harness.CASES:
        terminalreporter.write_sep("-", "fuzz")
        for line in harness.summary_lines(harness.CASES.items()):
            terminalreporter.write_line(line)
