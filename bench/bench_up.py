"""Benchmark: `labctl up` and `labctl down` against the floor, measured in the same run.

The floor is what the Engine itself needs: the lab's network and the same containers (same image,
same addresses) created and started in parallel with the bare docker SDK, with no configuration
copied in and no waiting for any service to answer. `labctl up` does all of that plus the
readiness probe, so the ratio shows what labctl adds. Those containers exit at once (they have no
configuration); the serving floor starts labctl's own containers, configuration and all, without
waiting, so the ratio to it leaves out what the servers' own start costs on the same cores.
Targets: up within 1.3x the floor (issue 17; 1.5x before), down under 2 s. And `labctl up --tls` in
the same rounds (issue 12): what the lab CA, the servers' certificates and each host's trust-store
step add to `up`, target under 100 ms; beside it the time of making the CA and certificates alone
(labctl.labtls.issue).

    python bench/bench_up.py [--rounds N] [--before DIR]

``--before DIR``: a checkout of an earlier labctl (``git worktree add /tmp/before <commit>``); its
`labctl up` (with its own image, built first) takes a turn in every round, so a change is shown
against the code before it under the same load, not against a figure of another day.

The image must be built already (`labctl image build`); the benchmark builds it if not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker.types  # noqa: E402

from labctl import engine, labtls, topology  # noqa: E402
from labctl.backend.docker_engine import DockerEngine
from labctl.image import ImageBuilder  # noqa: E402
from labctl.lab import Lab, parallel  # noqa: E402
from labctl.plan import HostPlan, plan  # noqa: E402
from services.config import TlsSettings  # noqa: E402

FLOOR_LABEL = "org.maillab.bench-floor"


def floor_up(client: DockerEngine, image: str, topo: topology.Topology, name: str) -> float:
    api = client.api
    started = time.perf_counter()
    net = f"{name}-net"
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(topo.subnet))])
    api.create_network(net, driver="bridge", internal=True, ipam=ipam, labels={FLOOR_LABEL: name})

    def start(h: topology.HostSpec) -> None:
        networking = api.create_networking_config({net: api.create_endpoint_config(ipv4_address=str(h.address))})
        c = api.create_container(image, command=[h.role], name=f"{name}-{h.name}", hostname=h.fqdn,
                                 labels={FLOOR_LABEL: name}, networking_config=networking, detach=True)
        api.start(c["Id"])

    parallel(start, list(topo.hosts))
    return time.perf_counter() - started


def serving_floor_up(client: DockerEngine, image: str, topo: topology.Topology, name: str) -> float:
    """The same containers as `labctl up` makes them, with their configuration, so that their servers
    start (the bare floor's exit at once, having none), started in parallel and not waited for:
    what the Engine and the servers' own start take together, without labctl's process or probe."""
    lab = Lab(client, name)
    started = time.perf_counter()
    plans = plan(name, topo, image)
    lab._create_network(topo)

    def start(p: HostPlan) -> None:
        client.create_container(p.container)
        client.start(p.container.name)

    parallel(start, list(plans.values()))
    return time.perf_counter() - started


def floor_down(client: DockerEngine, name: str) -> None:
    api = client.api
    for c in api.containers(all=True, filters={"label": f"{FLOOR_LABEL}={name}"}):
        api.remove_container(c["Id"], force=True)
    for n in api.networks(filters={"label": f"{FLOOR_LABEL}={name}"}):
        api.remove_network(n["Id"])


def timed(argv: list[str], cwd: Path | None = None) -> float:
    env = None if cwd is None else {**os.environ, "PYTHONPATH": str(cwd)}
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=cwd, env=env)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix", default="bench", help="lab name prefix (labs are PREFIX-N)")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="a checkout of the code before: its `labctl up` takes a turn in every round")
    args = parser.parse_args()

    client = engine.connect()
    image = ImageBuilder(client).ensure()
    topo = topology.load()
    labctl = [sys.executable, "-m", "labctl"]
    floors, serving, ups_cli, ups_lib, downs_cli, ups_tls, ups_before = [], [], [], [], [], [], []
    if args.before:
        timed([*labctl, "image", "build"], cwd=args.before.resolve())
    for i in range(args.rounds):
        name = f"{args.prefix}-{i}"
        # The floor's network on a subnet no other lab holds, chosen as `labctl up` chooses (the
        # default one unless another lab is up meanwhile).
        free = topo.with_subnet(Lab(client, name).choose_subnet(topo, None))
        floors.append(floor_up(client, image, free, name))
        floor_down(client, name)
        serving.append(serving_floor_up(client, image, free, name))
        Lab(client, name).down()

        ups_cli.append(timed([*labctl, "up", "--lab", name]))
        downs_cli.append(timed([*labctl, "down", "--lab", name]))
        if args.before:
            ups_before.append(timed([*labctl, "up", "--lab", name], cwd=args.before.resolve()))
            timed([*labctl, "down", "--lab", name], cwd=args.before.resolve())
        ups_tls.append(timed([*labctl, "up", "--lab", name, "--tls"]))
        timed([*labctl, "down", "--lab", name])

        lab = Lab(client, name)
        started = time.perf_counter()
        lab.up(topo, image)
        ups_lib.append(time.perf_counter() - started)
        lab.down()

    floor = statistics.median(floors)
    up_cli = statistics.median(ups_cli)
    up_lib = statistics.median(ups_lib)
    down = statistics.median(downs_cli)
    up_tls = statistics.median(ups_tls)
    tls_topo = replace(topo, tls=TlsSettings(enabled=True))
    issues = []
    for _ in range(20):
        started = time.perf_counter()
        labtls.issue("bench", tls_topo)
        issues.append(time.perf_counter() - started)
    issue = statistics.median(issues)
    print(f"image {image}, {len(topo.hosts)} hosts, {args.rounds} rounds, medians:")
    print(f"  floor (bare SDK: network + containers started in parallel, no readiness): {floor:.2f} s")
    serve = statistics.median(serving)
    print(f"  floor serving (labctl's own containers, with configuration, so the servers start; not waited "
          f"for): {serve:.2f} s  ratio {serve / floor:.2f}x")
    print(f"  labctl up, the command (process start, image check, config, readiness probe): {up_cli:.2f} s"
          f"  ratio {up_cli / floor:.2f}x")
    print(f"  labctl up, the library call (same work, no process start):               {up_lib:.2f} s"
          f"  ratio {up_lib / floor:.2f}x")
    if ups_before:
        before = statistics.median(ups_before)
        rounds = ", ".join(f"{b:.2f}/{o:.2f}" for b, o in zip(ups_before, ups_cli, strict=True))
        print(f"  labctl up, the command, from {args.before} (same rounds): {before:.2f} s  ratio "
              f"{before / floor:.2f}x; ours/before {up_cli / before:.2f}x (rounds, before/ours: {rounds} s)")
    print(f"  labctl down, the command:                                                 {down:.2f} s")
    print(f"  labctl up --tls, the command:                                             {up_tls:.2f} s"
          f"  adds {(up_tls - up_cli) * 1000:.0f} ms (per round: "
          f"{', '.join(f'{(t - c) * 1000:+.0f}' for t, c in zip(ups_tls, ups_cli, strict=True))} ms)")
    print(f"  of which the lab CA and {len(tls_topo.tls_servers)} certificates (labtls.issue, median of 20): "
          f"{issue * 1000:.1f} ms")
    print(f"  labctl up, the command, against the serving floor: {up_cli / serve:.2f}x; the library call "
          f"{up_lib / serve:.2f}x")
    print("targets: up within 1.3x the floor, down under 2 s, up --tls adds under 100 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
