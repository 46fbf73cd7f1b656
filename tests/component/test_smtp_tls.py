"""SMTP under TLS on 127.0.0.1 (issue 12): STARTTLS on 25 and 587, TLS on connect on 465, the
STARTTLS injection refused, and the MTA's relay with STARTTLS to the MX ("may", "verify").

Certificates come from a test CA made with labctl's own maker (labctl.tlsca); the clients verify
against it (smtplib, raw sockets wrapped in ssl). The servers' key log goes to the test's folder.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from labctl import tlsca
from services import tls as lab_tls
from services.mailstore import Maildir, mailbox_dir
from services.mua import submit
from services.smtp.client import MAY, VERIFY, RelayTls
from services.smtp.delivery import DeliveryWorker
from services.smtp.mta import local_delivery, start_mta
from services.smtp.mx import start_mx
from services.smtp.server import Listeners, ServerTls
from services.smtp.session import TlsOffer
from services.smtp.spool import RecipientState, Spool, Status
from tests.component.smtpwire import Wire
from tests.component.test_smtp_servers import MESSAGE, MTA_CFG, MX_CFG, PASSWORDS, LabDns
from tests.support import BackgroundLoop

T = TypeVar("T")
TIMEOUT = 10.0
ANDY, BETTY = "andy@ouhk.example", "betty@stevenchoy.example"
ZONES = ["localhost", "ouhk.example", "stevenchoy.example"]


@dataclass(frozen=True)
class Pki:
    """A test CA and leaf certificates on disk, as labctl hands them to the lab's hosts."""

    root: Path
    ca: tlsca.Issued

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    def leaf(self, fqdn: str) -> tuple[Path, Path]:
        cert, key = self.root / f"{fqdn}.pem", self.root / f"{fqdn}.key"
        if not cert.exists():
            issued = tlsca.make_leaf(self.ca, fqdn, ["127.0.0.1"])
            cert.write_text(issued.cert_pem)
            key.write_text(issued.key_pem)
        return cert, key

    def client(self) -> ssl.SSLContext:
        """What a client that trusts the lab CA uses (the MUA's default)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = tlsca.make_ca("test", ZONES)
    (root / "ca.pem").write_text(ca.cert_pem)
    return Pki(root, ca)


@dataclass
class Servers:
    loop: asyncio.AbstractEventLoop
    root: Path
    pki: Pki
    started: list[Listeners] = field(default_factory=list)
    opened: list[Any] = field(default_factory=list)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    @property
    def keylog(self) -> Path:
        return self.root / "keys" / lab_tls.KEYLOG_FILE.name

    def tls(self, fqdn: str, *, auth_needs_tls: bool = True, context: ssl.SSLContext | None = None) -> ServerTls:
        cert, key = self.pki.leaf(fqdn)
        ctx = context or lab_tls.server_context(cert, key, keylog_dir=self.root / "keys")
        return ServerTls(TlsOffer.STARTTLS, ctx, auth_needs_tls=auth_needs_tls)

    def mx(self, tls: ServerTls | None = None) -> Listeners:
        listeners = self.run(start_mx(MX_CFG, mail_root=self.root / "mail", host="127.0.0.1", smtp_port=0,
                                      pop3_port=0, imap_port=0, pop3s_port=0, imaps_port=0,
                                      tls=tls or self.tls("mail.stevenchoy.example")))
        self.started.append(listeners)
        return listeners

    def mta(self, spool: Spool | None = None, tls: ServerTls | None = None, **kwargs: Any) -> Listeners:
        kwargs.setdefault("relay_client", lambda ip: False)
        listeners = self.run(start_mta(MTA_CFG, spool=spool or Spool(self.root / "spool"), on_enqueued=lambda: None,
                                       mail_root=self.root / "mail", host="127.0.0.1", smtp_port=0,
                                       submission_port=0, submissions_port=0, pop3_port=0, imap_port=0,
                                       pop3s_port=0, imaps_port=0,
                                       tls=tls or self.tls("smtp.ouhk.example"), **kwargs))
        self.started.append(listeners)
        return listeners

    def smtp(self, port: int) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT)
        self.opened.append(client)
        return client

    def wire(self, port: int) -> Wire:
        w = Wire(port)
        self.opened.append(w)
        return w

    def betty(self) -> list[bytes]:
        box = Maildir(mailbox_dir(self.root / "mail", BETTY))
        return [box.read(key) for key in box.keys()]


@pytest.fixture
def servers(tmp_path: Path, pki: Pki) -> Iterator[Servers]:
    background = BackgroundLoop()
    s = Servers(background.loop, tmp_path, pki)
    yield s
    for opened in s.opened:
        opened.close()
    background.close([listeners.close for listeners in s.started])


def plain_auth(address: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{address}\0{PASSWORDS[address]}".encode()).decode()


# -- STARTTLS on 25 (the MX) ----------------------------------------------------------------------------


def test_starttls_is_offered_before_tls_only_and_the_session_starts_over(servers: Servers) -> None:
    wire = servers.wire(servers.mx().port("smtp"))
    assert wire.command("EHLO client.example").split("\n")[-1] == "250 STARTTLS"
    assert wire.command("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS"
    assert wire.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    wire.starttls(servers.pki.client())
    assert wire.sock.version() in ("TLSv1.3", "TLSv1.2")  # type: ignore[attr-defined]
    # RFC 3207 §4.2: the greeting is forgotten; EHLO again, and STARTTLS is gone from it.
    ehlo = wire.command("EHLO client.example")
    assert "STARTTLS" not in ehlo and ehlo.endswith("250 ENHANCEDSTATUSCODES")
    assert wire.command("STARTTLS") == "503 5.5.1 TLS already active"
    assert wire.command("HELP STARTTLS") == "504 5.5.4 HELP topic unknown"


def test_a_message_under_starttls_says_esmtps_and_the_cipher_and_its_keys_are_logged(servers: Servers) -> None:
    client = servers.smtp(servers.mx().port("smtp"))
    client.starttls(context=servers.pki.client())
    assert client.sendmail(ANDY, [BETTY], MESSAGE) == {}
    [stored] = servers.betty()
    received = re.search(rb"Received: from client\.example \(smtp\.ouhk\.example \[127\.0\.0\.1\]\)\n"
                         rb"\t\(using (TLSv1\.[23]) with cipher ([A-Z0-9_-]+) \((\d+)/\3 bits\)\)\n"
                         rb"\tby mail\.stevenchoy\.example \(maillab\) with ESMTPS id ", stored)
    assert received is not None, stored[:400]
    assert received.group(1).decode() == client.sock.version()  # type: ignore[union-attr]
    assert received.group(2).decode() == client.sock.cipher()[0]  # type: ignore[union-attr]
    # The NSS key log has this session's secrets, for `labctl traffic` to decrypt it.
    assert re.search(r"^(CLIENT_HANDSHAKE_TRAFFIC_SECRET|CLIENT_RANDOM) [0-9a-f]{64} ", servers.keylog.read_text(),
                     re.MULTILINE)


def test_commands_pipelined_after_starttls_are_discarded_not_run_under_tls(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2024-34083 / CVE-2011-0411: what came in clear behind STARTTLS is never executed."""
    wire = servers.wire(servers.mx().port("smtp"))
    wire.command("EHLO client.example")
    with caplog.at_level(logging.WARNING, logger="services.smtp"):
        wire.sock.sendall(b"STARTTLS\r\nMAIL FROM:<andy@ouhk.example>\r\nRSET\r\n")  # one write, one segment
        assert wire.reply() == "220 2.0.0 Ready to start TLS"
        wire.starttls(servers.pki.client())
        # Had the MAIL been run under TLS, this RCPT would be taken; its reply is the first one we read.
        assert wire.command(f"RCPT TO:<{BETTY}>") == "503 5.5.1 Need MAIL before RCPT"
    assert "sent in clear after STARTTLS, before TLS, discarded unread" in caplog.text
    assert "MAIL FROM" in caplog.text
    assert wire.command("EHLO client.example").startswith("250-")
    assert wire.command(f"MAIL FROM:<{ANDY}>").startswith("250 2.1.0")


def test_a_failed_handshake_ends_that_session_only(servers: Servers) -> None:
    port = servers.mx().port("smtp")
    wire = servers.wire(port)
    assert wire.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    wire.sock.sendall(b"EHLO this is no TLS ClientHello\r\n")
    assert wire.file.read() == b""  # closed, and nothing answered in clear
    assert servers.wire(port).command("EHLO client.example").startswith("250-mail.stevenchoy.example")


def test_starttls_when_tls_is_off_or_unavailable(servers: Servers) -> None:
    off = servers.wire(servers.mx(ServerTls()).port("smtp"))
    assert "STARTTLS" not in off.command("EHLO client.example")
    assert off.command("STARTTLS") == "502 5.5.1 STARTTLS not offered: TLS is off in this lab"
    missing = servers.wire(servers.mx(ServerTls(TlsOffer.NO_CERTIFICATE)).port("smtp"))
    assert "STARTTLS" not in missing.command("EHLO client.example")
    assert missing.command("STARTTLS") == "454 4.7.0 TLS not available: this host has no certificate"


def test_tls_off_opens_no_port_465(servers: Servers) -> None:
    assert set(servers.mta(tls=ServerTls()).servers) == {"smtp", "submission", "pop3", "imap"}
    assert "submissions" in servers.mta().servers


# -- submission: 587 with STARTTLS, 465 with TLS on connect ---------------------------------------------


def test_auth_and_mail_on_587_in_clear_need_starttls_first(servers: Servers) -> None:
    mta = servers.mta(relay_client=lambda ip: True)  # even a LAN client: 587 serves only under TLS
    wire = servers.wire(mta.port("submission"))
    ehlo = wire.command("EHLO client.example")
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo  # RFC 8314 §3.3: no AUTH offered in clear
    assert wire.command(f"AUTH {plain_auth(ANDY)}") == "530 5.7.0 Must issue a STARTTLS command first"
    assert wire.command(f"MAIL FROM:<{ANDY}>") == "530 5.7.0 Must issue a STARTTLS command first"
    assert wire.command("NOOP") == "250 2.0.0 OK"

    client = servers.smtp(mta.port("submission"))
    client.starttls(context=servers.pki.client())
    client.ehlo()
    assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    client.login(ANDY, PASSWORDS[ANDY])
    assert client.sendmail(ANDY, ["carol@elsewhere.example"], MESSAGE) == {}
    [entry] = Spool(servers.root / "spool").entries()
    assert b"\tby smtp.ouhk.example (maillab) with ESMTPSA id " in Spool(servers.root / "spool").read(entry.id)


def test_auth_in_clear_works_when_auth_needs_tls_is_off(servers: Servers) -> None:
    mta = servers.mta(tls=servers.tls("smtp.ouhk.example", auth_needs_tls=False))
    client = servers.smtp(mta.port("submission"))
    client.ehlo()
    assert "starttls" in client.esmtp_features and "auth" in client.esmtp_features
    client.login(ANDY, PASSWORDS[ANDY])
    assert client.sendmail(ANDY, [BETTY], MESSAGE) == {}


def test_submission_over_tls_on_connect_on_465(servers: Servers) -> None:
    mta = servers.mta()
    client = smtplib.SMTP_SSL("127.0.0.1", mta.port("submissions"), local_hostname="client.example",
                              timeout=TIMEOUT, context=servers.pki.client())
    servers.opened.append(client)
    client.ehlo()
    assert "starttls" not in client.esmtp_features and "auth" in client.esmtp_features
    assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
    client.login(ANDY, PASSWORDS[ANDY])
    assert client.docmd("AUTH", plain_auth(ANDY)) == (503, b"5.5.1 Already authenticated")
    assert client.sendmail(ANDY, [BETTY], MESSAGE) == {}
    [entry] = Spool(servers.root / "spool").entries()
    data = Spool(servers.root / "spool").read(entry.id)
    assert re.search(rb"\t\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)\)\r\n"
                     rb"\tby smtp\.ouhk\.example \(maillab\) with ESMTPSA id ", data), data[:300]


def test_a_client_that_does_not_verify_cannot_be_told_apart_and_one_that_does_verifies(servers: Servers) -> None:
    """The lab's certificate verifies against the lab CA for the host's name and address; not without it."""
    mta = servers.mta()
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL("127.0.0.1", mta.port("submissions"), timeout=TIMEOUT,
                         context=ssl.create_default_context())  # the system store only
    ok = servers.wire(mta.port("submission"))
    ok.command("STARTTLS")
    ok.starttls(servers.pki.client(), "smtp.ouhk.example")
    assert ok.command("EHLO client.example").startswith("250-smtp.ouhk.example")


# -- the MTA's relay to the MX with STARTTLS (cfg.tls.relay) --------------------------------------------


def relay_once(servers: Servers, mx: Listeners, relay_tls: RelayTls) -> RecipientState:
    """One delivery pass of one message for betty to ``mx``; betty's recipient state after it."""
    spool = Spool(servers.root / "spool")
    qid = spool.enqueue(ANDY, [BETTY], MESSAGE, now=time.time())
    worker = DeliveryWorker(MTA_CFG, spool, local_delivery=local_delivery(MTA_CFG, servers.root / "mail"),
                            resolver=LabDns(), smtp_port=mx.port("smtp"), relay_tls=relay_tls)
    servers.run(worker.run_once())
    if not spool.entries():
        return RecipientState(BETTY, status=Status.DELIVERED)
    [state] = spool.entry(qid).recipients
    return state


def client_tls(servers: Servers, *, verify: bool) -> RelayTls:
    ctx = lab_tls.client_context(verify=verify, ca=servers.pki.ca_file, keylog_dir=servers.root / "client-keys")
    return RelayTls(VERIFY if verify else MAY, ctx)


def received_with(servers: Servers) -> bytes:
    [stored] = servers.betty()
    found = re.search(rb"\tby mail\.stevenchoy\.example \(maillab\) with (\w+) id ", stored)
    assert found is not None, stored[:300]
    return found.group(1)


def test_relay_may_uses_starttls_when_the_mx_offers_it(servers: Servers) -> None:
    state = relay_once(servers, servers.mx(), client_tls(servers, verify=False))
    assert state.status is Status.DELIVERED, state.last_error
    assert received_with(servers) == b"ESMTPS"
    assert "CLIENT_" in (servers.root / "client-keys" / lab_tls.KEYLOG_FILE.name).read_text()


def test_relay_verify_checks_the_certificate_against_the_lab_ca_and_the_mx_name(servers: Servers) -> None:
    state = relay_once(servers, servers.mx(), client_tls(servers, verify=True))
    assert state.status is Status.DELIVERED, state.last_error
    assert received_with(servers) == b"ESMTPS"


def test_relay_verify_with_the_wrong_name_on_the_certificate_is_a_transient_failure(servers: Servers) -> None:
    mx = servers.mx(servers.tls("smtp.ouhk.example"))  # the MTA's certificate on the MX
    state = relay_once(servers, mx, client_tls(servers, verify=True))
    assert (state.status, state.dsn_status) == (Status.PENDING, "4.7.5")
    assert "certificate verify failed: Hostname mismatch" in state.last_error, state.last_error
    assert "relay=verify requires TLS" in state.last_error
    assert servers.betty() == []


def test_relay_verify_to_an_mx_without_starttls_waits_and_says_why(servers: Servers) -> None:
    state = relay_once(servers, servers.mx(ServerTls()), client_tls(servers, verify=True))
    assert (state.status, state.dsn_status) == (Status.PENDING, "4.7.5")
    assert "offers no STARTTLS, and the lab's relay=verify requires TLS" in state.last_error


def test_relay_may_falls_back_to_clear_when_the_handshake_fails(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    # An MX whose handshake no client of ours can pass: TLS 1.2 at most, and a client certificate required.
    cert, key = servers.pki.leaf("mail.stevenchoy.example")
    picky = lab_tls.server_context(cert, key, keylog_dir=None)
    picky.maximum_version = ssl.TLSVersion.TLSv1_2
    picky.verify_mode = ssl.CERT_REQUIRED
    picky.load_verify_locations(cafile=str(servers.pki.ca_file))
    with caplog.at_level(logging.WARNING, logger="services.smtp.client"):
        state = relay_once(servers, servers.mx(servers.tls("mail.stevenchoy.example", context=picky)),
                           client_tls(servers, verify=False))
    assert state.status is Status.DELIVERED, state.last_error
    assert received_with(servers) == b"ESMTP"  # in clear, as Postfix's "may" does
    assert re.search(r"mail\.stevenchoy\.example\[127\.0\.0\.1\]:\d+: TLS handshake failed: .+; "
                     r"relay=may: trying again in clear", caplog.text), caplog.text
    # The same handshake under "verify" is a failure, not a fallback.
    state = relay_once(servers, servers.mx(servers.tls("mail.stevenchoy.example", context=picky)),
                       client_tls(servers, verify=True))
    assert (state.status, state.dsn_status) == (Status.PENDING, "4.7.5")


# -- the MUA's submit (mail send --tls / --starttls) ------------------------------------------------------


@pytest.mark.parametrize(("mode", "listener"), [(submit.STARTTLS, "submission"), (submit.IMPLICIT, "submissions")])
def test_the_mua_submits_under_tls_with_auth(servers: Servers, mode: str, listener: str) -> None:
    mta = servers.mta()
    receipt = submit.submit("127.0.0.1", mta.port(listener), MESSAGE, ANDY, [BETTY], helo="andy.ouhk.example",
                            login=submit.Login(ANDY, PASSWORDS[ANDY]), tls=mode, context=servers.pki.client())
    assert receipt.reply.startswith("250 2.0.0 ") and receipt.refused == {}
    [entry] = Spool(servers.root / "spool").entries()
    assert b" with ESMTPSA id " in Spool(servers.root / "spool").read(entry.id)


def test_the_mua_says_in_one_line_why_a_certificate_does_not_verify(servers: Servers) -> None:
    mta = servers.mta()
    for mode, listener in ((submit.STARTTLS, "submission"), (submit.IMPLICIT, "submissions")):
        with pytest.raises(submit.SubmitError) as refused:
            submit.submit("127.0.0.1", mta.port(listener), MESSAGE, ANDY, [BETTY], tls=mode,
                          context=ssl.create_default_context())  # the lab CA not trusted
        said = str(refused.value)
        assert "\n" not in said and said.startswith("the certificate of 127.0.0.1 does not verify (")
        assert "labctl tls ca" in said and "--no-verify" in said
    no_tls = servers.mta(tls=ServerTls())
    with pytest.raises(submit.SubmitError, match="offers no STARTTLS.*--no-tls"):
        submit.submit("127.0.0.1", no_tls.port("submission"), MESSAGE, ANDY, [BETTY], tls=submit.STARTTLS,
                      context=servers.pki.client())
