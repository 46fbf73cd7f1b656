"""The mail load shared by the mail benchmarks: a sender on a MUA host, a watcher on the MX host.

The sender submits messages over SMTP from inside the lab (several concurrent clients, or one at a
time, paced) and notes when each submission started; the watcher follows the recipient's Maildir
with inotify and notes when each message's file appeared there. Both run as ``python3 -c`` on the
lab hosts, so they work on either image, against our servers and against Postfix alike.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

from labctl import topology
from labctl.backend.docker_engine import DockerEngine
from labctl.image import ImageBuilder
from labctl.lab import Lab

MAILDIR = "/var/mail/maillab/stevenchoy.example/betty"

# Runs on the MX host: waits for `count` messages tagged with `run` and prints when each appeared.
WATCHER = r"""
import ctypes, json, os, select, sys, time
maildir, run, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
new = os.path.join(maildir, "new")
# Create the Maildir owned as its mail root is, so that the MX can still deliver into it: root for
# ours, the vmail user for Postfix's virtual(8).
root = os.stat(os.path.dirname(os.path.dirname(maildir)))
for d in (os.path.dirname(maildir), maildir, new, os.path.join(maildir, "tmp"), os.path.join(maildir, "cur")):
    if not os.path.isdir(d):
        os.makedirs(d, exist_ok=True)
        os.chown(d, root.st_uid, root.st_gid)
# inotify, not polling: a polling loop would take CPU from the servers it measures.
libc = ctypes.CDLL("libc.so.6", use_errno=True)
IN_MOVED_TO, IN_CREATE = 0x80, 0x100
fd = libc.inotify_init1(os.O_NONBLOCK)
if fd < 0 or libc.inotify_add_watch(fd, new.encode(), IN_MOVED_TO | IN_CREATE) < 0:
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
tag = ("X-Bench: " + run + " ").encode()
arrived = {}
deadline = time.time() + timeout
print("ready", flush=True)
while len(arrived) < count and time.time() < deadline:
    if not select.select([fd], [], [], 1.0)[0]:
        continue
    buf, now = os.read(fd, 1 << 20), time.time()
    names, i = [], 0
    while i < len(buf):
        _wd, _mask, _cookie, size = __import__("struct").unpack_from("iIII", buf, i)
        names.append(buf[i + 16:i + 16 + size].rstrip(b"\0").decode())
        i += 16 + size
    for name in names:
        try:
            with open(os.path.join(new, name), "rb") as f:
                head = f.read(4096)
        except FileNotFoundError:
            continue
        at = head.find(tag)
        if at >= 0:
            arrived[head[at + len(tag):].split(b"\n", 1)[0].strip().decode()] = now
print(json.dumps(arrived))
"""

# Runs on andy: submits messages, prints when each submission started.
SENDER = r"""
import json, smtplib, ssl, sys, threading, time
host, run, count, clients, pace = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
size = int(sys.argv[6]) if len(sys.argv) > 6 else 1024
tls = len(sys.argv) > 7 and sys.argv[7] == "starttls"  # verified against the system store (the lab CA)
body = ("x" * 70 + "\r\n") * max(1, size // 72)  # in lines a mail body really has
started, errors = {}, []
lock = threading.Lock()
def client(k):
    s = smtplib.SMTP(host, 25, local_hostname="andy.ouhk.example", timeout=30)
    if tls:
        s.starttls(context=ssl.create_default_context())
    for i in range(k, count, clients):
        ident = f"{i}"
        msg = (f"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: bench {i}\r\n"
               f"X-Bench: {run} {ident}\r\n\r\n{body}\r\n")
        t = time.time()
        try:
            s.sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], msg)
        except Exception as e:
            with lock:
                errors.append(repr(e))
            continue
        with lock:
            started[ident] = t
        if pace:
            time.sleep(pace)
    s.quit()
threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"started": started, "errors": errors}))
"""


def fresh_lab(client: DockerEngine, name: str) -> Lab:
    """The default lab, newly up under ``name`` (whatever a crashed run left under it removed first)."""
    lab = Lab(client, name)
    lab.down()
    lab.up(topology.load(), ImageBuilder(client).ensure())
    return lab


def run_once(lab: Lab, target: str, run: str, count: int, clients: int, pace: float, size: int = 1024,
             *, sender: str = "andy", mail_host: str = "mail", maildir: str = MAILDIR,
             starttls: bool = False) -> dict[str, Any]:
    """Send ``count`` messages of about ``size`` bytes from ``sender``'s host to ``target``, watch
    them arrive in ``maildir`` on ``mail_host``; return the measurements. ``starttls``: each client
    connection upgrades with STARTTLS first (a lab with TLS on)."""
    result: dict[str, Any] = {}

    def watch() -> None:
        out = lab.exec(mail_host, ["python3", "-c", WATCHER, maildir, run, str(count), "300"])
        result["arrived"] = json.loads(out.output.splitlines()[-1])

    watcher = threading.Thread(target=watch)
    watcher.start()
    # Let the watcher take its first look before anything is sent.
    time.sleep(0.5)
    sent = lab.exec(sender, ["python3", "-c", SENDER, target, run, str(count), str(clients), str(pace), str(size),
                                  "starttls" if starttls else "clear"])
    watcher.join()
    report = json.loads(sent.output)
    started: dict[str, float] = report["started"]
    arrived: dict[str, float] = result["arrived"]
    latencies = sorted((arrived[i] - started[i]) * 1000 for i in started if i in arrived)
    span = max(arrived.values()) - min(started.values()) if arrived and started else float("nan")
    return {
        "sent": len(started), "delivered": len(arrived), "errors": report["errors"][:3],
        "median_ms": statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] if latencies else float("nan"),
        "per_s": len(arrived) / span if span == span and span > 0 else float("nan"),
    }


def memory_mib(client: DockerEngine, lab: Lab, hosts: list[str] | None = None) -> dict[str, float]:
    """Memory in use per host of ``lab`` (MiB), as `docker stats` counts it: the cgroup's usage less
    the page cache it could drop (inactive files)."""
    out: dict[str, float] = {}
    for h in lab.status():
        if hosts is not None and h.name not in hosts:
            continue
        stats = client.api.stats(h.container, stream=False, one_shot=True)["memory_stats"]
        detail = stats.get("stats", {})
        cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        out[h.name] = (stats.get("usage", 0) - cache) / 2**20
    return out
