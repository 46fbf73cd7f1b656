"""A lab split over engines: where hosts go, and the order `down` takes things apart in.

The engines here are in-memory stand-ins for labctl's own Engine interface (labctl.backend), not
for the Docker SDK: they record what was asked, and one answers "in use" as a Swarm manager does
for a moment after another engine's last container left the overlay. The real thing is
tests/lab/test_split.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from labctl import topology
from labctl.backend import ContainerInfo, EngineError, NetworkInfo
from labctl.errors import LabctlError
from labctl.lab import remove_network_when_free
from labctl.plan import LABEL_ENGINE, LABEL_LAB
from labctl.split import SplitLab, assign

BASE = topology.load()


def test_unplaced_hosts_spread_evenly_in_topology_order() -> None:
    assert assign(BASE, ["node1", "node2"]) == {
        "ns": "node1", "smtp": "node2", "mail": "node1", "andy": "node2", "betty": "node1"}


def test_placement_comes_first_and_the_rest_fill_the_emptier_engine() -> None:
    topo = replace(BASE, placement=(("mail", "node2"), ("betty", "node2")))
    where = assign(topo, ["node1", "node2"])
    assert where["mail"] == where["betty"] == "node2"
    # node2 starts with 2 placed: node1 fills up to 2, then wins the tie as the first listed.
    assert [where[h] for h in ("ns", "smtp", "andy")] == ["node1", "node1", "node1"]
    assert list(where.values()).count("node2") == 2


def test_a_placement_on_an_engine_not_in_the_engines_file_says_what_to_do() -> None:
    topo = replace(BASE, placement=(("mail", "node3"),))
    with pytest.raises(LabctlError, match=r"engine\(s\) node3, which the engines file does not have "
                                          r"\(engines: node1, node2\).*labctl engines add"):
        assign(topo, ["node1", "node2"])
    with pytest.raises(LabctlError, match="cluster create"):
        assign(BASE, [])


def matches(have: Any, wanted: Any) -> bool:
    """The Engine's label filter: KEY=VALUE, or a KEY with the empty value for "has the label"."""
    return all(k in have if v == "" else have.get(k) == v for k, v in (wanted or {}).items())


class MemoryEngine:
    """labctl's Engine interface over dictionaries, with a log of what was asked, in order."""

    def __init__(self, name: str, log: list[str], busy_answers: int = 0) -> None:
        self.where = name
        self.log = log
        self.busy_answers = busy_answers  # remove_network answers "in use" this many times first
        self.boxes: dict[str, ContainerInfo] = {}
        self.nets: dict[str, NetworkInfo] = {}
        self.vols: dict[str, dict[str, str]] = {}

    def containers(self, labels: Any = None) -> list[ContainerInfo]:
        return [c for c in self.boxes.values() if matches(c.labels, labels)]

    def networks(self, labels: Any = None) -> list[NetworkInfo]:
        return [n for n in self.nets.values() if matches(n.labels, labels)]

    def volumes(self, labels: Any) -> list[str]:
        return [v for v, lab in self.vols.items() if all(lab.get(k) == x for k, x in labels.items())]

    def remove_container(self, ident: str, *, stop_timeout: int) -> None:
        self.log.append(f"{self.where}: remove container {ident}")
        del self.boxes[ident]

    def remove_network(self, ident: str) -> None:
        if self.busy_answers:
            self.busy_answers -= 1
            self.log.append(f"{self.where}: network {ident} in use")
            raise EngineError(f"error while removing network: network {ident} id 1234 has active endpoints", 403)
        self.log.append(f"{self.where}: remove network {ident}")
        del self.nets[ident]

    def remove_volume(self, name: str) -> None:
        self.log.append(f"{self.where}: remove volume {name}")
        del self.vols[name]

    def add(self, lab: str, host: str) -> None:
        labels = {LABEL_LAB: lab, LABEL_ENGINE: self.where, "org.maillab.host": host}
        self.boxes[f"{lab}-{host}"] = ContainerInfo(f"{lab}-{host}", f"{lab}-{host}", labels, "running", "img")
        self.vols[f"{lab}-{host}-mail"] = {LABEL_LAB: lab}


def two_engines(busy_answers: int = 1) -> tuple[dict[str, MemoryEngine], list[str]]:
    log: list[str] = []
    node1, node2 = MemoryEngine("node1", log, busy_answers), MemoryEngine("node2", log)
    for host in ("ns", "smtp", "andy"):
        node1.add("split", host)
    for host in ("mail", "betty"):
        node2.add("split", host)
    node2.add("other", "mail")  # another lab's host: never touched
    node1.nets["split-net"] = NetworkInfo("split-net", "split-net", {LABEL_LAB: "split"},
                                          (ipaddress.IPv4Network("10.89.0.0/24"),), True, "overlay")
    return {"node1": node1, "node2": node2}, log


def test_down_takes_every_engines_hosts_then_the_overlay_retrying_in_use_then_volumes() -> None:
    engines, log = two_engines(busy_answers=1)
    lab = SplitLab(engines, "node1", "split")  # type: ignore[arg-type]
    assert sorted(h.name for h in lab.status()) == ["andy", "betty", "mail", "ns", "smtp"]
    assert {h.name: h.engine for h in lab.status()}["mail"] == "node2"
    assert lab.down() == 5
    containers = [i for i, line in enumerate(log) if "remove container" in line]
    network = [i for i, line in enumerate(log) if "network" in line]
    volumes = [i for i, line in enumerate(log) if "remove volume" in line]
    assert max(containers) < min(network) and max(network) < min(volumes)
    assert [log[i] for i in network] == ["node1: network split-net in use", "node1: remove network split-net"]
    assert len(volumes) == 5
    assert list(engines["node2"].boxes) == ["other-mail"] and not engines["node1"].nets


def test_an_overlay_that_stays_in_use_or_another_refusal_is_told() -> None:
    engines, _ = two_engines(busy_answers=100)
    naps: list[float] = []
    with pytest.raises(EngineError, match="active endpoints"):
        remove_network_when_free(engines["node1"], "split-net", tries=3, sleep=naps.append)  # type: ignore[arg-type]
    assert naps == [0.25, 0.25]

    class Refusing(MemoryEngine):
        def remove_network(self, ident: str) -> None:
            raise EngineError("permission denied")

    with pytest.raises(EngineError, match="permission denied"):
        remove_network_when_free(Refusing("node1", []), "x", sleep=naps.append)  # type: ignore[arg-type]
    assert len(naps) == 2  # no retry for what waiting does not cure


def test_a_host_on_an_engine_no_longer_in_the_engines_file_is_explained() -> None:
    engines, _ = two_engines()
    lab = SplitLab({"node1": engines["node1"]}, "node1", "split")  # type: ignore[arg-type]
    engines["node1"].add("split", "mail")
    mail = next(h for h in lab.status() if h.name == "mail")
    lab_with_both = SplitLab(engines, "node1", "split")  # type: ignore[arg-type]
    assert lab_with_both.engine_of(replace(mail, engine="node2")) is engines["node2"]
    with pytest.raises(LabctlError, match="on engine node2, which the engines file does not have"):
        lab.engine_of(replace(mail, engine="node2"))
