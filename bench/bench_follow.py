"""Benchmark: one look of `labctl traffic --follow` at a large live capture, against reading it all.

A lab takes a relay load (``--loads`` rounds of ``--messages`` messages of 4 kB, 8 clients) so
that every host's capture ring fills up to tens of MB, then, with the lab quiet:

- baseline: what each look of --follow cost before it tailed the files: download every host's
  capture (the Engine API's archive), then decode all of it afresh;
- ours: a look of :class:`labctl.capture.CaptureTail` after the first: each running host sends
  what its files gained since the last look, and one decoder is fed only that.

Median of ``--looks`` looks each; the ratio is ours / baseline. The first look of the tail reads
everything (as --follow's start must) and is printed too, with the conversation counts of both
ways, which must be equal.

    python bench/bench_follow.py [--loads 3] [--messages 2000] [--looks 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import fresh_lab, run_once  # noqa: E402
from labctl import engine  # noqa: E402
from labctl.capture import Capture, CaptureTail  # noqa: E402
from labctl.traffic.decode import TrafficDecoder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--looks", type=int, default=5)
    args = parser.parse_args()

    lab = fresh_lab(engine.connect(), "bench-follow")
    try:
        for i in range(args.loads):
            r = run_once(lab, "smtp.ouhk.example", f"load{i}", args.messages, 8, 0.0, size=4096)
            print(f"load {i + 1}: sent {r['sent']}, delivered {r['delivered']}")
        time.sleep(2)  # the recorders' last blocks reach the files
        size = sum(h.size for h in Capture(lab).status())

        whole: list[float] = []
        for _ in range(args.looks):
            started = time.perf_counter()
            decoder = TrafficDecoder()
            decoder.feed_captures(Capture(lab).sources())
            counted = len(decoder.conversations())
            whole.append(time.perf_counter() - started)

        tail = CaptureTail(lab)
        decoder = TrafficDecoder()
        started = time.perf_counter()
        decoder.feed_captures(tail.poll())
        first = time.perf_counter() - started
        tailed = len(decoder.conversations())
        looks: list[float] = []
        for _ in range(args.looks):
            started = time.perf_counter()
            decoder.feed_captures(tail.poll())
            tailed = len(decoder.conversations())
            looks.append(time.perf_counter() - started)
    finally:
        lab.down()

    base, ours = statistics.median(whole), statistics.median(looks)
    print(f"capture: {size / 1e6:.1f} MB in 5 hosts; conversations: {counted} read whole, {tailed} tailed")
    print(f"  baseline, every look reads and decodes it all (median of {args.looks}): {base:.2f} s")
    print(f"  ours, a look reads what is new (median of {args.looks}):               {ours:.3f} s  "
          f"ratio {ours / base:.3f}x")
    print(f"  ours, the first look (everything so far):                          {first:.2f} s")
    return 0 if counted == tailed else 1


if __name__ == "__main__":
    raise SystemExit(main())
