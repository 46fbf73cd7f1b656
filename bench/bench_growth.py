"""Benchmark: how `labctl up` time, `labctl down` time and memory grow with the size of a lab.

Labs of 5, 20 and 50 hosts: compose/lab.yml, plus extra mail domains generated into a topology
file, each with its own MX host (role mx, with a user) and a MUA host for that user; an odd host
out is one more MUA. For each size, in the same run:

- `labctl up --topology FILE` as a user runs it (image present), until every service answers;
- the floor: the same containers on the same kind of network created and started in parallel with
  the bare docker SDK, with no configuration and no readiness wait (bench/bench_up.py's floor);
- memory: every container's cgroup memory in use, as `docker stats` counts it, once the lab is up;
- `labctl down`.

Printed: each size's figures and ratio to the floor, the cost per added host between sizes, and a
straight-line fit. Target (issue 6): `up` growing linearly with a small constant.

    python bench/bench_growth.py [--sizes 5 20 50] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_up import floor_down, floor_up  # noqa: E402
from bench.mailload import memory_mib  # noqa: E402
from labctl import engine, topology  # noqa: E402
from labctl.image import ImageBuilder  # noqa: E402
from labctl.lab import Lab  # noqa: E402

FIRST_EXTRA = 130  # extra hosts take .130 upwards; the article's hosts keep .10 .20 .25 .53 .110


def grown_topology(hosts: int) -> dict[str, Any]:
    """compose/lab.yml with extra domains (an MX and a MUA each) up to ``hosts`` hosts."""
    doc: dict[str, Any] = yaml.safe_load(topology.DEFAULT_TOPOLOGY.read_text())
    services = doc["services"]
    extra = hosts - len(services)
    if extra < 0:
        raise SystemExit(f"a lab has at least {len(services)} hosts")
    if FIRST_EXTRA + extra > 254:
        raise SystemExit(f"at most {254 - FIRST_EXTRA + len(services)} hosts fit the lab's /24")
    prefix = doc["networks"]["lab"]["ipam"]["config"][0]["subnet"].rsplit(".", 1)[0]
    address = iter(range(FIRST_EXTRA, 255))
    for k in range(extra // 2):
        domain = f"d{k}.example"
        doc["x-maillab"]["domains"][domain] = {"mail_host": f"mx{k}", "users": {"user": f"secret-{k}"}}
        services[f"mx{k}"] = {"hostname": f"mail.{domain}", "command": "mx",
                              "networks": {"lab": {"ipv4_address": f"{prefix}.{next(address)}"}}}
        services[f"mua{k}"] = {"hostname": f"user.{domain}", "command": "mua",
                               "environment": {"MAIL_USER": f"user@{domain}", "MAIL_SMTP": "smtp.ouhk.example",
                                               "MAIL_POP3": f"mail.{domain}"},
                               "networks": {"lab": {"ipv4_address": f"{prefix}.{next(address)}"}}}
    if extra % 2:
        services["spare"] = {"hostname": "spare.lab.example", "command": "mua",
                             "networks": {"lab": {"ipv4_address": f"{prefix}.{next(address)}"}}}
    return doc


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - started


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--rounds", type=int, default=1, help="runs per size (median)")
    args = parser.parse_args()

    client = engine.connect()
    image = ImageBuilder(client).ensure()
    labctl = [sys.executable, "-m", "labctl"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="maillab-growth-") as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"lab-{size}.yml"
            path.write_text(yaml.safe_dump(grown_topology(size), sort_keys=False))
            topo = topology.load(path)  # checked here, so a bad generator fails before any timing
            ups, floors, downs, mems = [], [], [], []
            for k in range(args.rounds):
                name = f"bench-growth-{size}-{k}"
                # The floor's network on a subnet no other lab holds, chosen as `labctl up` chooses.
                free = topo.with_subnet(Lab(client, name).choose_subnet(topo, None))
                floors.append(floor_up(client, image, free, name))
                floor_down(client, name)
                ups.append(timed([*labctl, "up", "--lab", name, "--topology", str(path)]))
                time.sleep(1.0)  # let start-up work (compiling nothing, logging) settle before measuring
                mems.append(sum(memory_mib(client, Lab(client, name)).values()))
                downs.append(timed([*labctl, "down", "--lab", name]))
            rows.append({"hosts": len(topo.hosts), "up": statistics.median(ups),
                         "floor": statistics.median(floors), "down": statistics.median(downs),
                         "mem": statistics.median(mems)})

    print(f"image {image}; each size: {args.rounds} round(s), median; labctl up/down as commands")
    print(f"{'hosts':>5} {'up':>8} {'floor':>8} {'up/floor':>9} {'down':>7} {'memory':>10} {'per host':>9}")
    for r in rows:
        print(f"{r['hosts']:>5} {r['up']:>7.2f}s {r['floor']:>7.2f}s {r['up'] / r['floor']:>8.2f}x "
              f"{r['down']:>6.2f}s {r['mem']:>7.0f} MiB {r['mem'] / r['hosts']:>5.1f} MiB")
    for a, b in zip(rows, rows[1:], strict=False):
        dn = b["hosts"] - a["hosts"]
        print(f"  {a['hosts']} -> {b['hosts']} hosts: up +{(b['up'] - a['up']) / dn * 1000:.0f} ms per added host "
              f"(floor +{(b['floor'] - a['floor']) / dn * 1000:.0f} ms), memory "
              f"+{(b['mem'] - a['mem']) / dn:.1f} MiB per added host")
    if len(rows) >= 2:
        xs = [float(r["hosts"]) for r in rows]
        a0, b0 = fit(xs, [r["up"] for r in rows])
        worst = max(abs(r["up"] - (a0 + b0 * r["hosts"])) / r["up"] for r in rows)
        f0, f1 = fit(xs, [r["floor"] for r in rows])
        print(f"  straight-line fit: up = {a0:.2f} s + {b0 * 1000:.0f} ms x hosts (largest deviation {worst:.0%}); "
              f"floor = {f0:.2f} s + {f1 * 1000:.0f} ms x hosts")
    print("target: up growing linearly with a small constant")
    return 0


if __name__ == "__main__":
    sys.exit(main())
