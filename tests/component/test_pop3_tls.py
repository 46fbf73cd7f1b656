"""POP3 under TLS on 127.0.0.1 (RFC 2595, RFC 8314): STLS with poplib, POP3S on its own port,
passwords refused in clear where they need TLS, and the STLS injection refused: a command sent in
clear in the same packet as STLS is never answered under TLS (the CVE-2024-34083 class)."""

from __future__ import annotations

import poplib
from collections.abc import Callable
from pathlib import Path

import pytest

from services.mailstore import deliver, mailbox_dir
from services.mua.local import LocalMailbox
from services.mua.retrieve import FetchError, fetch
from services.mua.security import CLEAR, IMPLICIT, STARTTLS
from services.smtp.session import TlsOffer
from tests.component.accesstls import HOST, PASSWORD, TIMEOUT, AccessLab, lab, lines
from tests.component.test_mua_cli import Run
from tests.component.test_mua_cli import mail as mail_cli

__all__ = ["lab", "mail_cli"]  # the fixtures


def test_stls_then_login_with_poplib(lab: AccessLab) -> None:
    ports = lab.serve()
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=TIMEOUT)
    try:
        before = pop.capa()
        assert "STLS" in before and "USER" not in before  # no password offered in clear
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\].*STLS.*995"):
            pop.user("betty")
        assert pop.stls(lab.client_context()) == b"+OK Begin TLS negotiation"
        after = pop.capa()
        assert "USER" in after and "STLS" not in after
        pop.user("betty")
        assert pop.pass_(PASSWORD).startswith(b"+OK Pass accepted, 1 message")
        assert b"Subject: one" in b"\n".join(pop.retr(1)[1])
        assert pop.quit() == b"+OK Bye-bye"
    finally:
        pop.close()
    assert b"CLIENT_TRAFFIC_SECRET_0" in lab.keylog()


def test_pop3s_is_tls_from_the_first_byte(lab: AccessLab) -> None:
    ports = lab.serve()
    pop = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], timeout=TIMEOUT, context=lab.client_context())
    try:
        assert pop.getwelcome() == f"+OK {HOST} POP3 server ready".encode()
        assert "STLS" not in pop.capa()
        pop.user("betty")
        assert pop.pass_(PASSWORD).startswith(b"+OK Pass accepted")
        with pytest.raises(poplib.error_proto, match="not allowed after login"):
            pop._shortcmd("STLS")
        pop.quit()
    finally:
        pop.close()


def test_a_command_pipelined_after_stls_is_never_run_under_tls(lab: AccessLab) -> None:
    ports = lab.serve(auth_needs_tls=False)
    raw = lab.raw(ports["pop3"])
    assert lines(raw, b"\r\n").startswith(b"+OK")
    raw.sendall(b"STLS\r\nUSER betty\r\n")  # ONE write: the injection
    assert lines(raw, b"\r\n") == b"+OK Begin TLS negotiation\r\n"
    with lab.client_context().wrap_socket(raw, server_hostname=HOST) as secure:
        secure.sendall(f"PASS {PASSWORD}\r\nQUIT\r\n".encode())
        got = lines(secure, b"Bye-bye\r\n")
    # No "+OK User accepted" after the handshake, and PASS finds no USER: it was dropped.
    assert got == b"-ERR give USER first\r\n+OK Bye-bye\r\n"


def test_stls_under_tls_or_with_tls_off_is_refused_and_the_session_goes_on(lab: AccessLab) -> None:
    ports = lab.serve(TlsOffer.OFF)
    assert set(ports) == {"pop3", "imap"}  # TLS off: no 995, no 993
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=TIMEOUT)
    try:
        assert "STLS" not in pop.capa() and "USER" in pop.capa()
        with pytest.raises(poplib.error_proto, match="STLS not offered: TLS is off in this lab"):
            pop._shortcmd("STLS")
        pop.user("betty")
        assert pop.pass_(PASSWORD).startswith(b"+OK Pass accepted")
        pop.quit()
    finally:
        pop.close()


def test_a_failed_handshake_leaves_the_server_serving(lab: AccessLab) -> None:
    ports = lab.serve()
    raw = lab.raw(ports["pop3"])
    lines(raw, b"\r\n")
    raw.sendall(b"STLS\r\n")
    lines(raw, b"\r\n")
    raw.sendall(b"USER betty\r\n\r\n\r\n")  # not a ClientHello
    assert lines(raw, b"never") == b""  # hung up rather than talk on in clear
    pop = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], timeout=TIMEOUT, context=lab.client_context())
    assert pop.getwelcome().startswith(b"+OK")
    pop.quit()


# -- the MUA: mail fetch --tls / --starttls ---------------------------------------------------------


def test_the_mua_fetches_with_stls_and_over_pop3s(lab: AccessLab, tmp_path: Path) -> None:
    ports = lab.serve()
    store = LocalMailbox(tmp_path / "Maildir")
    # The certificate names 127.0.0.1 too (labctl.tlsca puts the host's address in it).
    got = fetch("127.0.0.1", ports["pop3"], "betty", PASSWORD, store, tls=STARTTLS, context=lab.client_context())
    assert len(got.fetched) == 1  # USER/PASS went under TLS: in clear they are refused here
    deliver(mailbox_dir(lab.mail, "betty@stevenchoy.example"), b"Subject: two\n\nagain\n")
    got = fetch("127.0.0.1", ports["pop3s"], "betty", PASSWORD, store, tls=IMPLICIT, context=lab.client_context())
    assert len(got.fetched) == 2 and got.on_server == 2  # another port, another account: all new
    with pytest.raises(FetchError, match=r"refused the login.*\[AUTH\].*STLS.*fetch with --starttls or --tls"):
        fetch("127.0.0.1", ports["pop3"], "betty", PASSWORD, store, tls=CLEAR)


def test_the_mua_refuses_to_go_on_in_clear_or_unverified(lab: AccessLab, mail_cli: Callable[..., Run],
                                                          tmp_path: Path) -> None:
    off = lab.serve(TlsOffer.OFF)
    on = lab.serve()
    common = ["--user", "betty", "--password", PASSWORD, "--maildir", str(tmp_path / "Maildir")]
    r = mail_cli("fetch", "--starttls", "--pop3", f"127.0.0.1:{off['pop3']}", *common)
    assert r.code == 1 and "offers no STLS" in r.err and "--no-tls" in r.err
    # The test CA is not the lab CA nor in the system store: the certificate does not verify.
    r = mail_cli("fetch", "--tls", "--pop3", f"127.0.0.1:{on['pop3s']}", *common)
    assert r.code == 1 and "does not verify" in r.err and "fetch with --no-verify" in r.err
    r = mail_cli("fetch", "--tls", "--no-verify", "--pop3", f"127.0.0.1:{on['pop3s']}", *common)
    assert r.code == 0 and r.out.startswith(f"fetched 1 new message from 127.0.0.1:{on['pop3s']}"), r.err
    r = mail_cli("fetch", "--starttls", "--no-verify", "--pop3", f"127.0.0.1:{on['pop3']}", *common)
    assert r.code == 0 and r.out.startswith("fetched 1 new message"), r.err
    r = mail_cli("fetch", "--tls", "--no-verify", "--pop3", f"127.0.0.1:{on['pop3']}", *common)
    assert r.code == 1 and "no TLS with" in r.err and "995" in r.err  # TLS spoken to a clear port


