"""The readiness probe's TLS ports (995, 993, 465): what each role serves with TLS, and a probe
that answers only once the handshake verifies against the host's trust store."""

from __future__ import annotations

from labctl.lab import HostStatus
from services import probe
from tests.component.accesstls import AccessLab, lab

__all__ = ["lab"]  # the fixture


def status(role: str, *, tls: bool) -> HostStatus:
    return HostStatus(role=role, lab="t", name="h", fqdn="h.example", address="10.0.0.2", state="running",
                      container="c", tls=tls)


def test_each_role_serves_its_tls_ports_only_with_tls_on() -> None:
    assert status("mx", tls=False).ports == "smtp 25, pop3 110, imap 143"  # the clear lab, as always
    assert status("mx", tls=True).ports == "smtp 25, pop3 110, imap 143, pop3s 995, imaps 993"
    assert status("mta", tls=True).services[-3:] == (("smtps", 465), ("pop3s", 995), ("imaps", 993))
    # Postfix has no 465 in the lab; Dovecot beside it serves 995 and 993.
    assert status("postfix-mta", tls=True).services[-2:] == (("pop3s", 995), ("imaps", 993))
    assert ("smtps", 465) not in status("postfix-mta", tls=True).services
    assert status("dns", tls=True).ports == "dns 53"


def test_a_tls_probe_needs_a_certificate_the_host_trusts(lab: AccessLab) -> None:
    ports = lab.serve()
    targets = [probe.Target.parse(f"{kind}:127.0.0.1:{ports[kind]}") for kind in ("pop3s", "imaps")]
    results = probe.probe(targets, timeout=0.3)
    # This test's CA is not in the system store: the ports answer, but not as a client would accept.
    assert [r["ready"] for r in results] == [False, False]
    assert all("CERTIFICATE_VERIFY_FAILED" in str(r["detail"]) for r in results)
    clear = probe.probe([probe.Target.parse(f"pop3:127.0.0.1:{ports['pop3']}")], timeout=2.0)
    assert clear[0]["ready"] and str(clear[0]["detail"]).startswith("+OK")
