"""Benchmark: labs over several engines (issue 16), each against its one-engine baseline in the same run.

On two local docker-in-docker nodes (`labctl cluster create --nodes 2`, made here unless
``--engines`` names an engines file of a cluster that is up):

1. ``labctl up --labs`` of N labs over both nodes, against the same N labs on node1 alone (an
   engines file naming only node1): wall time of the command, and each node's memory after (the
   node container's cgroup: every lab host inside it, and its dockerd).
2. One lab split over both nodes (mail and betty on node2, the rest on node1: every message
   crosses the overlay twice, andy -> smtp on node1, smtp -> mail over VXLAN) against the same lab
   whole on node1: `up` time, delivery latency (one message at a time, the MTA idle) and relay
   throughput (8 concurrent clients), measured with bench/mailload.py as bench_mail.py does.

    python bench/bench_cluster.py [--labs 20] [--latency-messages 100] [--messages 1000] [--engines FILE]

Both nodes share this machine's 2 cores, so part 1 shows what spreading costs or saves in
labctl and the engines, not what a second machine's cores would add.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import run_once  # noqa: E402
from labctl import enginesfile, topology  # noqa: E402
from labctl.fleet import Fleet  # noqa: E402
from labctl.topology import Topology  # noqa: E402

LABCTL = [sys.executable, "-m", "labctl"]
MTA = "smtp.ouhk.example"


def labctl(*args: str, engines: Path) -> float:
    started = time.monotonic()
    subprocess.run([*LABCTL, *args, "--engines", str(engines)], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def node_memory_mib(fleet: Fleet, cluster: str) -> dict[str, float]:
    """Each node container's memory (MiB) as the machine's engine counts it, less page cache."""
    local = fleet.local()
    out: dict[str, float] = {}
    for c in local.containers({"org.maillab.cluster": cluster}):
        if c.state != "running":
            continue
        stats = local.api.stats(c.id, stream=False, one_shot=True)["memory_stats"]  # type: ignore[attr-defined]
        detail = stats.get("stats", {})
        cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        out[c.name] = (stats.get("usage", 0) - cache) / 2**20
    return dict(sorted(out.items()))


def many_labs(count: int, both: Path, one: Path, fleet: Fleet, cluster: str) -> dict[str, Any]:
    spec = f"bc-{{01..{count:02d}}}"
    result: dict[str, Any] = {}
    for name, file in (("two engines", both), ("one engine", one)):
        seconds = labctl("up", "--labs", spec, engines=file)
        memory = node_memory_mib(fleet, cluster)
        down = labctl("down", "--labs", spec, engines=file)
        result[name] = {"up_s": seconds, "down_s": down, "memory": memory}
    return result


def split_topology() -> Topology:
    return replace(topology.load(), placement=(("mail", "node2"), ("betty", "node2"), ("ns", "node1"),
                                               ("smtp", "node1"), ("andy", "node1")))


def one_lab(fleet: Fleet, name: str, topo: Topology, latency: int, messages: int) -> dict[str, Any]:
    lab = fleet.lab(name, topo=topo, place=True, split=bool(topo.placement))
    lab.down()
    images = fleet.build({h.image for h in topo.hosts})
    fleet.push(lab.engine_list(), images)
    started = time.monotonic()
    lab.up(topo, images)
    up = time.monotonic() - started
    try:
        lat = run_once(lab, MTA, f"lat-{name}", latency, 1, 0.1)
        thr = run_once(lab, MTA, f"thr-{name}", messages, 8, 0.0)
    finally:
        lab.down()
    return {"up_s": up, "latency": lat, "throughput": thr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=20)
    parser.add_argument("--latency-messages", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--engines", type=Path, help="an engines file of a cluster that is up (else one is made)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    made_file = args.engines or work / "engines.yml"
    made = args.engines is None
    if made:
        subprocess.run([*LABCTL, "cluster", "create", "--nodes", "2", "--engines", str(made_file)], check=True)
    both = made_file
    try:
        engines = enginesfile.parse(both, both.read_text())
        # Room for every lab on one node, so that only the spreading differs (placement still
        # fills the emptier engine first when both are listed).
        roomy = tuple(replace(e, capacity=max(e.capacity, args.labs)) for e in engines.entries)
        both = work / "both.yml"
        enginesfile.save(replace(engines, path=both, entries=roomy))
        one = work / "one.yml"
        enginesfile.save(enginesfile.Engines(one, roomy[:1], None, None))
        engines = enginesfile.parse(both, both.read_text())
        fleet = Fleet(engines)
        cluster = engines.cluster or "maillab-node"
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        many = many_labs(args.labs, both, one, fleet, cluster)
        split = one_lab(fleet, "bc-split", split_topology(), args.latency_messages, args.messages)
        whole = one_lab(Fleet(enginesfile.parse(one, one.read_text())), "bc-whole", topology.load(),
                        args.latency_messages, args.messages)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if made:
            subprocess.run([*LABCTL, "cluster", "delete", "--engines", str(made_file)], check=False)

    two, single = many["two engines"], many["one engine"]
    print(f"`labctl up --labs` of {args.labs} labs:")
    for name, r in many.items():
        mem = ", ".join(f"{n} {m:.0f} MiB" for n, m in r["memory"].items())
        print(f"  {name:11}: up {r['up_s']:.1f} s, down {r['down_s']:.1f} s; node memory after up: {mem}")
    print(f"  ratio (up, two engines / one): {two['up_s'] / single['up_s']:.2f}x")
    print("one lab split over two nodes (mail, betty on node2) against the same lab whole on node1:")
    for name, r in (("split", split), ("whole", whole)):
        lat, thr = r["latency"], r["throughput"]
        print(f"  {name}: up {r['up_s']:.2f} s; latency median {lat['median_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms "
              f"({lat['delivered']}/{lat['sent']}); throughput {thr['per_s']:.0f} msg/s "
              f"({thr['delivered']}/{thr['sent']})")
    print(f"  ratios (split / whole): up {split['up_s'] / whole['up_s']:.2f}x, latency "
          f"{split['latency']['median_ms'] / whole['latency']['median_ms']:.2f}x, throughput "
          f"{split['throughput']['per_s'] / whole['throughput']['per_s']:.2f}x")
    lost = any(r[k]["sent"] != r[k]["delivered"] for r in (split, whole) for k in ("latency", "throughput"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
