"""Benchmark: relay throughput and end-to-end latency, our MTA -> our MX vs Postfix -> Postfix MX.

Two labs up side by side: compose/lab.yml (ours) and that lab with
overlay compose/reference/mail.yml (Postfix as the
sender MTA and as the MX, Dovecot behind it), same hosts, same lab DNS, same load from andy's host:

- latency: one client submits one message at a time to smtp.ouhk.example:25, paced so the MTA is
  idle when each arrives; latency = the file appearing in betty's Maildir - submission started;
- throughput: N messages from C concurrent SMTP clients, for each message size; throughput =
  N / (last file in the Maildir - first submission started), counting sent and delivered (equal).

The two labs take turns, run by run, so that load from elsewhere on the machine falls on both.
Durability is each one's default and the same: our queue and Maildir writes are fsync'd before
the 250, and so are Postfix's queue files (cleanup) and its Maildir files (virtual). Postfix keeps
its stock settings apart from the lab's addresses, domains and retry schedule
(services/reference/postfix.py). Target (issue 6): our throughput at least Postfix's.

With --tls both labs have TLS on (issue 12): each client connection takes STARTTLS on port 25 and
the relay to the MX takes it too (ours RelayTls "may", Postfix smtp_tls_security_level=may), so
every message crosses two TLS sessions; the target is the same.

    python bench/bench_relay_compare.py [--messages 2000] [--clients 8] [--sizes 1024 32768] [--tls]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import memory_mib, run_once  # noqa: E402
from labctl import engine, topology  # noqa: E402
from labctl.image import ImageBuilder  # noqa: E402
from labctl.lab import Lab  # noqa: E402
from services.config import TlsSettings  # noqa: E402

REFERENCE = topology.DEFAULT_TOPOLOGY.parent / "reference" / "mail.yml"  # an overlay
MTA = "smtp.ouhk.example"
SIDES = ("ours", "postfix")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 32768], help="message body sizes, bytes")
    parser.add_argument("--rounds", type=int, default=1, help="throughput runs per size and side (median)")
    parser.add_argument("--tls", action="store_true", help="both labs with TLS on; clients and relay use STARTTLS")
    args = parser.parse_args()

    client = engine.connect()
    images = ImageBuilder(client).images({"lab", "reference"})
    labs = {"ours": Lab(client, "bench-relay-ours"), "postfix": Lab(client, "bench-relay-postfix")}
    topos = {"ours": topology.load(), "postfix": topology.load_overlay(topology.load(), REFERENCE)}
    if args.tls:
        topos = {side: replace(t, tls=TlsSettings(enabled=True)) for side, t in topos.items()}
    for side in SIDES:
        labs[side].down()
        labs[side].up(topos[side], images)
    results: dict[str, dict[str, Any]] = {side: {} for side in SIDES}
    runs: list[dict[str, Any]] = []
    try:
        for side in SIDES:
            r = run_once(labs[side], MTA, f"lat-{side}", args.latency_messages, 1, 0.1, 1024,
                         starttls=args.tls)
            results[side]["latency"] = r
            runs.append(r)
        for size in args.sizes:
            for k in range(args.rounds):
                for side in SIDES:
                    r = run_once(labs[side], MTA, f"thr-{side}-{size}-{k}", args.messages, args.clients, 0.0, size,
                             starttls=args.tls)
                    results[side].setdefault(size, []).append(r)
                    runs.append(r)
                    time.sleep(1.0)  # let the other lab's stragglers (logs, queue cleanup) settle
        for side in SIDES:
            results[side]["memory"] = memory_mib(client, labs[side], ["smtp", "mail"])
        version = labs["postfix"].exec("smtp", ["postconf", "-h", "mail_version"]).output.strip()
    finally:
        for side in SIDES:
            labs[side].down()

    def counts(rs: list[dict[str, Any]]) -> str:
        sent, got = sum(r["sent"] for r in rs), sum(r["delivered"] for r in rs)
        errors = [e for r in rs for e in r["errors"]]
        return f"sent {sent}, delivered {got}" + (f", errors {errors[:2]}" if errors else "")

    ours, ref = results["ours"], results["postfix"]
    print("TLS on: STARTTLS from each client and on the relay" if args.tls else "clear text, as the article")
    print(f"images {images['lab']} (ours), {images['reference']} (Postfix {version}, stock settings, fsync on)")
    print(f"latency, {args.latency_messages} messages one at a time (MTA idle), 1 kB body, submit -> Maildir:")
    for key in ("median_ms", "p95_ms"):
        a, b = ours["latency"][key], ref["latency"][key]
        print(f"  {key[:-3]:>6}: ours {a:7.1f} ms   Postfix {b:7.1f} ms   ours/Postfix {a / b:.2f}x")
    print(f"  ({counts([ours['latency']])} | {counts([ref['latency']])})")
    print(f"throughput, {args.messages} messages from {args.clients} concurrent SMTP clients, until all are in "
          f"the Maildir{f', median of {args.rounds}' if args.rounds > 1 else ''}:")
    for size in args.sizes:
        a = statistics.median(r["per_s"] for r in ours[size])
        b = statistics.median(r["per_s"] for r in ref[size])
        print(f"  {size:>6} B: ours {a:6.0f} msg/s   Postfix {b:6.0f} msg/s   ours/Postfix {a / b:.2f}x   "
              f"({counts(ours[size])} | {counts(ref[size])})")
    mem_a, mem_b = sum(ours["memory"].values()), sum(ref["memory"].values())
    print(f"memory after the runs, MTA + MX hosts: ours {mem_a:.0f} MiB   Postfix+Dovecot {mem_b:.0f} MiB   "
          f"ratio {mem_a / mem_b:.2f}x")
    print("target: our throughput at least Postfix's (ratio >= 1.00x); sent == delivered in every run")
    lost = any(r["sent"] != r["delivered"] for r in runs)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
