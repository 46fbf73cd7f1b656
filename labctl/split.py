"""One lab across several engines joined in a Swarm (issue 16, step B).

Swarm is the network control plane only: the lab's network is an attachable, internal overlay made
on the Swarm manager, and every host is a plain container created through its own engine's API with
its static address on that overlay (Swarm services cannot have static addresses: moby#24170). Each
engine that attaches a container takes an address of its own from the overlay's ``--ip-range``,
the subnet's top corner (:func:`labctl.subnets.node_range`), which no host may use.

A :class:`SplitLab` is a :class:`~labctl.lab.Lab` whose :meth:`engine_of` answers per host, by the
``org.maillab.engine`` label each container carries, so every command (exec, logs, stop, start,
kill, faults, capture readback) reaches the host's own engine and nothing else changes. Where the
hosts go is :func:`assign`: the topology's ``x-maillab.placement`` first, the rest spread evenly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from labctl.backend import ContainerInfo, Engine, NetworkInfo
from labctl.errors import LabctlError
from labctl.events import Notice, Reporter, ignore
from labctl.lab import (
    NETWORK_REMOVE_PAUSE,
    NETWORK_REMOVE_TRIES,
    HostStatus,
    Lab,
    on_engines,
    parallel,
    remove_network_when_free,
)
from labctl.plan import LABEL_ENGINE, STOP_TIMEOUT, HostPlan
from labctl.topology import HostSpec, Topology

# Above this the engines' clocks disagree enough to reorder a dialogue's packets across hosts.
CLOCK_SKEW_WARN = 0.005


def assign(topo: Topology, engines: Sequence[str]) -> dict[str, str]:
    """Host name -> engine name: ``x-maillab.placement`` where it says, else the engine with the
    fewest hosts so far (the first listed on a tie), in topology order."""
    if not engines:
        raise LabctlError("a split lab needs engines; add them with `labctl engines add NAME URL` "
                          "or make local ones with `labctl cluster create --nodes 2`")
    placed = dict(topo.placement)
    unknown = sorted(set(placed.values()) - set(engines))
    if unknown:
        raise LabctlError(f"x-maillab.placement names engine(s) {', '.join(unknown)}, which the engines file does not "
                          f"have (engines: {', '.join(engines)}); fix the placement or add them with "
                          "`labctl engines add NAME URL`")
    load = Counter(placed.values())
    out: dict[str, str] = {}
    for host in topo.hosts:
        if host.name not in placed:
            placed[host.name] = min(engines, key=lambda e: (load[e], engines.index(e)))
            load[placed[host.name]] += 1
        out[host.name] = placed[host.name]
    return out


class SplitLab(Lab):
    """A lab whose hosts live on several engines of one Swarm; its overlay lives on the manager."""

    def __init__(self, engines: Mapping[str, Engine], manager: str, name: str, report: Reporter = ignore) -> None:
        if manager not in engines:
            raise LabctlError(f"the Swarm manager {manager!r} is not among the engines ({', '.join(engines)})")
        super().__init__(engines[manager], name, report)
        self.engines = dict(engines)
        self.manager = manager
        self._planned: dict[str, str] = {}  # host -> engine, for hosts being created by `up`

    def engine_of(self, host: HostStatus | HostSpec | None = None) -> Engine:
        if host is None:
            return self.engine
        where = host.engine if isinstance(host, HostStatus) else self._planned.get(host.name, "")
        if where not in self.engines:
            raise LabctlError(f"host {host.name} of lab {self.name!r} is on engine {where or '?'}, which the engines "
                              f"file does not have (engines: {', '.join(self.engines)}); add it back with "
                              "`labctl engines add NAME URL`")
        return self.engines[where]

    def engine_list(self) -> list[Engine]:
        return list(self.engines.values())

    def containers(self) -> list[ContainerInfo]:
        labels = self._labels()
        return [c for found in parallel(lambda e: e.containers(labels), list(self.engines.values())) for c in found]

    def _placed(self, topo: Topology, plans: dict[str, HostPlan],
                existing: Mapping[str, ContainerInfo]) -> dict[str, HostPlan]:
        # A host that exists stays where it is; the others are placed among all the hosts.
        where = assign(topo, list(self.engines))
        for name, c in existing.items():
            if c.labels.get(LABEL_ENGINE):
                where[name] = c.labels[LABEL_ENGINE]
        self._planned = where
        return on_engines(plans, where)

    def _create_network(self, topo: Topology, *, overlay: bool = True) -> None:
        super()._create_network(topo, overlay=True)

    def _all_networks(self) -> list[NetworkInfo]:
        return [n for found in parallel(lambda e: e.networks(), list(self.engines.values())) for n in found]

    def down(self) -> int:
        """Every engine's containers first (in parallel), then the overlay on the manager (retrying
        while it is still "in use"), then every engine's volumes."""
        labels = self._labels()
        engines = list(self.engines.values())

        def clear(engine: Engine) -> int:
            found = engine.containers(labels)
            parallel(lambda c: engine.remove_container(c.id, stop_timeout=STOP_TIMEOUT), found)
            return len(found)

        removed = sum(parallel(clear, engines))
        for net in self.engine.networks(labels):
            remove_network_when_free(self.engine, net.id)
        self._wait_networks_gone(engines)

        def volumes(engine: Engine) -> None:
            for volume in engine.volumes(labels):
                engine.remove_volume(volume)

        parallel(volumes, engines)
        return removed

    def _wait_networks_gone(self, engines: list[Engine], *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Until no engine lists the overlay: the manager answers the removal before Swarm has taken
        it off every engine (about a second), and an `up` of the same lab at once would meet it."""
        labels = self._labels()
        for _ in range(NETWORK_REMOVE_TRIES):
            if not any(parallel(lambda e: e.networks(labels), engines)):
                return
            sleep(NETWORK_REMOVE_PAUSE)
        left = ", ".join(e.where for e in engines if e.networks(labels))
        self.report(Notice(f"lab {self.name}'s overlay is still listed on {left}; Swarm removes it there shortly"))

    def clock_offsets(self) -> dict[str, float]:
        """Engine name -> how far its clock is ahead of this machine's (seconds), read from one
        running host on each: packets from different engines are merged by their timestamps."""
        offsets: dict[str, float] = {}
        for h in self.status():
            if h.state != "running" or h.engine in offsets:
                continue
            before = time.time()
            result = self.exec_in(h, ["python3", "-c", "import time; print(repr(time.time()))"])
            after = time.time()
            if result.exit_code == 0:
                offsets[h.engine] = float(result.output.strip()) - (before + after) / 2
        return offsets

    def warn_if_clocks_differ(self) -> None:
        offsets = self.clock_offsets()
        if len(offsets) > 1 and max(offsets.values()) - min(offsets.values()) > CLOCK_SKEW_WARN:
            told = ", ".join(f"{e} {o * 1000:+.1f} ms" for e, o in sorted(offsets.items()))
            self.report(Notice(f"the engines' clocks differ ({told}): packets from different engines are merged "
                               "by their timestamps, so an exchange between them may show out of order"))

