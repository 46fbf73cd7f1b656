"""IMAP with the clients people use, against our MX and against Dovecot, with the same assertions.

Two labs, each with Debian's mail clients on andy's and betty's hosts (the reference image):

- ``ours``: compose/reference/clients.yml, our servers everywhere: our IMAP server on the MX;
- ``dovecot``: compose/reference/mx.yml, Postfix + Dovecot as the MX (Dovecot's IMAP, the same
  Maildir++ layout).

Every test runs against both. The clients run on betty's host (the lab is sealed): mutt (read,
flag, move to a folder, delete, expunge), fetchmail (``keep``, then ``flush`` without keep),
s-nail (``imap://``) and curl (``imap://``: list, fetch by UID, STORE). Each result is checked
twice on the server's side: in the Maildir itself (files, flags in the names, ``.Folder``s), and
through a second IMAP session (Python's imaplib) that reads UIDs, flags and subjects. A restart
of the MX keeps UIDs, UIDVALIDITY and flags; after a SIGKILL of the MX, what was expunged is gone,
what was only flagged \\Deleted is not, and an APPEND answered OK is there.
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from labctl import topology
from labctl.backend.docker_engine import DockerEngine
from labctl.lab import Lab
from tests.lab.conftest import labctl, unique_lab
from tests.lab.waiting import eventually

COMPOSE = topology.DEFAULT_TOPOLOGY.parent
OVERLAYS = {"ours": "clients.yml", "dovecot": "mx.yml"}
ROLES = {"ours": "mx", "dovecot": "postfix-mx"}
MX = "mail.stevenchoy.example"
USER, PASSWORD = "betty", "betty-secret"
MAILDIR = "/var/mail/maillab/stevenchoy.example/betty"
DELIVERY_TIMEOUT = 60.0


@pytest.fixture(scope="module", params=list(OVERLAYS))
def peer(request: pytest.FixtureRequest, client: DockerEngine, image: str) -> Iterator[tuple[str, Lab]]:
    """(which server, its lab): one lab at a time, each used by every test before the next comes up."""
    side: str = request.param
    name = unique_lab(f"imap-{side}")
    labctl("up", "--lab", name, "--overlay", str(COMPOSE / "reference" / OVERLAYS[side]))
    lab = Lab(client, name)
    try:
        assert {h.name: h.role for h in lab.status()}["mail"] == ROLES[side]
        yield side, lab
        if side == "ours":
            log = b"".join(lab.logs("mail")).decode(errors="replace")
            assert "Traceback" not in log, log[-3000:]
    finally:
        labctl("down", "--lab", name, check=False)


def run_json(lab: Lab, host: str, script: str, *args: str) -> Any:
    ran = lab.exec(host, ["python3", "-c", script, *args])
    assert ran.exit_code == 0, ran.output + ran.stderr.decode(errors="replace")
    return json.loads(ran.output)


# -- the server's side: a second IMAP session, and the Maildir itself ------------------------------

# With "fresh", first empties betty's mailbox (every folder but INBOX deleted, INBOX expunged).
# Then delivers each subject by SMTP to the MX, one at a time, each waited for in INBOX before
# the next is sent: the messages' order (and so their numbers) is the order given, whichever
# server stores them.
PREPARE = r"""
import imaplib, json, smtplib, sys, time
mode, mx, user, password, *subjects = sys.argv[1:]
m = imaplib.IMAP4(mx, 143, timeout=30)
m.login(user, password)
if mode == "fresh":
    for line in m.list()[1]:
        name = line.decode().rsplit(' "." ', 1)[1].strip('"')
        if name.upper() != "INBOX" and "\\Noselect" not in line.decode():
            m.delete(name)
    if int(m.select("INBOX")[1][0]):
        m.store("1:*", "+FLAGS", "(\\Deleted)")
        m.expunge()
m.select("INBOX")
for subject in subjects:
    msg = (f"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '.')}@andy.ouhk.example>\r\n\r\nbody of {subject}\r\n")
    with smtplib.SMTP(mx, 25, local_hostname="betty.stevenchoy.example", timeout=30) as s:
        s.sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], msg)
    deadline = time.monotonic() + 60
    while not m.search(None, "SUBJECT", f'"{subject}"')[1][0]:
        if time.monotonic() > deadline:
            sys.exit(f"{subject!r} never arrived")
        time.sleep(0.1)
        m.noop()
m.logout()
print("[]")
"""

# What a second session sees: for each folder, UIDVALIDITY, UIDNEXT and [uid, flags, subject] per message.
INSPECT = r"""
import imaplib, json, re, sys
mx, user, password = sys.argv[1:4]
m = imaplib.IMAP4(mx, 143, timeout=30)
m.login(user, password)
out = {}
for line in m.list()[1]:
    name = line.decode().rsplit(' "." ', 1)[1].strip('"')
    if "\\Noselect" in line.decode() or "\\NonExistent" in line.decode():
        continue  # a parent in the hierarchy (Lists of Lists.lab), not a mailbox
    typ, data = m.status(name, "(UIDVALIDITY UIDNEXT MESSAGES)")
    status = dict(re.findall(r"(\w+) (\d+)", data[0].decode().rsplit("(", 1)[1]))
    m.select(name, readonly=True)  # EXAMINE: looking must not change \Seen or \Recent
    messages = []
    if int(status["MESSAGES"]):
        typ, data = m.fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if isinstance(item, tuple):
                meta = item[0].decode()
                uid = int(re.search(r"UID (\d+)", meta).group(1))
                flags = sorted(re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split())
                subject = item[1].decode().split(":", 1)[1].strip()
                messages.append([uid, [f for f in flags if f != "\\Recent"], subject])
    out[name] = {"uidvalidity": int(status["UIDVALIDITY"]), "uidnext": int(status["UIDNEXT"]),
                 "messages": sorted(messages)}
m.logout()
print(json.dumps(out))
"""

# The Maildir as it is on disk: for each folder (INBOX, .Name), [subject, flag letters] per file.
MAILDIR_VIEW = r"""
import json, os, re, sys
root = sys.argv[1]
out = {}
folders = sorted(d for d in os.listdir(root) if d.startswith(".") and os.path.isdir(os.path.join(root, d, "cur")))
for folder in ["", *folders]:
    found = []
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, folder, sub)):
            with open(os.path.join(root, folder, sub, name), "rb") as f:
                head = f.read(4096).decode(errors="replace")
            subject = re.search(r"(?im)^subject: *(.*)$", head)
            info = name.partition(":2,")[2] if ":2," in name else ""
            found.append([subject.group(1).strip() if subject else "", "".join(c for c in info if c in "DFRST")])
    out[folder[1:] or "INBOX"] = sorted(found)
print(json.dumps(out))
"""


def prepare(lab: Lab, *subjects: str, fresh: bool = True) -> None:
    run_json(lab, "betty", PREPARE, "fresh" if fresh else "add", MX, USER, PASSWORD, *subjects)


def inspect(lab: Lab) -> dict[str, Any]:
    found: dict[str, Any] = run_json(lab, "betty", INSPECT, MX, USER, PASSWORD)
    return found


def subjects_flags(view: dict[str, Any], folder: str) -> dict[str, list[str]]:
    return {subject: flags for _, flags, subject in view[folder]["messages"]}


def maildir(lab: Lab) -> dict[str, dict[str, str]]:
    found = run_json(lab, "mail", MAILDIR_VIEW, MAILDIR)
    return {folder: dict((subject, letters) for subject, letters in files) for folder, files in found.items()}


def tagged(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix} {i} {tag}" for i in range(1, n + 1)]


# -- mutt -----------------------------------------------------------------------------------------

# mutt set up for the lab as a student would: IMAP without TLS (the lab's default), the server's
# folders under "=", no local mbox, no questions. -n: no system muttrc.
MUTTRC = f"""set ssl_starttls=no
set ssl_force_tls=no
set imap_user={USER}
set imap_pass={PASSWORD}
set folder=imap://{MX}/
set spoolfile=+INBOX
set record=
set mbox=+INBOX
set move=no
set delete=yes
set quit=yes
set confirmcreate=no
set confirmappend=no
set sort=mailbox-order
set mark_old=no
set wait_key=no
"""


def mutt(lab: Lab, keys: str) -> str:
    """mutt on a terminal (script(1)) on betty's host, opening INBOX and typing ``keys``; its screen."""
    command = f"mutt -n -F /tmp/imap-muttrc -e {shlex.quote('push ' + keys)}"
    script = (f"printf %s {shlex.quote(MUTTRC)} > /tmp/imap-muttrc; TERM=xterm timeout 60 script -qec "
              f"{shlex.quote(command)} /dev/null")
    ran = lab.exec("betty", ["sh", "-c", script])
    assert ran.exit_code == 0, ran.output[-2000:]
    return ran.output


def test_mutt_reads_flags_moves_deletes_and_expunges(peer: tuple[str, Lab]) -> None:
    _, lab = peer
    read, flagged, moved, deleted = subjects = tagged("mutt", 4)
    prepare(lab, *subjects)
    # Message 1 read (the pager, then back), 2 flagged, 3 saved to =Archive (mutt copies, then
    # marks it deleted), 4 deleted; $ (sync) expunges both, and mutt quits.
    mutt(lab, "1<enter><display-message><exit>2<enter><flag-message>"
              "3<enter><save-message><kill-line>=Archive<enter>4<enter><delete-message><sync-mailbox><quit>")
    view = inspect(lab)
    assert subjects_flags(view, "INBOX") == {read: ["\\Seen"], flagged: ["\\Flagged"]}
    assert list(subjects_flags(view, "Archive")) == [moved]
    on_disk = maildir(lab)
    assert on_disk["INBOX"] == {read: "S", flagged: "F"}
    assert list(on_disk["Archive"]) == [moved]
    assert deleted not in json.dumps(on_disk)


# -- fetchmail ------------------------------------------------------------------------------------


def fetchmail(lab: Lab, options: str, *, all_messages: bool) -> tuple[int, str, str]:
    """fetchmail over IMAP into a file; (exit code, its log, what it delivered).

    ``sslproto ''``: fetchmail 6.4 tries STARTTLS even when not offered; the lab speaks plain IMAP.
    """
    rc = f"poll {MX} proto imap user {USER} pass {PASSWORD} sslproto '' is root here {options}\n"
    script = (f"umask 077; printf %s {shlex.quote(rc)} > /tmp/imap-fetchmailrc; rm -f /tmp/imap-fetched; "
              f"fetchmail {'--all ' if all_messages else ''}-f /tmp/imap-fetchmailrc --mda 'cat >> /tmp/imap-fetched' "
              "2>&1; code=$?; echo '--- delivered ---'; cat /tmp/imap-fetched 2>/dev/null; exit $code")
    ran = lab.exec("betty", ["sh", "-c", script])
    log, _, delivered = ran.output.partition("--- delivered ---\n")
    return ran.exit_code, log, delivered


def test_fetchmail_keeps_then_flushes(peer: tuple[str, Lab]) -> None:
    _, lab = peer
    old = tagged("fetchmail old", 2)
    prepare(lab, *old)
    code, log, delivered = fetchmail(lab, "keep", all_messages=True)
    assert code == 0, log
    assert all(f"Subject: {s}" in delivered and f"body of {s}" in delivered for s in old), delivered
    # keep: still on the server, now seen.
    assert subjects_flags(inspect(lab), "INBOX") == {s: ["\\Seen"] for s in old}
    assert maildir(lab)["INBOX"] == {s: "S" for s in old}

    (new,) = tagged("fetchmail new", 1)
    prepare(lab, new, fresh=False)
    # flush, no keep: the new message is fetched and deleted, the old (seen) ones deleted unfetched.
    code, log, delivered = fetchmail(lab, "flush", all_messages=False)
    assert code == 0, log
    assert f"Subject: {new}" in delivered and not any(s in delivered for s in old), delivered
    assert inspect(lab)["INBOX"]["messages"] == []
    assert maildir(lab)["INBOX"] == {}


# -- s-nail ---------------------------------------------------------------------------------------


def snail(lab: Lab, commands: str) -> tuple[int, str]:
    """s-nail in batch mode (-#) on imap://betty@mail.stevenchoy.example/INBOX, reading ``commands``."""
    folder = f"imap://{USER}@{MX}/INBOX"
    script = (f"printf %s {shlex.quote(commands)} | s-nail -# -n -N -Sv15-compat "
              f"-Spassword-{USER}@{MX}={PASSWORD} -f {folder} 2>&1")
    ran = lab.exec("betty", ["sh", "-c", script])
    return ran.exit_code, ran.output


def test_snail_lists_reads_flags_and_deletes(peer: tuple[str, Lab]) -> None:
    _, lab = peer
    first, second, third = subjects = tagged("snail", 3)
    prepare(lab, *subjects)
    code, out = snail(lab, "headers\nprint 1\nflag 2\ndelete 3\nquit\n")
    assert code == 0, out
    assert all(s in out for s in subjects), out  # the header list
    assert f"body of {first}" in out, out  # print 1
    view = inspect(lab)
    assert subjects_flags(view, "INBOX") == {first: ["\\Seen"], second: ["\\Flagged"]}  # 3 expunged at quit
    assert maildir(lab)["INBOX"] == {first: "S", second: "F"}


# -- curl -----------------------------------------------------------------------------------------


def curl(lab: Lab, url: str, *extra: str) -> str:
    ran = lab.exec("betty", ["curl", "-sS", "--user", f"{USER}:{PASSWORD}", *extra, url])
    assert ran.exit_code == 0, ran.stderr.decode(errors="replace")
    return ran.output


def test_curl_lists_fetches_by_uid_and_stores(peer: tuple[str, Lab]) -> None:
    _, lab = peer
    first, second = subjects = tagged("curl", 2)
    prepare(lab, *subjects)
    curl(lab, f"imap://{MX}/", "-X", "CREATE Lists.lab")
    listing = curl(lab, f"imap://{MX}/")
    names = [line.rsplit(' "." ', 1)[1].strip('"') for line in listing.splitlines() if line.startswith("* LIST")]
    assert "INBOX" in names and "Lists.lab" in names, listing
    uids = {s: uid for uid, _, s in inspect(lab)["INBOX"]["messages"]}
    got = curl(lab, f"imap://{MX}/INBOX;UID={uids[second]}")
    assert f"Subject: {second}" in got and f"body of {second}" in got and first not in got
    found = curl(lab, f"imap://{MX}/INBOX", "-X", f'UID SEARCH SUBJECT "{first}"')
    assert found.split() == ["*", "SEARCH", str(uids[first])], found
    stored = curl(lab, f"imap://{MX}/INBOX", "-X", f"UID STORE {uids[first]} +FLAGS (\\Flagged)")
    assert "FETCH" in stored and "\\Flagged" in stored, stored
    view = inspect(lab)
    # Fetching by curl's BODY[] set \Seen (RFC 3501 §6.4.5); STORE added \Flagged.
    assert subjects_flags(view, "INBOX") == {first: ["\\Flagged"], second: ["\\Seen"]}
    assert maildir(lab)["INBOX"] == {first: "F", second: "S"}
    assert "Lists.lab" in view and (maildir(lab)["Lists.lab"] == {})


# -- restart and crash ------------------------------------------------------------------------------


def test_a_restart_of_the_mx_keeps_uids_uidvalidity_and_flags(peer: tuple[str, Lab]) -> None:
    side, lab = peer
    subjects = tagged("restart", 3)
    prepare(lab, *subjects)
    uids = {s: uid for uid, _, s in inspect(lab)["INBOX"]["messages"]}
    curl(lab, f"imap://{MX}/INBOX", "-X", f"UID STORE {uids[subjects[0]]} +FLAGS (\\Answered \\Flagged)")
    curl(lab, f"imap://{MX}/INBOX", "-X", f"UID STORE {uids[subjects[2]]} +FLAGS (\\Deleted)")
    curl(lab, f"imap://{MX}/", "-X", "CREATE Kept")
    before = inspect(lab)
    labctl("stop", "mail", "--lab", lab.name)
    labctl("start", "mail", "--lab", lab.name)  # waits until IMAP answers again
    after = inspect(lab)
    assert after == before, side
    assert subjects_flags(after, "INBOX")[subjects[0]] == ["\\Answered", "\\Flagged"]


APPEND = r"""
import imaplib, json, sys, time
mx, user, password, subject = sys.argv[1:]
m = imaplib.IMAP4(mx, 143, timeout=30)
m.login(user, password)
msg = f"From: betty@stevenchoy.example\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()
typ, data = m.append("INBOX", "(\\Seen)", None, msg)
print(json.dumps([typ, data[0].decode()]))
"""

EXPUNGE_ONE = r"""
import imaplib, json, sys
mx, user, password, gone, flagged = sys.argv[1:]
m = imaplib.IMAP4(mx, 143, timeout=30)
m.login(user, password)
m.select("INBOX")
answers = []
for subject in (gone, flagged):
    (uid,) = m.uid("SEARCH", "SUBJECT", f'"{subject}"')[1][0].split()
    answers.append(m.uid("STORE", uid, "+FLAGS", "(\\Deleted)")[0])
    if subject == gone:
        answers.append(m.uid("EXPUNGE", uid)[0])  # UIDPLUS: this one only, the other stays \Deleted
print(json.dumps(answers))
"""


def test_after_a_sigkill_the_expunged_is_gone_the_flagged_is_not_and_an_append_is_kept(
        peer: tuple[str, Lab]) -> None:
    side, lab = peer
    gone, flagged, kept = subjects = tagged("crash", 3)
    prepare(lab, gone, flagged, kept)
    assert run_json(lab, "betty", EXPUNGE_ONE, MX, USER, PASSWORD, gone, flagged) == ["OK", "OK", "OK"]
    (appended,) = tagged("appended", 1)
    typ, text = run_json(lab, "betty", APPEND, MX, USER, PASSWORD, appended)
    assert typ == "OK" and "APPENDUID" in text, text
    before = inspect(lab)
    assert lab.kill("mail").state == "exited"  # at once after the OKs: nothing had time to settle
    lab.start("mail")
    after = eventually(lambda: inspect(lab), 30, f"IMAP on the restarted {side} MX")
    assert subjects_flags(after, "INBOX") == {flagged: ["\\Deleted"], kept: [], appended: ["\\Seen"]}
    assert after["INBOX"] == before["INBOX"]  # the same UIDs and UIDVALIDITY too
    on_disk = maildir(lab)["INBOX"]
    assert on_disk == {flagged: "T", kept: "", appended: "S"}
    assert subjects[0] not in json.dumps(maildir(lab))
