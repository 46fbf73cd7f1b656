"""Benchmark: what a container's log costs dockerd, a line per write against lines in batches.

A container runs the lab image and writes the same log lines to stderr, paced as a busy server
writes them, first one write(2) per line (the baseline: Python's logging as it comes), then
``--batch`` lines per write (what services/logbuffer.py does under load). dockerd's CPU (utime +
stime from /proc) over each run, per line, and the ratio. Run it as root on the engine's machine.

    python bench/bench_logwrites.py [--lines 20000] [--batch 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_per_message import HZ, processes  # noqa: E402
from labctl import engine  # noqa: E402
from labctl.image import ImageBuilder  # noqa: E402

WRITER = r"""
import os, sys, time
lines, batch = int(sys.argv[1]), int(sys.argv[2])
line = (b"21:00:00 mta INFO 1xXalLcK7OYZ: to=<betty@stevenchoy.example>, relay=mail.stevenchoy.example:25, "
        b"attempt=1, dsn=2.0.0, status=sent (250 2.0.0 1xXalLcK7OZa Message accepted for delivery)\n")
for _ in range(lines // batch):
    os.write(2, line * batch)
    time.sleep(0.0003 * batch)  # about 3,000 lines a second, as the MTA and MX at 500 msg/s
"""


def dockerd_cpu() -> float:
    [(user, system)] = [(u, s) for u, s, cmd in processes().values() if cmd.split(" ", 1)[0].endswith("dockerd")]
    return (user + system) / HZ


def run(client: docker.DockerClient, image: str, lines: int, batch: int) -> float:
    before = dockerd_cpu()
    container = client.containers.run(image, ["-c", WRITER, str(lines), str(batch)], entrypoint="python3",
                                      detach=True, log_config={"type": "json-file"}, network_mode="none")
    try:
        container.wait()
    finally:
        container.remove(force=True)
    return dockerd_cpu() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    image = ImageBuilder(engine.connect()).ensure()
    client = docker.from_env()  # a bare container of the lab image, outside any lab: the SDK itself
    single = run(client, image, args.lines, 1)
    batched = run(client, image, args.lines, args.batch)
    print(f"dockerd CPU for {args.lines} log lines (json-file driver):")
    print(f"  one line per write (baseline): {single:.2f} s, {1e6 * single / args.lines:.0f} us per line")
    print(f"  {args.batch} lines per write:          {batched:.2f} s, {1e6 * batched / args.lines:.0f} us per line")
    print(f"  ratio: {batched / single:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
