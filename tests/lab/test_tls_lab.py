"""A lab with TLS on (issue 12), on the engine: `labctl up --tls`, its CA, and real SMTP peers.

What a student or a desktop client would do, with no flag to say where the CA is: every lab host
trusts the lab CA in its system store, so openssl, swaks and curl verify the servers as they would
a public server. The relay between our MTA and an MX (ours or Postfix) uses STARTTLS when offered,
and the Received lines say so. AUTH in clear on 587 is refused when the lab says TLS first.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.lab.conftest import RunningLab, labctl, unique_lab

SMTP = "smtp.ouhk.example"
MX = "mail.stevenchoy.example"
PASSWORD = "andy-secret"  # compose/lab.yml's password for andy


@pytest.fixture(scope="module")
def tls_lab(client, image: str) -> Iterator[RunningLab]:  # type: ignore[no-untyped-def]
    name = unique_lab("tls")
    proc = labctl("up", "--lab", name, "--tls")
    try:
        yield RunningLab(name, client, proc.stdout + proc.stderr)
    finally:
        labctl("down", "--lab", name, check=False)


def sh(lab: RunningLab, host: str, script: str, check: bool = True) -> str:
    proc = labctl("exec", "--lab", lab.name, host, "--", "sh", "-c", script, check=check)
    return proc.stdout + proc.stderr


def s_client(lab: RunningLab, host: str, target: str, *, starttls: str | None = None,
             name: str | None = None) -> str:
    """openssl s_client as a user types it: no -CAfile, the system store decides."""
    how = f"-starttls {starttls} " if starttls else ""
    check = f"-verify_hostname {name or target.split(':')[0]} "
    return sh(lab, host, f"echo QUIT | openssl s_client {how}{check}-verify_return_error -brief "
                         f"-connect {target} 2>&1", check=False)


@pytest.mark.parametrize("target, starttls", [(f"{SMTP}:25", "smtp"), (f"{SMTP}:587", "smtp"),
                                              (f"{SMTP}:465", None), (f"{MX}:25", "smtp")])
def test_every_smtp_port_verifies_from_the_system_store(tls_lab: RunningLab, target: str,
                                                        starttls: str | None) -> None:
    out = s_client(tls_lab, "andy", target, starttls=starttls)
    assert "Verification: OK" in out, out
    assert "Protocol version: TLSv1.3" in out, out
    assert f"CN = {target.split(':')[0]}" in out, out


def test_a_wrong_name_is_refused(tls_lab: RunningLab) -> None:
    """The lesson of a refused certificate: smtp's certificate is not mail's, and openssl says so."""
    out = s_client(tls_lab, "andy", f"{SMTP}:465", name=MX)
    assert "Verification: OK" not in out
    assert "hostname mismatch" in out.lower() or "verify error" in out.lower(), out


def test_labctl_tls_ca_is_the_ca_every_host_trusts(tls_lab: RunningLab, tmp_path: Path) -> None:
    pem = labctl("tls", "ca", "--lab", tls_lab.name).stdout
    ca = x509.load_pem_x509_certificate(pem.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for host in ("andy", "betty", "smtp", "mail", "ns"):
        assert sh(tls_lab, host, "cat /etc/maillab/tls/ca.pem").strip() == pem.strip(), host
    # The MX's leaf was issued by it, with the MX's name and address.
    leaf_pem = sh(tls_lab, "mail", "cat /etc/maillab/tls/cert.pem")
    leaf = x509.load_pem_x509_certificates(leaf_pem.encode())[0]
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert MX in names.get_values_for_type(x509.DNSName)
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    # The CA's private key is on no host: only the leaves' keys are.
    assert "PRIVATE KEY" not in sh(tls_lab, "andy", "cat /etc/maillab/tls/* 2>/dev/null || true")


def test_auth_in_clear_on_587_is_refused(tls_lab: RunningLab) -> None:
    out = sh(tls_lab, "andy", f"swaks --server {SMTP} --port 587 --auth PLAIN --auth-user andy "
                              f"--auth-password {PASSWORD} --from andy@ouhk.example "
                              f"--to betty@stevenchoy.example 2>&1", check=False)
    # No AUTH offered before TLS (RFC 8314 §3.3 style), so swaks cannot even try.
    assert "250-AUTH" not in out and "250 AUTH" not in out, out
    assert "STARTTLS" in out
    assert "Message accepted" not in out


def _delivered(lab: RunningLab, subject: str) -> str:
    for _ in range(60):
        found = sh(lab, "mail", f"grep -rl 'Subject: {subject}' /var/mail 2>/dev/null | head -1; true").strip()
        if found:
            return sh(lab, "mail", f"cat {found}")
        time.sleep(0.25)
    raise AssertionError(f"no message {subject!r} in the MX's mailboxes")


def test_swaks_verifies_submits_and_the_relay_uses_starttls(tls_lab: RunningLab) -> None:
    out = sh(tls_lab, "andy", f"swaks --server {SMTP} --port 587 --tls --tls-verify --auth PLAIN "
                              f"--auth-user andy --auth-password {PASSWORD} --from andy@ouhk.example "
                              f"--to betty@stevenchoy.example --h-Subject swaks-tls-verify 2>&1")
    assert "TLS started with cipher TLSv1.3" in out, out
    assert "235 2.7.0" in out and "Message accepted" in out, out
    message = _delivered(tls_lab, "swaks-tls-verify")
    received = re.findall(r"^Received: .*?(?=^\S)", message, re.M | re.S)
    assert len(received) == 2, message
    # Newest first: the MX's line (the relay, STARTTLS, no AUTH), then the MTA's (submission, AUTH).
    assert "by mail.stevenchoy.example" in received[0] and "with ESMTPS " in received[0], received[0]
    assert "by smtp.ouhk.example" in received[1] and "with ESMTPSA " in received[1], received[1]
    assert all("using TLSv1.3" in line for line in received), received


@pytest.mark.parametrize("command, subject", [
    ("swaks --server smtp.ouhk.example --port 465 --tlsc --tls-verify --auth PLAIN --auth-user andy "
     "--auth-password {pw} --from andy@ouhk.example --to betty@stevenchoy.example --h-Subject {subject}", "swaks-tlsc"),
    ("printf 'Subject: {subject}\\r\\n\\r\\nhi\\r\\n' | curl -sS --ssl-reqd smtp://smtp.ouhk.example:587 "
     "--user andy:{pw} --mail-from andy@ouhk.example --mail-rcpt betty@stevenchoy.example -T -", "curl-ssl-reqd"),
    ("printf 'Subject: {subject}\\r\\n\\r\\nhi\\r\\n' | curl -sS smtps://smtp.ouhk.example:465 "
     "--user andy:{pw} --mail-from andy@ouhk.example --mail-rcpt betty@stevenchoy.example -T -", "curl-smtps"),
], ids=["swaks-tlsc", "curl-ssl-reqd", "curl-smtps"])
def test_real_clients_submit_over_tls_with_no_ca_flag(tls_lab: RunningLab, command: str, subject: str) -> None:
    """swaks --tlsc (465), curl --ssl-reqd (587 with STARTTLS) and curl smtps:// (465), each verifying
    the MTA's certificate against the system store, as against any provider."""
    out = sh(tls_lab, "andy", command.format(pw=PASSWORD, subject=subject) + " 2>&1; echo rc=$?")
    assert out.rstrip().endswith("rc=0"), out
    assert "with ESMTPSA " in _delivered(tls_lab, subject)


def test_mail_send_over_465_and_the_key_log_grows(tls_lab: RunningLab) -> None:
    def secrets() -> int:
        log = sh(tls_lab, "smtp", "cat /var/lib/maillab/tls-keys/keylog.txt 2>/dev/null; true")
        return sum(1 for line in log.splitlines() if line.startswith("CLIENT_TRAFFIC_SECRET_0 "))

    before = secrets()
    out = labctl("send", "--lab", tls_lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
                 "--subject", "over-465", "--body", "implicit TLS", "--tls").stdout
    assert "Message accepted" in out, out
    assert secrets() > before
    assert "with ESMTPSA " in _delivered(tls_lab, "over-465")


def test_status_knows_the_tls_ports(tls_lab: RunningLab) -> None:
    hosts = {h["name"]: h for h in json.loads(labctl("status", "--lab", tls_lab.name, "--json").stdout)[tls_lab.name]}
    assert "465" in json.dumps(hosts["smtp"]), hosts["smtp"]


def _header(message: str) -> str:
    return message.split("\n\n", 1)[0]


@pytest.fixture(scope="module")
def swapped(client, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:  # type: ignore[no-untyped-def]
    """A TLS lab with one of our servers swapped for Postfix, made on first use per swap."""
    made: dict[str, str] = {}

    def lab(swap: str) -> str:
        if swap not in made:
            overlay = tmp_path_factory.mktemp("tls") / "postfix-tls.yml"
            overlay.write_text(f"swap:\n  {swap}\ntls: true\n")
            made[swap] = unique_lab("tlspf")
            labctl("up", "--lab", made[swap], "--overlay", str(overlay))
        return made[swap]

    yield lab
    for name in made.values():
        labctl("down", "--lab", name, check=False)


@pytest.mark.parametrize("swap, by", [("mail: postfix-mx", "by mail.stevenchoy.example (Postfix) with ESMTPS"),
                                      ("smtp: postfix-mta", "by mail.stevenchoy.example (maillab) with ESMTPS")])
def test_the_relay_between_ours_and_postfix_uses_starttls(swapped: Callable[[str], str], swap: str, by: str) -> None:
    """Ours -> a Postfix MX, and a Postfix MTA -> ours: each side offers STARTTLS, the other takes it
    (Postfix `smtp_tls_security_level = may`, ours RelayTls "may"), and the MX's Received says so."""
    lab = swapped(swap)
    labctl("send", "--lab", lab, "--from", "andy", "--to", "betty@stevenchoy.example",
           "--subject", "relay-tls", "--body", "across implementations")
    for _ in range(120):
        stored = labctl("exec", "--lab", lab, "mail", "--", "sh", "-c",
                        "grep -rl 'Subject: relay-tls' /var/mail 2>/dev/null | head -1 | xargs -r cat",
                        check=False).stdout
        if stored:
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"{swap}: the message never reached the MX")
    header = " ".join(_header(stored).split())  # Postfix folds its Received line
    newest = header.split("Received: ")[1]
    assert by in newest, header
    assert "(using TLSv1.3 with cipher" in newest, header


def test_msmtp_with_tls_on_verifies_the_lab_with_no_trust_file(swapped: Callable[[str], str]) -> None:
    """msmtp (GnuTLS, not OpenSSL) as a user configures it for any provider: tls on, STARTTLS on 587,
    AUTH; no tls_trust_file, so the system store must hold the lab CA, and GnuTLS must accept its
    name constraints. Run from the Postfix host, which has msmtp (the reference image)."""
    lab = swapped("mail: postfix-mx")
    out = labctl("exec", "--lab", lab, "mail", "--", "sh", "-c",
                 "printf 'Subject: msmtp-tls\\n\\nhi\\n' | msmtp --host=smtp.ouhk.example --port=587 "
                 "--tls=on --tls-starttls=on --auth=on --user=andy --passwordeval='echo andy-secret' "
                 "--from=andy@ouhk.example betty@stevenchoy.example && echo SENT", check=False)
    assert "SENT" in out.stdout, out.stdout + out.stderr
    # And with TLS off, the same client is refused AUTH: the lab does not take a password in clear.
    clear = labctl("exec", "--lab", lab, "mail", "--", "sh", "-c",
                   "printf 'Subject: x\\n\\nhi\\n' | msmtp --host=smtp.ouhk.example --port=587 --tls=off "
                   "--auth=plain --user=andy --passwordeval='echo andy-secret' --from=andy@ouhk.example "
                   "betty@stevenchoy.example", check=False)
    assert clear.returncode != 0 and "SENT" not in clear.stdout
    assert "auth" in (clear.stdout + clear.stderr).lower(), clear.stdout + clear.stderr
