"""Interoperability with the servers people run: Postfix, Dovecot and NSD in the same lab as ours.

Four labs, each compose/lab.yml with one overlay of compose/reference/ (a `swap:` of hosts):

- mx.yml: our MTA relays to a Postfix MX; the message lands in the Maildir Dovecot serves;
- mta.yml: Postfix as the sender MTA relays to our MX; fetchmail and curl read our POP3;
- dns.yml: NSD serves the zones labctl writes; our MTA finds the MX through it;
- clients.yml: our servers everywhere; Debian's mutt sends through our MTA and reads our POP3.

Every client runs inside the lab, on andy's or betty's host (the lab is sealed): our MUA, swaks,
curl (pop3://), fetchmail and mutt from Debian.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator

import pytest

from labctl import mail, topology
from labctl.backend.docker_engine import DockerEngine
from labctl.lab import Lab
from tests.lab.conftest import RunningLab, labctl, parse_json, unique_lab
from tests.lab.test_mail_path import unique, wait_for_mail
from tests.lab.waiting import eventually

COMPOSE = topology.DEFAULT_TOPOLOGY.parent
BETTY_MAILDIR = "/var/mail/maillab/stevenchoy.example/betty"


def _lab(client: DockerEngine, overlay: str) -> Iterator[RunningLab]:
    name = unique_lab("ref")
    proc = labctl("up", "--lab", name, "--overlay", str(COMPOSE / "reference" / overlay))
    try:
        yield RunningLab(name, client, proc.stdout + proc.stderr)
    finally:
        labctl("down", "--lab", name, check=False)


@pytest.fixture(scope="module")
def postfix_mx(client: DockerEngine, image: str) -> Iterator[RunningLab]:
    yield from _lab(client, "mx.yml")


@pytest.fixture(scope="module")
def postfix_mta(client: DockerEngine, image: str) -> Iterator[RunningLab]:
    yield from _lab(client, "mta.yml")


@pytest.fixture(scope="module")
def nsd_dns(client: DockerEngine, image: str) -> Iterator[RunningLab]:
    yield from _lab(client, "dns.yml")


@pytest.fixture(scope="module")
def debian_clients(client: DockerEngine, image: str) -> Iterator[RunningLab]:
    yield from _lab(client, "clients.yml")


# -- clients, as run on a MUA host -------------------------------------------------------------


def swaks(lab: Lab, host: str, server: str, to: str, subject: str, *extra: str) -> tuple[int, str]:
    ran = lab.exec(host, ["swaks", "--server", server, "--from", f"{host}@ouhk.example" if host == "andy"
                          else f"{host}@stevenchoy.example", "--to", to, "--header", f"Subject: {subject}",
                          "--body", f"body of {subject}", *extra])
    return ran.exit_code, ran.output


def curl_messages(lab: Lab, host: str, user: str, password: str, server: str) -> list[str]:
    """Every message of the mailbox, by curl: LIST, then RETR each (pop3://host/N)."""
    listing = lab.exec(host, ["curl", "-sS", "--user", f"{user}:{password}", f"pop3://{server}/"])
    assert listing.exit_code == 0, listing.stderr.decode()
    numbers = [line.split()[0] for line in listing.output.splitlines() if line.strip()]
    out = []
    for n in numbers:
        got = lab.exec(host, ["curl", "-sS", "--user", f"{user}:{password}", f"pop3://{server}/{n}"])
        assert got.exit_code == 0, got.stderr.decode()
        out.append(got.output)
    return out


def fetchmail(lab: Lab, host: str, user: str, password: str, server: str) -> tuple[int, str, str]:
    """fetchmail every message (kept on the server) into a file; (exit code, its log, what it delivered).

    ``sslproto ''``: fetchmail 6.4 tries STLS even when not offered; the lab speaks plain POP3 (as
    the article's Activity 2 does), and so does the Dovecot it is compared with.
    """
    rc = f"poll {server} proto pop3 user {user} pass {shlex.quote(password)} sslproto '' is root here keep\n"
    script = (f"umask 077; printf %s {shlex.quote(rc)} > /tmp/fetchmailrc; rm -f /tmp/fetched; "
              "fetchmail --all -f /tmp/fetchmailrc --mda 'cat >> /tmp/fetched' 2>&1; code=$?; "
              "echo '--- delivered ---'; cat /tmp/fetched 2>/dev/null; exit $code")
    ran = lab.exec(host, ["sh", "-c", script])
    log, _, delivered = ran.output.partition("--- delivered ---\n")
    return ran.exit_code, log, delivered


# mutt as a student would set it up for the lab: plain SMTP and POP3 (no TLS in the lab), no
# local folders to create. -n: no system muttrc.
MUTTRC = "set ssl_starttls=no\nset ssl_force_tls=no\nset folder=/tmp\nset spoolfile=/tmp/spool\n" \
         "set record=\nset mbox=/tmp/mbox\nset delete=yes\nset quit=yes\nset confirmcreate=no\n"


def mutt_send(lab: Lab, host: str, smtp_url: str, password: str, to: str, subject: str, body: str) -> tuple[int, str]:
    """mutt in batch mode (no terminal: it sends what stdin holds) through ``smtp_url``."""
    settings = f"set from={host}@ouhk.example; set smtp_url={smtp_url}; set smtp_pass={password}"
    script = (f"printf %s {shlex.quote(MUTTRC)} > /tmp/muttrc; printf '%s\n' {shlex.quote(body)} | "
              f"mutt -n -F /tmp/muttrc -e {shlex.quote(settings)} -s {shlex.quote(subject)} {shlex.quote(to)} 2>&1")
    ran = lab.exec(host, ["sh", "-c", script])
    return ran.exit_code, ran.output


def mutt_move_first(lab: Lab, host: str, mailbox: str, password: str) -> tuple[str, str]:
    """Open ``mailbox`` (pop://user@server/) in mutt on a terminal (script(1)) and save its first
    message to a local mbox, which moves it (RETR, then DELE at QUIT). (The screen's text, escape
    sequences blanked; the saved mbox.)"""
    rc = MUTTRC + f"set pop_pass={password}\n"
    keys = "push <save-message><kill-line>/tmp/saved.mbox<enter><quit>"
    command = f"mutt -n -F /tmp/muttrc -f {mailbox} -e {shlex.quote(keys)}"
    script = (f"printf %s {shlex.quote(rc)} > /tmp/muttrc; rm -f /tmp/saved.mbox; TERM=xterm timeout 30 script -qec "
              f"{shlex.quote(command)} /dev/null; code=$?; echo '--- saved ---'; cat /tmp/saved.mbox; exit $code")
    ran = lab.exec(host, ["sh", "-c", script])
    assert ran.exit_code == 0, ran.output
    screen, _, saved = ran.output.partition("--- saved ---\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>]", " ", screen), saved


# -- our MTA -> Postfix MX, read from Dovecot --------------------------------------------------


def test_our_mta_delivers_to_a_postfix_mx_into_the_maildir_dovecot_serves(postfix_mx: RunningLab) -> None:
    lab = postfix_mx.lab
    assert {h.name: h.role for h in lab.status()}["mail"] == "postfix-mx"
    subject = unique("to postfix")
    sent = mail.send(lab, "andy", ["betty@stevenchoy.example"], subject, "relayed by our MTA", [])
    assert sent.ok and "Message accepted for delivery" in sent.output, sent.errors
    entry = wait_for_mail(lab, "betty", subject)  # our MUA, over POP3, from Dovecot
    message = parse_json(mail.mailbox(lab, "betty", entry["number"], as_json=True))
    received = [v for k, v in message["all_headers"] if k.lower() == "received"]
    assert "by mail.stevenchoy.example (Postfix)" in received[0]
    assert "by smtp.ouhk.example" in received[1]
    # The file Postfix's virtual(8) wrote is in betty's Maildir, owned by the user Dovecot reads as.
    found = lab.exec("mail", ["sh", "-c", f"grep -l -F {shlex.quote(subject)} {BETTY_MAILDIR}/new/* "
                              f"{BETTY_MAILDIR}/cur/* 2>/dev/null | xargs stat -c %U"])
    assert found.output.split() == ["vmail"]


def test_curl_and_fetchmail_read_dovecot(postfix_mx: RunningLab) -> None:
    lab = postfix_mx.lab
    subject = unique("for dovecot readers")
    assert mail.send(lab, "andy", ["betty@stevenchoy.example"], subject, "read me", []).ok
    wait_for_mail(lab, "betty", subject)
    messages = curl_messages(lab, "betty", "betty", "betty-secret", "mail.stevenchoy.example")
    assert any(subject in m and "read me" in m for m in messages)
    code, log, delivered = fetchmail(lab, "betty", "betty", "betty-secret", "mail.stevenchoy.example")
    assert code == 0, log
    assert subject in delivered and "read me" in delivered


def test_swaks_against_our_mta_and_the_postfix_mx(postfix_mx: RunningLab) -> None:
    lab = postfix_mx.lab
    subject = unique("swaks via our MTA")
    code, out = swaks(lab, "andy", "smtp.ouhk.example:587", "betty@stevenchoy.example", subject,
                      "--auth", "PLAIN", "--auth-user", "andy", "--auth-password", "andy-secret")
    assert code == 0, out
    wait_for_mail(lab, "betty", subject)
    subject = unique("swaks straight to postfix")
    code, out = swaks(lab, "andy", "mail.stevenchoy.example:25", "betty@stevenchoy.example", subject)
    assert code == 0 and "250 2.0.0 Ok: queued as" in out, out
    wait_for_mail(lab, "betty", subject)


def test_postfix_mx_refuses_as_ours_does(postfix_mx: RunningLab) -> None:
    """Unknown user and relaying: the same enhanced codes from Postfix as from our MX (5.1.1, 5.7.1)."""
    lab = postfix_mx.lab
    code, out = swaks(lab, "andy", "mail.stevenchoy.example:25", "nobody@stevenchoy.example", "x")
    assert code != 0 and "<** 550 5.1.1" in out, out
    code, out = swaks(lab, "andy", "mail.stevenchoy.example:25", "someone@ouhk.example", "x")
    assert code != 0 and "5.7.1" in out and "Relay access denied" in out, out


# -- Postfix MTA -> our MX, read by fetchmail and curl ----------------------------------------


def test_postfix_delivers_to_our_mx(postfix_mta: RunningLab) -> None:
    lab = postfix_mta.lab
    assert {h.name: h.role for h in lab.status()}["smtp"] == "postfix-mta"
    subject = unique("from postfix")
    sent = mail.send(lab, "andy", ["betty@stevenchoy.example"], subject, "relayed by Postfix", [])
    assert sent.ok and "queued as" in sent.output, sent.errors
    entry = wait_for_mail(lab, "betty", subject)
    message = parse_json(mail.mailbox(lab, "betty", entry["number"], as_json=True))
    received = [v for k, v in message["all_headers"] if k.lower() == "received"]
    assert "by mail.stevenchoy.example" in received[0] and "smtp.ouhk.example" in received[0]
    assert "by smtp.ouhk.example (Postfix)" in received[1]
    assert [v for k, v in message["all_headers"] if k.lower() == "return-path"] == ["<andy@ouhk.example>"]


def test_fetchmail_and_curl_read_our_pop3(postfix_mta: RunningLab) -> None:
    lab = postfix_mta.lab
    subject = unique("for our pop3")
    assert mail.send(lab, "andy", ["betty@stevenchoy.example"], subject, "served by maillab", []).ok
    wait_for_mail(lab, "betty", subject)
    code, log, delivered = fetchmail(lab, "betty", "betty", "betty-secret", "mail.stevenchoy.example")
    assert code == 0, log
    assert "IMPLEMENTATION maillab" in lab.exec("betty", ["sh", "-c", "printf 'CAPA\\r\\nQUIT\\r\\n' | "
                                                         "nc -q 2 mail.stevenchoy.example 110"]).output
    assert subject in delivered and "served by maillab" in delivered
    messages = curl_messages(lab, "betty", "betty", "betty-secret", "mail.stevenchoy.example")
    assert any(subject in m and "served by maillab" in m for m in messages)
    # A wrong password: fetchmail reports an authentication failure (exit 3), nothing delivered.
    code, log, delivered = fetchmail(lab, "betty", "betty", "wrong", "mail.stevenchoy.example")
    assert code == 3 and delivered == "", log


def test_swaks_against_postfix_submission_and_our_mx(postfix_mta: RunningLab) -> None:
    lab = postfix_mta.lab
    subject = unique("swaks via postfix 587")
    code, out = swaks(lab, "andy", "smtp.ouhk.example:587", "betty@stevenchoy.example", subject,
                      "--auth", "PLAIN", "--auth-user", "andy", "--auth-password", "andy-secret")
    assert code == 0 and "235 2.7.0 Authentication successful" in out, out
    wait_for_mail(lab, "betty", subject)
    subject = unique("swaks straight to our mx")
    code, out = swaks(lab, "andy", "mail.stevenchoy.example:25", "betty@stevenchoy.example", subject)
    assert code == 0 and "Message accepted for delivery" in out, out
    wait_for_mail(lab, "betty", subject)
    # andy's own mailbox is on the Postfix host: Dovecot serves it to our MUA.
    subject = unique("to andy at postfix")
    code, out = swaks(lab, "betty", "mail.stevenchoy.example:25", "andy@ouhk.example", subject)
    assert code != 0 and "5.7.1" in out, "our MX must not relay for betty's host"
    code, out = swaks(lab, "betty", "smtp.ouhk.example:25", "andy@ouhk.example", subject)
    assert code == 0, out
    wait_for_mail(lab, "andy", subject)


# -- NSD as the lab DNS ------------------------------------------------------------------------


def test_nsd_serves_the_lab_zones_and_the_journey_works(nsd_dns: RunningLab) -> None:
    lab = nsd_dns.lab
    assert {h.name: h.role for h in lab.status()}["ns"] == "nsd-dns"
    mx = lab.exec("andy", ["dig", "+short", "MX", "stevenchoy.example"])
    assert mx.output.split() == ["10", "mail.stevenchoy.example."]
    soa = lab.exec("andy", ["dig", "+norec", "SOA", "ouhk.example"])
    assert " aa" in soa.output.split("flags:")[1].split(";")[0]
    smtp = lab.exec("andy", ["dig", "+short", "smtp.ouhk.example"]).output.strip()
    assert lab.exec("andy", ["dig", "+short", "-x", smtp]).output.strip() == "smtp.ouhk.example."
    subject = unique("resolved by nsd")
    assert mail.send(lab, "andy", ["betty@stevenchoy.example"], subject, "x", []).ok
    wait_for_mail(lab, "betty", subject)


def test_a_killed_postfix_host_starts_again_and_delivers(postfix_mta: RunningLab) -> None:
    """SIGKILL leaves Postfix's and Dovecot's PID files behind; the role starts anyway."""
    lab = postfix_mta.lab
    assert lab.kill("smtp").state == "exited"
    assert lab.start("smtp").state == "running"  # waits until SMTP, submission and POP3 answer
    subject = unique("after the restart")
    assert mail.send(lab, "andy", ["betty@stevenchoy.example"], subject, "x", []).ok
    wait_for_mail(lab, "betty", subject)


def test_the_queue_of_a_postfix_mta_is_postfix_s(postfix_mta: RunningLab) -> None:
    lab = postfix_mta.lab
    proc = labctl("queue", "--lab", postfix_mta.name, check=False)
    assert proc.returncode == 1 and "postqueue -p" in proc.stderr
    shown = lab.exec("smtp", ["mailq"])  # Postfix's, not the lab image's wrapper of our queue tool
    assert shown.exit_code == 0 and "Mail queue is empty" in shown.output, shown.output


# -- mutt against our servers ------------------------------------------------------------------


def test_mutt_submits_through_our_mta_and_reads_and_deletes_on_our_pop3(debian_clients: RunningLab) -> None:
    lab = debian_clients.lab
    by_auth, from_lan = unique("mutt via 587"), unique("mutt via 25")
    code, out = mutt_send(lab, "andy", "smtp://andy@smtp.ouhk.example:587/", "andy-secret",
                          "betty@stevenchoy.example", by_auth, "Sent by mutt after AUTH.")
    assert code == 0, out
    code, out = mutt_send(lab, "andy", "smtp://smtp.ouhk.example:25/", "", "betty@stevenchoy.example",
                          from_lan, "Sent by mutt from the lab LAN.")
    assert code == 0, out
    wait_for_mail(lab, "betty", by_auth)
    wait_for_mail(lab, "betty", from_lan)
    assert "AUTH PLAIN as andy" in b"".join(lab.logs("smtp")).decode()

    # Open the mailbox (CAPA, USER/PASS, STAT, UIDL, LIST, TOP), move the first message to a
    # local mbox (RETR, DELE) and quit (QUIT: the deletion takes effect).
    screen, saved = mutt_move_first(lab, "betty", "pop://betty@mail.stevenchoy.example/", "betty-secret")
    assert by_auth in screen and from_lan in screen  # the index: both messages
    assert "1 kept, 1 deleted" in screen, screen[-500:]
    bodies = {by_auth: "Sent by mutt after AUTH.", from_lan: "Sent by mutt from the lab LAN."}
    (moved,) = [subject for subject, body in bodies.items() if f"Subject: {subject}" in saved and body in saved]
    assert saved.count("\nReturn-Path: <andy@ouhk.example>") == 1 and "by mail.stevenchoy.example" in saved

    def session_logged() -> bool:  # the MX writes its log in batches (services/logbuffer.py): look again
        log = b"".join(lab.logs("mail")).decode()
        for command in ("CAPA", "UIDL", "TOP 1 0", "RETR ", "DELE ", "QUIT -> +OK Bye-bye (UPDATE: 1 message removed)"):
            assert f"betty@stevenchoy.example {command}" in log, command
        return True
    eventually(session_logged, 10, "the MX's log of mutt's POP3 session")
    (left,) = curl_messages(lab, "betty", "betty", "betty-secret", "mail.stevenchoy.example")
    (kept,) = set(bodies) - {moved}
    assert kept in left and moved not in left
