"""Benchmark: end-to-end delivery latency and relay throughput of the lab's mail path.

Measured inside a fresh lab, on the lab network, with the durable queue (fsync) on:

- latency: andy submits one message at a time to the MTA (smtp.ouhk.example:25), paced so the MTA
  is idle when each one arrives; a watcher on the MX host notes when each message's file appears in
  betty's Maildir. Latency = file seen - submission started. Median and p95.
- throughput: several concurrent SMTP clients on andy submit N messages as fast as the MTA takes
  them; throughput = N / (last file in the Maildir - first submission started).

The baseline, in the same run, is one hop: the same clients submitting straight to the MX
(mail.stevenchoy.example:25), which writes the Maildir with the same fsync. The ratio shows what the
second hop (the MTA's queue, its MX lookup and its relay) costs. Sent and delivered are counted;
they must be equal. Targets (issue 3): median latency under 50 ms, throughput at least 300 msg/s.

    python bench/bench_mail.py [--latency-messages 200] [--messages 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl import engine, topology  # noqa: E402
from labctl.image import ImageBuilder  # noqa: E402
from labctl.lab import Lab  # noqa: E402

MAILDIR = "/var/mail/maillab/stevenchoy.example/betty"

# Runs on the MX host: waits for `count` messages tagged with `run` and prints when each appeared.
WATCHER = r"""
import ctypes, json, os, select, sys, time
maildir, run, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
new = os.path.join(maildir, "new")
os.makedirs(new, exist_ok=True)
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
import json, smtplib, sys, threading, time
host, run, count, clients, pace = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
body = ("x" * 70 + "\r\n") * 14  # 1 kB in lines a mail body really has
started, errors = {}, []
lock = threading.Lock()
def client(k):
    s = smtplib.SMTP(host, 25, local_hostname="andy.ouhk.example", timeout=30)
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


def run_once(lab: Lab, target: str, run: str, count: int, clients: int, pace: float) -> dict[str, Any]:
    """Send ``count`` messages to ``target`` and watch them arrive; return the measurements."""
    result: dict[str, Any] = {}

    def watch() -> None:
        out = lab.exec("mail", ["python3", "-c", WATCHER, MAILDIR, run, str(count), "300"])
        result["arrived"] = json.loads(out.output.splitlines()[-1])

    watcher = threading.Thread(target=watch)
    watcher.start()
    # Let the watcher take its first look before anything is sent.
    import time

    time.sleep(0.5)
    sent = lab.exec("andy", ["python3", "-c", SENDER, target, run, str(count), str(clients), str(pace)])
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    client = engine.connect()
    lab = Lab(client, "bench-mail")
    lab.down()
    lab.up(topology.load(), ImageBuilder(client).ensure())
    try:
        mta, mx = "smtp.ouhk.example", "mail.stevenchoy.example"
        lat_mta = run_once(lab, mta, "lat-mta", args.latency_messages, 1, 0.1)
        lat_mx = run_once(lab, mx, "lat-mx", args.latency_messages, 1, 0.1)
        thr_mta = run_once(lab, mta, "thr-mta", args.messages, args.clients, 0.0)
        thr_mx = run_once(lab, mx, "thr-mx", args.messages, args.clients, 0.0)
    finally:
        lab.down()

    def counts(r: dict[str, Any]) -> str:
        return f"sent {r['sent']}, delivered {r['delivered']}" + (f", errors {r['errors']}" if r["errors"] else "")

    print(f"latency, {args.latency_messages} messages one at a time (MTA idle), 1 kB body:")
    print(f"  via the MTA (submit -> queue -> MX lookup -> relay -> Maildir): median {lat_mta['median_ms']:.1f} ms, "
          f"p95 {lat_mta['p95_ms']:.1f} ms ({counts(lat_mta)})")
    print(f"  baseline, straight to the MX (one hop -> Maildir):              median {lat_mx['median_ms']:.1f} ms, "
          f"p95 {lat_mx['p95_ms']:.1f} ms ({counts(lat_mx)})")
    print(f"  ratio (median): {lat_mta['median_ms'] / lat_mx['median_ms']:.2f}x")
    print(f"throughput, {args.messages} messages from {args.clients} concurrent SMTP clients:")
    print(f"  via the MTA: {thr_mta['per_s']:.0f} msg/s ({counts(thr_mta)})")
    print(f"  baseline, straight to the MX: {thr_mx['per_s']:.0f} msg/s ({counts(thr_mx)})")
    print(f"  ratio: {thr_mta['per_s'] / thr_mx['per_s']:.2f}x")
    print("targets: median latency under 50 ms with the MTA idle; throughput at least 300 msg/s; sent == delivered")
    lost = any(r["sent"] != r["delivered"] for r in (lat_mta, lat_mx, thr_mta, thr_mx))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
