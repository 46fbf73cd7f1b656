"""POP3 and IMAP under TLS with the clients people use, against our MX and against Dovecot (issue 12).

Two labs brought up with ``labctl up --tls``, each with Debian's clients on betty's host (the
reference image), the same assertions for both:

- ``ours``: compose/reference/clients.yml, our MX (POP3 and IMAP, STLS/STARTTLS, 995 and 993);
- ``dovecot``: compose/reference/mx.yml, Postfix + Dovecot as the MX (ssl=yes with the same lab
  certificate, disable_plaintext_auth as the lab's auth_needs_tls).

Every client verifies the server's certificate against the system store with no CA option: the
lab CA is in every host's trust store. openssl s_client (-starttls pop3 / imap, and 995, 993),
curl (pop3s://, imaps://, and pop3:// / imap:// with --ssl-reqd), mpop with its default settings
(but ``tls on``: Debian's is off by default), fetchmail with ``sslcertck`` (995, and STLS on 110),
mutt over imaps:// and over imap:// with STARTTLS (no certificate question), our own `mail fetch`;
and a password in clear refused the way Dovecot refuses it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator

import pytest

from labctl import topology
from labctl.backend.docker_engine import DockerEngine
from labctl.lab import Lab
from labctl.mail import fetch as labctl_fetch
from tests.lab.conftest import labctl, unique_lab
from tests.lab.waiting import eventually

COMPOSE = topology.DEFAULT_TOPOLOGY.parent
OVERLAYS = {"ours": "clients.yml", "dovecot": "mx.yml"}
ROLES = {"ours": "mx", "dovecot": "postfix-mx"}
MX = "mail.stevenchoy.example"
USER, PASSWORD = "betty", "betty-secret"
SUBJECT = "under TLS"
DELIVERY_TIMEOUT = 60.0


@pytest.fixture(scope="module", params=list(OVERLAYS))
def peer(request: pytest.FixtureRequest, client: DockerEngine, image: str) -> Iterator[tuple[str, Lab]]:
    """(which server, its lab, up with TLS and one message waiting for betty)."""
    side: str = request.param
    name = unique_lab(f"tls-fetch-{side}")
    labctl("up", "--tls", "--lab", name, "--overlay", str(COMPOSE / "reference" / OVERLAYS[side]))
    lab = Lab(client, name)
    try:
        assert {h.name: h.role for h in lab.status()}["mail"] == ROLES[side]
        # up waited for 995 and 993 too (services.probe), after a verified handshake.
        status = labctl("status", "--lab", name).stdout
        assert "pop3s 995" in status and "imaps 993" in status, status
        send = ("import smtplib; s = smtplib.SMTP('mail.stevenchoy.example', 25, timeout=30); "
                f"s.sendmail('andy@ouhk.example', ['betty@stevenchoy.example'], 'Subject: {SUBJECT}\\r\\n\\r\\n"
                "body under TLS\\r\\n'); s.quit()")
        sent = lab.exec("andy", ["python3", "-c", send])
        assert sent.exit_code == 0, sent.stderr.decode()
        eventually(lambda: curl(lab, f"pop3s://{MX}/").strip(), DELIVERY_TIMEOUT, "the message in betty's mailbox")
        yield side, lab
        if side == "ours":
            log = b"".join(lab.logs("mail")).decode(errors="replace")
            assert "Traceback" not in log, log[-3000:]
    finally:
        labctl("down", "--lab", name, check=False)


def sh(lab: Lab, script: str) -> tuple[int, str]:
    ran = lab.exec("betty", ["sh", "-c", script])
    return ran.exit_code, ran.output + ran.stderr.decode(errors="replace")


def curl(lab: Lab, url: str, *extra: str) -> str:
    """curl on betty's host, verifying against the system store (no --cacert, no -k)."""
    ran = lab.exec("betty", ["curl", "-sS", "--user", f"{USER}:{PASSWORD}", *extra, url])
    assert ran.exit_code == 0, f"curl {url}: {ran.stderr.decode(errors='replace')}"
    return ran.output


@pytest.mark.parametrize(("how", "port"), [("-starttls pop3", 110), ("-starttls imap", 143), ("", 995), ("", 993)])
def test_openssl_s_client_verifies_with_the_system_store(peer: tuple[str, Lab], how: str, port: int) -> None:
    _, lab = peer
    code, out = sh(lab, f"openssl s_client {how} -connect {MX}:{port} -verify_return_error "
                        f"-verify_hostname {MX} -brief </dev/null")
    assert code == 0 and "Verification: OK" in out, out
    assert "Protocol version: TLSv1.3" in out, out


def test_curl_reads_pop3s_imaps_and_the_starttls_ports(peer: tuple[str, Lab]) -> None:
    _, lab = peer
    for url, extra in ((f"pop3s://{MX}/1", ()), (f"pop3://{MX}/1", ("--ssl-reqd",)),
                       (f"imaps://{MX}/INBOX;MAILINDEX=1", ()), (f"imap://{MX}/INBOX;MAILINDEX=1", ("--ssl-reqd",))):
        assert f"Subject: {SUBJECT}" in curl(lab, url, *extra), url


def test_mpop_with_tls_on_and_every_other_setting_its_default(peer: tuple[str, Lab]) -> None:
    """Issue 12's first complaint. Debian 12's mpop (1.4.18) has ``tls off`` by default, and then
    refuses a server that takes passwords only under TLS, ours as Dovecot; ``tls on`` is all it
    needs (STARTTLS, the system trust store, certificate checks and auth are its defaults)."""
    _, lab = peer
    rc = (f"account default\nhost {MX}\nuser {USER}\npassword {PASSWORD}\nkeep on\n"
          "uidls_file /tmp/mpop-uidls\ndelivery mda \"cat >> /tmp/mpop-fetched\"\n")
    run = ("umask 077; printf %s {rc} > /tmp/mpoprc; rm -f /tmp/mpop-uidls /tmp/mpop-fetched; "
           "mpop -C /tmp/mpoprc 2>&1 && cat /tmp/mpop-fetched")
    code, out = sh(lab, run.format(rc=shlex.quote(rc)))
    assert code != 0 and "cannot use a secure authentication method" in out, out
    code, out = sh(lab, run.format(rc=shlex.quote(rc + "tls on\n")))
    assert code == 0 and f"Subject: {SUBJECT}" in out, out


# 995, then STLS on 110 (a TLS sslproto makes fetchmail require STLS): (server options, user options)
@pytest.mark.parametrize(("server", "user"), [("service 995", "ssl"), ("", "sslproto TLS1.2+")])
def test_fetchmail_with_sslcertck(peer: tuple[str, Lab], server: str, user: str) -> None:
    _, lab = peer
    rc = f"poll {MX} proto pop3 {server} user {USER} pass {PASSWORD} is root here {user} sslcertck keep\n"
    code, out = sh(lab, f"umask 077; printf %s {shlex.quote(rc)} > /tmp/fetchmailrc; rm -f /tmp/fetched; "
                        "fetchmail -v --all -f /tmp/fetchmailrc --mda 'cat >> /tmp/fetched' 2>&1; code=$?; "
                        "cat /tmp/fetched; exit $code")
    assert code == 0 and f"Subject: {SUBJECT}" in out, out
    assert "SSL/TLS: using protocol TLSv1.3" in out, out
    if not server:
        assert "POP3> STLS" in out and "upgrade to TLS succeeded" in out, out


# mutt as a student sets it up for the TLS lab: Debian's system Muttrc is read (no -n), the system
# trust store named, TLS required. A certificate mutt could not verify would stop it at "(r)eject,
# accept (o)nce": the screen would show that question and not the inbox.
MUTT_TLS = f"""set imap_user={USER}
set imap_pass={PASSWORD}
set ssl_ca_certificates_file=/etc/ssl/certs/ca-certificates.crt
set ssl_force_tls=yes
set ssl_starttls=yes
set record=
set move=no
set mark_old=no
set wait_key=no
"""


@pytest.mark.parametrize("url", [f"imaps://{MX}/INBOX", f"imap://{MX}/INBOX"], ids=["993", "143-starttls"])
def test_mutt_opens_the_inbox_under_tls_with_no_certificate_question(peer: tuple[str, Lab], url: str) -> None:
    _, lab = peer
    # folder= the server: mutt's default (~/Mail) does not exist on a lab host, and it would ask.
    command = f"mutt -F /tmp/tls-muttrc -e {shlex.quote('set folder=' + url.rpartition('/')[0])} -f {url} " \
              f"-e {shlex.quote('push <quit>')}"
    code, out = sh(lab, f"printf %s {shlex.quote(MUTT_TLS)} > /tmp/tls-muttrc; TERM=xterm timeout 30 script -qec "
                        f"{shlex.quote(command)} /dev/null")
    assert code == 0, out[-2000:]
    assert "accept (o)nce" not in out and "reject" not in out.lower(), out[-2000:]
    assert SUBJECT in out, out[-2000:]


# In clear on 110 and 143: what CAPA and CAPABILITY offer, and what a password is answered.
CLEAR = r"""
import json, socket
def session(port, lines, until):
    s = socket.create_connection(("mail.stevenchoy.example", port), timeout=30)
    f = s.makefile("rb")
    got = [f.readline().decode()]
    for line, end in zip(lines, until):
        s.sendall(line.encode() + b"\r\n")
        reply = b""
        while True:
            part = f.readline()
            reply += part
            if not part or end(part):
                break
        got.append(reply.decode())
    s.close()
    return got
pop = session(110, ["CAPA", "USER betty", "QUIT"],
              [lambda l: l == b".\r\n", lambda l: True, lambda l: True])
imap = session(143, ["a CAPABILITY", "b LOGIN betty betty-secret", "c LOGOUT"],
               [lambda l: l.startswith(b"a "), lambda l: l.startswith(b"b "), lambda l: l.startswith(b"c ")])
print(json.dumps({"pop3": pop, "imap": imap}))
"""


def test_a_password_in_clear_is_refused_as_dovecot_refuses_it(peer: tuple[str, Lab]) -> None:
    _, lab = peer
    ran = lab.exec("betty", ["python3", "-c", CLEAR])
    assert ran.exit_code == 0, ran.stderr.decode()
    got = json.loads(ran.output)
    capa = got["pop3"][1].split("\r\n")
    assert "STLS" in capa and "USER" not in capa, capa  # Dovecot's disable_plaintext_auth
    assert got["pop3"][2].startswith("-ERR [AUTH] "), got["pop3"]
    capability = got["imap"][1].split("\r\n")[0].split()
    assert "STARTTLS" in capability and "LOGINDISABLED" in capability, capability
    assert not any(c.startswith("AUTH=") for c in capability), capability
    # The tagged NO, after an untagged [ALERT] that the password crossed in clear (Dovecot's too).
    alert, tagged = got["imap"][2].split("\r\n")[:2]
    assert alert.startswith("* BAD [ALERT] Plaintext authentication not allowed without"), got["imap"]
    assert tagged.startswith("b NO [PRIVACYREQUIRED] "), got["imap"]


def test_our_mua_fetches_with_stls_by_default_and_over_pop3s(peer: tuple[str, Lab]) -> None:
    side, lab = peer
    by_default = labctl_fetch(lab, "betty")  # the lab has TLS: STLS on 110
    assert by_default.ok and f"from {MX}:110" in by_default.output, by_default.errors
    implicit = labctl_fetch(lab, "betty", tls=["--tls"])
    assert implicit.ok and f"from {MX}:995" in implicit.output, implicit.errors
    clear = labctl_fetch(lab, "betty", tls=["--no-tls"])
    assert not clear.ok and "[AUTH]" in clear.errors and "--starttls or --tls" in clear.errors, clear.errors
    if side == "ours":  # our MX wrote both sessions' secrets for the decoder (services.tls key log)
        keys = lab.exec("mail", ["cat", "/var/lib/maillab/tls-keys/keylog.txt"]).output
        assert keys.count("CLIENT_TRAFFIC_SECRET_0") >= 2, keys[-500:]
