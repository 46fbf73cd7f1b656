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

On ext4 without a journal (this project's build machines), a run started within a minute or two
of removing a lab (the previous run's `down` deletes thousands of Maildir files) measures less:
every new Maildir file then pays ext4's scan of those freshly freed inodes (README, Benchmarks).

    python bench/bench_mail.py [--latency-messages 200] [--messages 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import fresh_lab, run_once  # noqa: E402
from labctl import engine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    client = engine.connect()
    lab = fresh_lab(client, "bench-mail")
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
