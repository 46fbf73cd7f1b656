"""Crashes and faults on a real lab: what was acknowledged is delivered, at worst twice, never lost.

* the MTA SIGKILLed (``docker kill``) with hundreds of acknowledged messages queued and in flight;
* the MX SIGKILLed in the middle of receiving a message: the MTA retries and it arrives once;
* the MX's mail disk full (a small tmpfs, topology ``tmpfs:``): ``452 4.3.1``, nothing acknowledged
  lost, delivery resumes once space returns;
* POP3: a connection dropped after DELE deletes nothing; a second session on a mailbox is refused.

The load comes from inside the lab (smtplib on andy's host), as a user's would. Every message
carries a Message-ID; a message counts as acknowledged only when its sender got the ``250`` for
it, and the senders retry the others with the same Message-ID, as real clients do. Each test is
bounded: a few hundred messages, a deadline on every wait.
"""

from __future__ import annotations

import collections
import json
import threading
import uuid
from collections.abc import Iterator

import pytest

from labctl import mail, topology
from labctl.backend.docker_engine import DockerEngine
from labctl.lab import Lab
from tests.lab.conftest import labctl, parse_json, unique_lab
from tests.lab.waiting import eventually

DELIVERY_TIMEOUT = 120.0  # a few hundred messages on a loaded two-core CI machine; takes seconds here
BETTY = "betty@stevenchoy.example"

# Sends messages numbered [first, first+count) to betty over `conns` connections to the MTA's port 25,
# retrying a failed one (same Message-ID) until the deadline. Prints what was acknowledged; the
# progress file says meanwhile how many were acknowledged and how many attempts failed.
LOAD = r"""
import json, os, smtplib, sys, threading, time
server, tag, first, count, conns, progress = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
deadline = time.monotonic() + 100
acked, errors, lock = [], [], threading.Lock()

def message(mid):
    return (f"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: load {mid}\r\n"
            f"Message-ID: {mid}\r\n\r\nmessage {mid}\r\n").encode()

def report():  # called with the lock held
    with open(progress + ".new", "w") as f:
        f.write(f"{len(acked)} {len(errors)}")
    os.replace(progress + ".new", progress)  # a reader never sees half a line

def worker(k):
    todo = [f"<{tag}.{i}@andy.ouhk.example>" for i in range(first + k, first + count, conns)]
    smtp = None
    while todo and time.monotonic() < deadline:
        try:
            if smtp is None:
                smtp = smtplib.SMTP(server, 25, local_hostname="andy.ouhk.example", timeout=10)
            smtp.sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], message(todo[0]))
        except (smtplib.SMTPException, OSError) as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:120])
                report()
            try:
                smtp.close()
            except Exception:
                pass
            smtp = None
            time.sleep(0.1)
            continue
        with lock:
            acked.append(todo.pop(0))
            report()
    if smtp is not None:
        smtp.quit()

threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"acked": acked, "errors": errors}))
"""

# betty's messages as her POP3 server lists them (TOP n 0), in mailbox order: for each, its Message-ID
# and the id the MTA's Received header gave it (one per message the MTA accepted from a sender).
MESSAGE_IDS = r"""
import json, poplib, re
p = poplib.POP3("mail.stevenchoy.example", 110, timeout=30)
p.user("betty")
p.pass_("betty-secret")
out = []
for n in range(1, p.stat()[0] + 1):
    header = b"\n".join(p.top(n, 0)[1]).decode(errors="replace").replace("\n ", " ").replace("\n\t", " ")
    mid = re.search(r"(?im)^message-id:\s*(\S+)", header)
    mta = re.search(r"(?i)by smtp\.ouhk\.example \S+ with \S+ id (\S+)", header)
    out.append([mid.group(1) if mid else "", mta.group(1) if mta else ""])
p.quit()
print(json.dumps(out))
"""

# One message through smtplib, reporting the server's final answer instead of raising.
SEND_ONE = r"""
import json, smtplib, sys
server, port, mid, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
body = "".join(f"{i:07d} the quick brown fox jumps over the lazy dog\r\n" for i in range(size // 50 + 1))
msg = (f"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: {mid}\r\nMessage-ID: {mid}\r\n\r\n"
       + body).encode()
s = smtplib.SMTP(server, port, local_hostname="andy.ouhk.example", timeout=60)
s.ehlo()
s.mail("andy@ouhk.example")
s.rcpt("betty@stevenchoy.example")
code, text = s.data(msg)
s.quit()
print(json.dumps([code, text.decode()]))
"""


@pytest.fixture(scope="module")
def lab(client: DockerEngine, image: str) -> Iterator[Lab]:
    name = unique_lab("crash")
    labctl("up", "--lab", name)
    lab = Lab(client, name)
    try:
        yield lab
        assert_no_tracebacks(lab)
    finally:
        labctl("down", "--lab", name, check=False)


def assert_no_tracebacks(lab: Lab) -> None:
    """No server hit a bug of its own on the way (they log a traceback and carry on)."""
    for host in ("ns", "smtp", "mail"):
        log = b"".join(lab.logs(host)).decode(errors="replace")
        assert "Traceback" not in log, f"{host}:\n{log[-3000:]}"


def run_json(lab: Lab, host: str, script: str, *args: str) -> object:
    ran = lab.exec(host, ["python3", "-c", script, *args])
    assert ran.exit_code == 0, ran.stderr.decode(errors="replace")
    return json.loads(ran.output)


def send_one(lab: Lab, server: str, mid: str, size: int) -> tuple[int, str]:
    """One message from andy's host straight to ``server``'s port 25: the final reply to its DATA."""
    out = run_json(lab, "andy", SEND_ONE, server, "25", mid, str(size))
    assert isinstance(out, list)
    return int(out[0]), str(out[1])


def betty_messages(lab: Lab) -> list[tuple[str, str]]:
    """(Message-ID, the MTA's queue id) of each message in betty's mailbox."""
    found = run_json(lab, "betty", MESSAGE_IDS)
    assert isinstance(found, list)
    return [(str(mid), str(qid)) for mid, qid in found]


def betty_ids(lab: Lab) -> list[str]:
    return [mid for mid, _ in betty_messages(lab)]


def wait_delivered(lab: Lab, wanted: set[str]) -> collections.Counter[str]:
    """Flush the queue and read betty's mailbox until every wanted Message-ID is there."""
    def delivered() -> collections.Counter[str]:
        mail.queue(lab, flush=True)
        seen = collections.Counter(betty_ids(lab))
        missing = wanted - set(seen)
        assert not missing, f"{len(missing)} acknowledged messages never arrived: {sorted(missing)[:5]}"
        return seen
    return eventually(delivered, DELIVERY_TIMEOUT, "every acknowledged message in betty's mailbox", interval=1.0)


class Load:
    """The LOAD script running on andy's host in a thread, with its progress readable meanwhile."""

    def __init__(self, lab: Lab, tag: str, first: int, count: int, conns: int = 4) -> None:
        self.lab = lab
        self.progress = f"/tmp/{tag}.{first}.progress"
        self.result: dict[str, list[str]] = {}
        args = ["smtp.ouhk.example", tag, str(first), str(count), str(conns), self.progress]
        self._thread = threading.Thread(target=self._run, args=(args,), daemon=True)
        self._thread.start()

    def _run(self, args: list[str]) -> None:
        out = run_json(self.lab, "andy", LOAD, *args)
        assert isinstance(out, dict)
        self.result = out

    def so_far(self) -> tuple[int, int]:
        """(messages acknowledged, sender attempts failed) until now."""
        ran = self.lab.exec("andy", ["cat", self.progress])
        if ran.exit_code != 0 or not ran.output.strip():
            return 0, 0
        acked, failed = ran.output.split()
        return int(acked), int(failed)

    def wait_acked(self, at_least: int, timeout: float = 60.0) -> None:
        def acked() -> int:
            n, _ = self.so_far()
            if n < at_least and not self._thread.is_alive():
                pytest.fail(f"the load ended early: {self.result}")
            assert n >= at_least, f"{n} acknowledged so far"
            return n
        eventually(acked, timeout, f"{at_least} messages acknowledged", interval=0.05)

    def wait_failed(self, more_than: int, timeout: float = 60.0) -> None:
        """Until some sender has had an attempt fail since ``more_than`` had (a refused connection,
        a 250 that never came)."""
        def failed() -> int:
            _, n = self.so_far()
            if n <= more_than and not self._thread.is_alive():
                pytest.fail(f"the load ended before a sender noticed: {self.result}")
            assert n > more_than, f"{n} failed attempts so far"
            return n
        eventually(failed, timeout, "a sender noticing the MTA is gone", interval=0.05)

    def finish(self) -> list[str]:
        self._thread.join(DELIVERY_TIMEOUT)
        assert not self._thread.is_alive(), "the load did not finish"
        assert self.result, "the load script failed"
        return self.result["acked"]


def test_mta_killed_under_load_loses_no_acknowledged_message(lab: Lab) -> None:
    tag = f"kill-mta-{uuid.uuid4().hex[:6]}"
    queued_n, live_n = 200, 200
    # 1. The MX is down: 200 messages are acknowledged and wait in the MTA's queue.
    lab.stop("mail")
    try:
        queued = Load(lab, tag, 0, queued_n).finish()
        assert len(queued) == queued_n
        assert len(parse_json(mail.queue(lab, as_json=True))["entries"]) >= queued_n
    finally:
        lab.start("mail")
    # 2. The MX is back; the MTA relays the backlog while 200 more arrive; SIGKILL it mid-way.
    live = Load(lab, tag, queued_n, live_n)
    mail.queue(lab, flush=True)
    live.wait_acked(live_n // 3)
    _, failed = live.so_far()
    assert lab.kill("smtp").condition == "killed"
    live.wait_failed(failed)  # the senders notice: refused connections, a 250 that never came
    lab.start("smtp")
    acked = queued + live.finish()
    assert len(acked) == queued_n + live_n  # the senders retried until every message was taken

    seen = wait_delivered(lab, set(acked))
    ours = {mid: n for mid, n in seen.items() if tag in mid}
    lost = [mid for mid in acked if ours.get(mid, 0) == 0]
    # A duplicate has one of two causes, both allowed (RFC 5321 §6.1 prefers them to a loss):
    # the MTA queued the message twice, because its 250 died with it and the sender tried again
    # (two MTA queue ids); or it relayed once more after the restart a copy the MX had already
    # taken just before the kill (one queue id, delivered twice).
    copies = collections.Counter(m for m in betty_messages(lab) if tag in m[0])  # (Message-ID, queue id)
    queued_twice = sum(n - 1 for n in collections.Counter(mid for mid, _ in copies).values())
    relayed_again = sum(n - 1 for n in copies.values())
    print(f"\nMTA killed: {len(acked)} acknowledged, {len(ours)} distinct delivered, {len(lost)} lost; "
          f"{sum(ours.values()) - len(ours)} duplicates ({relayed_again} relayed again after the restart, "
          f"{queued_twice} queued twice after a lost 250); "
          f"{len(live.result['errors'])} failed sender attempts")
    assert lost == []
    assert set(ours) == set(acked)  # nothing delivered that no one sent
    assert parse_json(mail.queue(lab, as_json=True))["entries"] == []


def mx_connection_bytes(lab: Lab) -> int:
    """Octets the MTA has had acknowledged on its connection to the MX's port 25 (0: none open)."""
    ran = lab.exec("smtp", ["ss", "-tnHi", "state", "established", "dport", "=", ":25"])
    total = 0
    for word in ran.output.split():
        if word.startswith("bytes_acked:"):
            total = max(total, int(word.split(":")[1]))
    return total


def test_mx_killed_in_the_middle_of_data_the_message_arrives_once(lab: Lab) -> None:
    mid = f"<kill-mx-{uuid.uuid4().hex[:6]}@andy.ouhk.example>"
    size = 3_000_000
    # The MTA's way out slowed to 2 Mbit/s: the 3 MB message takes about 12 s to cross.
    shaped = lab.exec("smtp", ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "2mbit",
                               "burst", "32kbit", "latency", "400ms"])
    assert shaped.exit_code == 0, shaped.stderr
    try:
        code, text = send_one(lab, "smtp.ouhk.example", mid, size)
        assert code == 250, text
        queue_id = text.split()[1]
        def well_into_the_data() -> int:
            sent = mx_connection_bytes(lab)
            assert sent >= size // 10, f"{sent} octets acknowledged by the MX"
            return sent
        eventually(well_into_the_data, 30, "the MTA sending the message to the MX", interval=0.1)
        assert lab.kill("mail").condition == "killed"
    finally:
        lab.exec("smtp", ["tc", "qdisc", "del", "dev", "eth0", "root"])
    lab.start("mail")
    seen = wait_delivered(lab, {mid})
    assert seen[mid] == 1
    # The MTA writes its log in batches (services/logbuffer.py): the last line may follow the
    # delivery by a few milliseconds.
    def sent_logged() -> list[str]:
        log = b"".join(lab.logs("smtp")).decode(errors="replace")
        attempts = [line for line in log.splitlines() if f"{queue_id}: to=<{BETTY}>" in line]
        assert attempts and "status=sent" in attempts[-1], attempts
        return attempts
    attempts = eventually(sent_logged, 10, f"the MTA logging {queue_id} as sent", interval=0.1)
    assert any("status=deferred" in line for line in attempts), attempts  # the cut-off attempt


def test_pop3_dropped_after_dele_deletes_nothing_and_a_second_session_is_refused(lab: Lab) -> None:
    mid = f"<pop3-{uuid.uuid4().hex[:6]}@andy.ouhk.example>"
    code, _ = send_one(lab, "smtp.ouhk.example", mid, 100)
    assert code == 250
    wait_delivered(lab, {mid})
    script = r"""
import json, poplib, socket
first = poplib.POP3("mail.stevenchoy.example", 110, timeout=10)
first.user("betty"); first.pass_("betty-secret")
count = first.stat()[0]
deleted = [first.dele(n).decode() for n in range(1, count + 1)]
second = poplib.POP3("mail.stevenchoy.example", 110, timeout=10)
second.user("betty")
try:
    refused = second.pass_("betty-secret").decode()
except poplib.error_proto as exc:
    refused = str(exc)
second.close()
first.sock.shutdown(socket.SHUT_RDWR)  # dropped: no QUIT
first.close()
print(json.dumps({"count": count, "deleted": deleted, "refused": refused}))
"""
    before = betty_ids(lab)
    out = run_json(lab, "betty", script)
    assert isinstance(out, dict)
    assert out["count"] == len(before) and all(d.startswith("+OK") for d in out["deleted"])
    assert "-ERR [IN-USE]" in out["refused"]
    # The server notices the drop, unlocks (until then a read fails: still locked), and has deleted
    # nothing. The first read that works is the one compared (a 1-tuple: an empty mailbox is an answer).
    (after,) = eventually(lambda: (betty_ids(lab),), 10, "betty's mailbox unlocked after the drop")
    assert after == before


SMALL_DISK = "size=1m"


@pytest.fixture
def small_disk_lab(client: DockerEngine, image: str) -> Iterator[Lab]:
    """A lab whose MX keeps its mailboxes on a 1 MB tmpfs."""
    text = topology.DEFAULT_TOPOLOGY.read_text()
    service = "    hostname: mail.stevenchoy.example\n    command: mx\n"
    topo = topology.load(topology.DEFAULT_TOPOLOGY,
                         text.replace(service, f"{service}    tmpfs: [/var/mail/maillab:{SMALL_DISK}]\n"))
    lab = Lab(client, unique_lab("disk"))
    try:
        lab.up(topo, image)
        yield lab
        assert_no_tracebacks(lab)
    finally:
        lab.down()


def test_mx_disk_full_answers_452_loses_nothing_and_resumes(small_disk_lab: Lab) -> None:
    lab = small_disk_lab
    mounts = lab.exec("mail", ["findmnt", "-no", "FSTYPE,SIZE", "/var/mail/maillab"]).output.split()
    assert mounts == ["tmpfs", "1M"], mounts
    fill = lab.exec("mail", ["dd", "if=/dev/zero", "of=/var/mail/maillab/filler", "bs=4k"])
    assert fill.exit_code != 0 and b"No space left on device" in fill.stderr

    # Straight to the MX: refused for now with 452, not acknowledged.
    direct = f"<direct-{uuid.uuid4().hex[:6]}@andy.ouhk.example>"
    code, text = send_one(lab, "mail.stevenchoy.example", direct, 2000)
    assert (code, text.split()[0]) == (452, "4.3.1"), text

    # Through the MTA: acknowledged there, deferred by the MX with 452, kept in the queue.
    tag = f"disk-{uuid.uuid4().hex[:6]}"
    acked = Load(lab, tag, 0, 20, conns=2).finish()
    assert len(acked) == 20
    def all_deferred() -> list[str]:
        entries = parse_json(mail.queue(lab, as_json=True))["entries"]
        errors = [r["last_error"] for e in entries for r in e["recipients"] if r["last_error"]]
        assert len(errors) == len(acked), entries
        return errors
    errors = eventually(all_deferred, 30, "every acknowledged message deferred by the MX", interval=0.3)
    assert all("452" in e and "4.3.1" in e for e in errors), errors
    stray = lab.exec("mail", ["find", "/var/mail/maillab", "-path", "*/tmp/*", "-type", "f"])
    assert stray.output == "", "a refused message left a partial file behind"

    # Space again: everything acknowledged arrives, once.
    assert lab.exec("mail", ["rm", "/var/mail/maillab/filler"]).exit_code == 0
    seen = wait_delivered(lab, set(acked))
    assert all(seen[mid] == 1 for mid in acked)
    assert direct not in seen  # refused, never stored
    assert parse_json(mail.queue(lab, as_json=True))["entries"] == []
