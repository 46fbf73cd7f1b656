"""The article's journey on a real lab: submit, MX lookup, relay, store, retrieve; and its failures."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from labctl import mail
from labctl.lab import Lab
from tests.lab.conftest import RunningLab, labctl, parse_json
from tests.lab.waiting import eventually

DELIVERY_TIMEOUT = 30.0  # generous: a loaded CI machine; a delivery takes milliseconds here

# Raw lines over a socket, as a student types them into telnet: one line, then wait for the reply.
DIALOGUE = r"""
import json, socket, sys
host, port, lines = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
pop3 = port == 110
s = socket.create_connection((host, port), timeout=10)
f = s.makefile("rb")

def multiline(command):  # RFC 1939: these answer +OK with lines ending in "."
    words = command.split()
    verb = words[0].upper() if words else ""
    return verb in ("CAPA", "RETR", "TOP") or (verb in ("LIST", "UIDL") and len(words) == 1)

def reply(command):
    out = [f.readline().decode()]
    if pop3:
        if out[0].startswith("+OK") and multiline(command):
            while out[-1] not in (".\r\n", ""):
                out.append(f.readline().decode())
    else:  # SMTP: "250-..." lines continue a reply (RFC 5321 4.2.1)
        while out[-1][3:4] == "-":
            out.append(f.readline().decode())
    return "".join(out)

log = [["", reply("")]]
for line in lines:
    s.sendall(line.encode() + b"\r\n")
    log.append([line, reply(line)])
print(json.dumps(log))
"""


def dialogue(lab: Lab, host: str, server: str, port: int, lines: list[str]) -> list[tuple[str, str]]:
    ran = lab.exec(host, ["python3", "-c", DIALOGUE, server, str(port), json.dumps(lines)])
    assert ran.exit_code == 0, ran.stderr.decode()
    return [(sent, got) for sent, got in json.loads(ran.output)]


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def wait_for_mail(lab: Lab, user: str, subject: str) -> dict[str, Any]:
    """Fetch ``user``'s mail until a message with ``subject`` arrives; return its list entry."""
    def arrived() -> dict[str, Any] | None:
        fetch_or_fail(lab, user)
        entries = parse_json(mail.mailbox(lab, user, as_json=True))
        return next((dict(e) for e in entries if e["subject"] == subject), None)
    return eventually(arrived, DELIVERY_TIMEOUT, f"a message {subject!r} for {user}")


def fetch_or_fail(lab: Lab, user: str) -> None:
    """``user``'s MUA fetches new mail; a fetch that fails ends the test (a wait would hide it)."""
    fetched = mail.fetch(lab, user)
    if not fetched.ok:
        pytest.fail(f"{user} could not fetch: {fetched.output}{fetched.errors}")


def read(lab: Lab, user: str, number: int) -> dict[str, Any]:
    return dict(parse_json(mail.mailbox(lab, user, number, as_json=True)))


def header_values(message: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in message["all_headers"] if k.lower() == name.lower()]


def test_andy_sends_betty_fetches_with_the_received_chain(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    subject = unique("Hello Betty")
    sent = labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
                  "--subject", subject, "--body", "This is the first line of testing message.")
    assert "250 2.0.0 " in sent.stdout and "Message accepted for delivery" in sent.stdout
    entry = wait_for_mail(lab, "betty", subject)
    message = read(lab, "betty", entry["number"])
    received = header_values(message, "Received")
    assert len(received) == 2, received
    # newest first: the MX's own hop, then the MTA's, each naming where it came from
    assert "from smtp.ouhk.example" in received[0] and "by mail.stevenchoy.example" in received[0]
    assert "from andy.ouhk.example" in received[1] and "by smtp.ouhk.example" in received[1]
    assert header_values(message, "Return-Path") == ["<andy@ouhk.example>"]
    assert "This is the first line of testing message." in message["text"]


def test_activity_1_typed_by_hand_from_andy_s_host(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    subject = unique("Activity 1")
    log = dialogue(lab, "andy", "smtp.ouhk.example", 25, [
        "MAIL FROM: andy@ouhk.example",
        "RCPT TO: betty@stevenchoy.example",
        "DATA",
        f"Subject: {subject}\r\n\r\nThis is the first line of testing message.\r\n"
        "This is the second line of testing message.\r\n.",
        "QUIT",
    ])
    replies = [got.strip() for _, got in log]
    assert replies[0].startswith("220 smtp.ouhk.example ESMTP")
    assert replies[1] == "250 2.1.0 andy@ouhk.example... Sender ok"
    assert replies[2] == "250 2.1.5 betty@stevenchoy.example... Recipient ok"
    assert replies[3] == '354 Enter mail, end with "." on a line by itself'
    assert replies[4].startswith("250 2.0.0 ") and replies[4].endswith(" Message accepted for delivery")
    assert replies[5] == "221 2.0.0 Bye"
    entry = wait_for_mail(lab, "betty", subject)
    assert "This is the second line of testing message." in read(lab, "betty", entry["number"])["text"]


def test_activity_2_pop3_by_hand_gives_the_right_counts_and_sizes(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    # an empty maildrop first, then exactly two messages
    assert mail.fetch(lab, "betty", delete=True).ok
    subjects = [unique("first"), unique("second")]
    for subject in subjects:
        labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
               "--subject", subject, "--body", "two messages for Activity 2")
    def both_stored() -> list[tuple[str, str]]:
        stat = dialogue(lab, "betty", "mail.stevenchoy.example", 110,
                        ["USER betty", "PASS betty-secret", "STAT", "QUIT"])
        assert stat[3][1].startswith("+OK 2 "), stat
        return stat
    eventually(both_stored, DELIVERY_TIMEOUT, "both messages in betty's maildrop")

    log = dialogue(lab, "betty", "mail.stevenchoy.example", 110, [
        "USER betty", "PASS betty-secret", "STAT", "LIST", "RETR 1", "DELE 1", "QUIT",
    ])
    got = {sent.split()[0]: reply for sent, reply in log if sent}
    assert log[0][1].startswith("+OK mail.stevenchoy.example POP3 server ready")
    assert got["USER"].startswith("+OK")
    assert got["PASS"].startswith("+OK")
    _, count, total = got["STAT"].split()
    assert count == "2"
    listing = got["LIST"].split("\r\n")
    assert listing[0] == f"+OK 2 messages ({total} octets)"
    sizes = [int(line.split()[1]) for line in listing[1:3]]
    assert [line.split()[0] for line in listing[1:3]] == ["1", "2"] and sum(sizes) == int(total)
    retr = got["RETR"]
    assert retr.startswith(f"+OK {sizes[0]} octets\r\n")
    body = retr.split("\r\n", 1)[1]
    assert body.endswith("\r\n.\r\n")
    content = body[: -len(".\r\n")]
    # the octet count is the message as sent on the wire, before dot-stuffing
    unstuffed = "\r\n".join(line[1:] if line.startswith(".") else line for line in content.split("\r\n"))
    assert len(unstuffed.encode()) == sizes[0]
    assert got["DELE"] == "+OK message 1 deleted\r\n"
    assert got["QUIT"].startswith("+OK")
    after = dialogue(lab, "betty", "mail.stevenchoy.example", 110, ["USER betty", "PASS betty-secret", "STAT", "QUIT"])
    assert after[3][1].strip() == f"+OK 1 {sizes[1]}"


def test_mx_down_the_message_waits_in_the_queue_then_arrives(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    subject = unique("while the MX was down")
    lab.stop("mail")
    try:
        labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
               "--subject", subject, "--body", "queued, retried, delivered")
        def tried_once() -> list[dict[str, Any]]:
            entries = parse_json(mail.queue(lab, as_json=True))["entries"]
            tried = [e for e in entries for r in e["recipients"]
                     if r["address"] == "betty@stevenchoy.example" and r["attempts"] >= 1 and r["last_error"]]
            assert tried, entries
            return tried
        tried = eventually(tried_once, DELIVERY_TIMEOUT, "a failed attempt to deliver to betty, queued")
        recipient = next(r for r in tried[0]["recipients"] if r["address"] == "betty@stevenchoy.example")
        assert recipient["status"] == "pending"
        shown = labctl("queue", "--lab", lab.name).stdout
        assert tried[0]["id"] in shown and "betty@stevenchoy.example" in shown
    finally:
        lab.start("mail")
    labctl("queue", "--lab", lab.name, "--flush")
    wait_for_mail(lab, "betty", subject)
    assert parse_json(mail.queue(lab, as_json=True))["entries"] == []


def test_unknown_user_bounces_to_andy(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    nobody = f"nobody-{uuid.uuid4().hex[:6]}@stevenchoy.example"
    labctl("send", "--lab", lab.name, "--from", "andy", "--to", nobody,
           "--subject", "to nobody", "--body", "there is no such user")
    def bounced() -> list[dict[str, Any]]:
        fetch_or_fail(lab, "andy")
        return [e for e in parse_json(mail.mailbox(lab, "andy", as_json=True))
                if nobody in json.dumps(read(lab, "andy", e["number"]))]
    bounces = eventually(bounced, DELIVERY_TIMEOUT, "a bounce reaching andy", interval=0.3)
    bounce = read(lab, "andy", bounces[0]["number"])
    types = [p["content_type"] for p in bounce["parts"]]
    assert types[0] == "multipart/report" and "message/delivery-status" in types
    assert header_values(bounce, "Return-Path") == ["<>"]  # no bounce for a bounce
    assert "550 5.1.1" in json.dumps(bounce)


def test_relaying_from_outside_is_refused(running_lab: RunningLab) -> None:
    # The MX is another server on "the Internet": not one of the MTA's own clients.
    log = dialogue(running_lab.lab, "mail", "smtp.ouhk.example", 25, [
        "EHLO mail.stevenchoy.example",
        "MAIL FROM:<spammer@stevenchoy.example>",
        "RCPT TO:<victim@elsewhere.example>",
        "RCPT TO:<andy@ouhk.example>",
        "QUIT",
    ])
    assert log[3][1].startswith("550 5.7.1"), log[3]
    assert log[4][1].startswith("250 2.1.5"), log[4]  # mail for the MTA's own domain is welcome


def test_a_binary_attachment_arrives_byte_identical(running_lab: RunningLab, tmp_path: Path) -> None:
    lab = running_lab.lab
    blob = os.urandom(150_000) + bytes(range(256)) + b"\r\n.\r\n\x00"
    attachment = tmp_path / "photo.bin"
    attachment.write_bytes(blob)
    subject = unique("Ünïcödé and a binary attachment")
    labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
           "--subject", subject, "--body", "see attached", "--attach", str(attachment))
    entry = wait_for_mail(lab, "betty", subject)
    message = read(lab, "betty", entry["number"])
    parts = {p["filename"]: p for p in message["parts"] if p.get("filename")}
    assert parts["photo.bin"]["encoding"] == "base64" and parts["photo.bin"]["size"] == len(blob)
    out_dir = f"/tmp/saved-{uuid.uuid4().hex[:6]}"
    saved = lab.exec("betty", ["python3", "-m", "services", "mail", "save", str(entry["number"]), "--dir", out_dir])
    assert saved.exit_code == 0, saved.stderr
    assert lab.exec("betty", ["cat", f"{out_dir}/photo.bin"]).stdout == blob


def test_real_clients_swaks_and_curl(running_lab: RunningLab) -> None:
    """Debian's swaks (SMTP, with AUTH on 587) and curl (pop3://) accept our servers as they are."""
    lab = running_lab.lab
    subject = unique("via swaks")
    sent = lab.exec("andy", ["swaks", "--server", "smtp.ouhk.example:587", "--auth", "PLAIN",
                             "--auth-user", "andy@ouhk.example", "--auth-password", "andy-secret",
                             "--from", "andy@ouhk.example", "--to", "betty@stevenchoy.example",
                             "--header", f"Subject: {subject}", "--body", "sent by swaks"])
    assert sent.exit_code == 0, sent.output
    assert "<-  235 2.7.0 Authentication successful" in sent.output
    assert "Message accepted for delivery" in sent.output
    wrong = lab.exec("andy", ["swaks", "--server", "smtp.ouhk.example:587", "--auth", "PLAIN",
                              "--auth-user", "andy@ouhk.example", "--auth-password", "wrong",
                              "--from", "andy@ouhk.example", "--to", "betty@stevenchoy.example"])
    assert wrong.exit_code != 0 and "535" in wrong.output
    wait_for_mail(lab, "betty", subject)

    listing = lab.exec("betty", ["curl", "-sS", "--user", "betty:betty-secret", "pop3://mail.stevenchoy.example/"])
    assert listing.exit_code == 0, listing.stderr
    numbers = [line.split()[0] for line in listing.output.splitlines() if line.strip()]
    assert numbers and numbers == [str(n) for n in range(1, len(numbers) + 1)]
    bodies = [lab.exec("betty", ["curl", "-sS", "--user", "betty:betty-secret",
                                 f"pop3://mail.stevenchoy.example/{n}"]).output for n in numbers]
    assert any(subject in b and "sent by swaks" in b for b in bodies)
    refused = lab.exec("betty", ["curl", "-sS", "--user", "betty:nope", "pop3://mail.stevenchoy.example/"])
    assert refused.exit_code != 0


def test_acknowledged_mail_survives_the_mta_being_killed(running_lab: RunningLab) -> None:
    """250 means fsync'd: SIGKILL the MTA with mail queued, start it again, nothing is lost."""
    lab = running_lab.lab
    subjects = [unique("survives a crash") for _ in range(3)]
    lab.stop("mail")  # keep the mail queued at the MTA
    try:
        for subject in subjects:
            sent = labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
                          "--subject", subject, "--body", "acknowledged, then the MTA crashed")
            assert "Message accepted for delivery" in sent.stdout
        assert lab.kill("smtp").state == "exited"
        lab.start("smtp")
        queued = parse_json(mail.queue(lab, as_json=True))["entries"]
        assert len(queued) >= len(subjects)
    finally:
        lab.start("mail")
    labctl("queue", "--lab", lab.name, "--flush")
    for subject in subjects:
        wait_for_mail(lab, "betty", subject)


def test_postmaster_mail_waits_on_the_server_and_labctl_shows_it(running_lab: RunningLab) -> None:
    """RFC 5321 §4.5.1 postmaster (it got 550 5.1.1); `labctl mailbox andy` said "no messages" while
    mail waited on the server, and a stopped host gave a raw Docker error."""
    lab = running_lab.lab
    subject = unique("to the postmaster")
    labctl("send", "--lab", lab.name, "--from", "betty", "--to", "PostMaster@ouhk.example",
           "--subject", subject, "--body", "who runs this server?")

    def on_server() -> list[dict[str, Any]] | None:
        stored = json.loads(labctl("mailbox", "--server", "andy", "--lab", lab.name, "--json").stdout)
        return [m for m in stored if m["headers"].get("Subject") == subject] or None
    [message] = eventually(on_server, DELIVERY_TIMEOUT, "betty's message in andy's mailbox on the MTA")
    assert header_values(message, "Return-Path") == ["<betty@stevenchoy.example>"]

    listing = labctl("mailbox", "andy", "--lab", lab.name).stdout
    assert "on the server (smtp.ouhk.example): " in listing and " message(s) for andy@ouhk.example; " in listing
    assert f"`labctl fetch andy --lab {lab.name}`" in listing

    labctl("stop", "andy", "--lab", lab.name)
    try:
        stopped = labctl("mailbox", "andy", "--lab", lab.name, check=False)
        assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
        assert f"host andy of lab '{lab.name}' is exited; start it with `labctl start andy --lab {lab.name}`" \
            in " ".join(stopped.stderr.split())
    finally:
        labctl("start", "andy", "--lab", lab.name)


def test_mail_outside_the_sealed_lab_is_refused_at_send(running_lab: RunningLab) -> None:
    """It was accepted, then retried for ten minutes with "no name server answered"."""
    lab = running_lab.lab
    sent = labctl("send", "--lab", lab.name, "--from", "andy", "--to", "someone@gmail.com",
                  "--subject", "out", "--body", "x", check=False)
    assert sent.returncode == 1
    assert "labctl: andy: someone@gmail.com: gmail.com is outside the sealed lab" in " ".join(sent.stderr.split())
    queued = parse_json(mail.queue(lab, as_json=True))["entries"]
    assert not any(r["address"] == "someone@gmail.com" for e in queued for r in e["recipients"])
    # Typed by hand past the MUA, the MTA takes it, and bounces it at once with the reason.
    log = dialogue(lab, "andy", "smtp.ouhk.example", 25, [
        "MAIL FROM:<andy@ouhk.example>", "RCPT TO:<someone@gmail.com>", "DATA", "Subject: out\r\n\r\nx\r\n.", "QUIT"])
    assert log[4][1].startswith("250 2.0.0"), log

    def bounced() -> list[dict[str, Any]] | None:
        stored = json.loads(labctl("mailbox", "--server", "andy", "--lab", lab.name, "--json").stdout)
        gone = "rfc822; someone@gmail.com"
        return [m for m in stored for r in m["delivery_status"] if r["Final-Recipient"] == gone] or None
    [bounce] = eventually(bounced, DELIVERY_TIMEOUT, "the bounce for someone@gmail.com")
    assert "gmail.com is outside the sealed lab" in bounce["text"].replace("\n", " ")
