"""Benchmark: DNS queries per second with dnsperf, our lab DNS server vs NSD on the same zones.

Two labs up side by side: compose/lab.yml (our DNS on ns.lab.example) and that lab with
overlay compose/reference/dns.yml
(NSD there instead, serving the very zone files labctl writes for ours). dnsperf runs on andy's
host (the reference image, in both labs, for dnsperf) with its defaults (one client socket, up to
100 queries outstanding) for a fixed time, over a query mix of every name the lab publishes: A of
each host, MX, SOA and NS of each zone, PTR of each address, and a name that does not exist.
Runs are interleaved (ours, NSD, ours, NSD, ...) after one short warm-up run each, so a slow
minute on a shared machine hits both sides; each round prints its own line and ratio, and the
summary gives the median and the range (min-max) of each side and of the per-round ratio, with the
load average before and after. Target (issue 17): ours at least 1.0x NSD's queries/s, with an
average latency at most NSD's.

    python bench/bench_dns_compare.py [--seconds 10] [--rounds 5] [--prefix bench]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl import engine, topology, zonefiles  # noqa: E402
from labctl.image import ImageBuilder  # noqa: E402
from labctl.lab import Lab  # noqa: E402

REFERENCE = topology.DEFAULT_TOPOLOGY.parent / "reference" / "dns.yml"  # an overlay
SIDES = ("ours", "nsd")


def queries(topo: topology.Topology) -> str:
    """dnsperf's input: one "name type" per line, every record the lab publishes."""
    lines = [f"{h.fqdn} A" for h in topo.hosts]
    lines += [f"{d.name} MX" for d in topo.domains]
    for zone in zonefiles.zone_names(topo):
        lines += [f"{zone} SOA", f"{zone} NS"]
    lines += [f"{'.'.join(reversed(str(h.address).split('.')))}.in-addr.arpa PTR" for h in topo.hosts]
    lines.append(f"nobody.{topo.domains[0].name} A")  # NXDOMAIN, answered with the SOA
    return "\n".join(lines) + "\n"


def with_dnsperf(topo: topology.Topology) -> topology.Topology:
    """The same lab with andy's host on the reference image, where dnsperf is."""
    hosts = tuple(dataclasses.replace(h, image="reference") if h.name == "andy" else h for h in topo.hosts)
    return dataclasses.replace(topo, hosts=hosts)


def dnsperf(lab: Lab, seconds: int) -> dict[str, float]:
    ns = lab.find("ns").address
    ran = lab.exec("andy", ["dnsperf", "-s", ns, "-d", "/tmp/queries", "-l", str(seconds)])
    if ran.exit_code != 0:
        raise SystemExit(f"{lab.name}: dnsperf failed: {ran.output}{ran.stderr.decode()}")
    text = ran.output

    def field(label: str) -> float:
        m = re.search(label + r":\s+([\d.]+)", text)
        if m is None:
            raise SystemExit(f"{lab.name}: no {label!r} in dnsperf's output:\n{text}")
        return float(m.group(1))

    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes is None or "REFUSED" in codes.group(1) or "SERVFAIL" in codes.group(1):
        raise SystemExit(f"{lab.name}: the mix is meant to be answered from the lab's zones, and was not:\n{text}")
    return {"qps": field("Queries per second"), "sent": field("Queries sent"),
            "completed": field("Queries completed"), "lost": field("Queries lost"),
            "latency_ms": field("Average Latency \\(s\\)") * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix", default="bench", help="lab name prefix (labs are PREFIX-dns-SIDE)")
    args = parser.parse_args()

    client = engine.connect()
    images = ImageBuilder(client).images({"lab", "reference"})
    labs = {side: Lab(client, f"{args.prefix}-dns-{side}") for side in SIDES}
    topos = {"ours": with_dnsperf(topology.load()), "nsd": topology.load_overlay(topology.load(), REFERENCE)}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    try:
        for side in SIDES:
            labs[side].down()
            # The lab may get another subnet than the topology's (another lab holds it): the PTR
            # names must be those of the addresses it really has, or they ask outside its zones.
            topos[side] = labs[side].up(topos[side], images).topology
            labs[side].exec("andy", ["sh", "-c", "cat > /tmp/queries"], stdin=queries(topos[side]).encode())
        for side in SIDES:
            dnsperf(labs[side], 2)  # the warm-up: first queries, caches, the ARP entries
        load_before = os.getloadavg()
        for i in range(args.rounds):
            for side in SIDES:
                runs[side].append(dnsperf(labs[side], args.seconds))
            a, b = runs["ours"][-1], runs["nsd"][-1]
            print(f"round {i + 1}: ours {a['qps']:8.0f} q/s {a['latency_ms']:5.2f} ms   "
                  f"NSD {b['qps']:8.0f} q/s {b['latency_ms']:5.2f} ms   ours/NSD {a['qps'] / b['qps']:.2f}x",
                  flush=True)
        load_after = os.getloadavg()
        version = labs["nsd"].exec("ns", ["nsd", "-v"]).stderr.decode().split("\n")[0]
    finally:
        for side in SIDES:
            labs[side].down()

    def spread(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    def of(side: str, key: str) -> list[float]:
        return [r[key] for r in runs[side]]

    n_queries = len(queries(topos["ours"]).splitlines())
    print(f"images {images['lab']} (ours), {images['reference']} "
          f"({version}, stock settings but response rate limiting off)")
    print(f"dnsperf from andy's host, {args.seconds} s per run, {args.rounds} interleaved rounds, "
          f"a mix of {n_queries} queries (A, MX, SOA, NS, PTR, one NXDOMAIN); median (min-max):")
    print(f"  queries/s:       ours {spread(of('ours', 'qps'), '.0f')}   NSD {spread(of('nsd', 'qps'), '.0f')}")
    ratios = [a["qps"] / b["qps"] for a, b in zip(runs["ours"], runs["nsd"], strict=True)]
    print(f"  ours/NSD, per round: {spread(ratios, '.2f')}x")
    print(f"  average latency: ours {spread(of('ours', 'latency_ms'), '.2f')} ms   "
          f"NSD {spread(of('nsd', 'latency_ms'), '.2f')} ms")
    print("  load average (1, 5, 15 min) before the rounds {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} "
          "(the machine is shared: compare the ratio of one run, not figures across runs)"
          .format(*load_before, *load_after))
    for side in SIDES:
        sent = sum(r["sent"] for r in runs[side])
        lost = sum(r["lost"] for r in runs[side])
        print(f"  {side}: {sent:.0f} queries sent, {lost:.0f} lost")
    print("target: ours/NSD >= 1.00x, and our average latency at most NSD's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
