"""Where labs are over several engines: found by asking every engine, placed on the emptiest,
labelled with their engine, subnets chosen apart for labs brought up at once.

The engines are tests/unit/test_split.py's in-memory stand-ins for labctl's own Engine
interface, not for the Docker SDK; tests/lab/test_cluster.py does it with real engines.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from labctl import enginesfile, topology
from labctl.backend import NetworkInfo
from labctl.errors import DockerUnavailable, LabNotRunning
from labctl.fleet import LOCAL, Fleet, subnets_for
from labctl.lab import Lab
from labctl.placement import LAB_MEMORY
from labctl.plan import LABEL_ENGINE, LABEL_LAB
from labctl.split import SplitLab
from tests.unit.test_split import MemoryEngine

GIB = 2**30


class Sized(MemoryEngine):
    def __init__(self, name: str, memory: int | None = 4 * GIB) -> None:
        super().__init__(name, [])
        self._memory = memory

    def memory(self) -> int | None:
        return self._memory

    def lab(self, lab: str, subnet: str = "10.89.0.0/24") -> None:
        for host in ("ns", "smtp", "mail", "andy", "betty"):
            self.add(lab, host)
        self.nets[f"{lab}-net"] = NetworkInfo(f"{lab}-net", f"{lab}-net", {LABEL_LAB: lab},
                                              (ipaddress.IPv4Network(subnet),), True)


def fleet(*engines: Sized, capacity: int = 10, manager: str | None = None, down: str = "") -> Fleet:
    file = enginesfile.Engines(Path("engines.yml"), tuple(
        enginesfile.EngineEntry(e.where, f"tcp://{e.where}:2375", capacity) for e in engines), manager)
    by_name = {e.where: e for e in engines}

    def connect(entry: Any) -> Any:
        if entry.name == down:
            raise DockerUnavailable(f"cannot reach the Docker engine at {entry.url} (connection refused).")
        return by_name[entry.name]

    return Fleet(file, connect)


def test_a_lab_is_found_on_the_engine_that_has_it() -> None:
    node1, node2 = Sized("node1"), Sized("node2")
    node2.lab("student-07")
    f = fleet(node1, node2)
    lab = f.lab("student-07")
    assert type(lab) is Lab and lab.engine is node2 and lab.engine_name == "node2"
    assert f.labs() == {"student-07": ["node2"]}


def test_a_lab_on_no_engine_is_not_made_up_and_the_message_lists_what_is() -> None:
    node1 = Sized("node1")
    node1.lab("student-01")
    with pytest.raises(LabNotRunning, match=r"lab 'student-02' is on none of the engines in engines.yml "
                                            r"\(student-01\); engine node2 did not answer .*labctl up --lab"):
        fleet(node1, Sized("node2"), down="node2").lab("student-02")


def test_a_new_lab_goes_to_the_emptier_engine_and_its_hosts_say_so() -> None:
    node1, node2 = Sized("node1"), Sized("node2")
    node1.lab("a")
    lab = fleet(node1, node2).lab("b", place=True)
    assert lab.engine is node2 and lab.engine_name == "node2"
    plans = lab._placed(topology.load(), {"ns": _plan()}, {})
    assert plans["ns"].container.labels[LABEL_ENGINE] == "node2"


def test_an_engine_that_does_not_answer_is_passed_over_and_full_ones_refuse() -> None:
    node1, node2 = Sized("node1"), Sized("node2")
    assert fleet(node1, node2, down="node1").lab("x", place=True).engine is node2
    small = Sized("small", memory=LAB_MEMORY + LAB_MEMORY // 2)  # room for one lab
    small.lab("one")
    with pytest.raises(Exception, match=r"no engine has room for lab 'two': small \(1/10 labs"):
        fleet(small).lab("two", place=True)


def test_many_labs_are_spread_and_get_subnets_apart_on_each_engine() -> None:
    node1, node2 = Sized("node1"), Sized("node2")
    node1.lab("s1")  # up already, on 10.89.0.0/24
    f = fleet(node1, node2)
    placed = f.place_all(["s1", "s2", "s3", "s4"])
    assert placed == {"s1": "node1", "s2": "node2", "s3": "node1", "s4": "node2"}
    chosen = subnets_for(f, placed, topology.load())
    assert chosen["s1"] is None  # it keeps its own
    assert chosen["s3"] != ipaddress.IPv4Network("10.89.0.0/24")  # node1's 10.89.0/24 is s1's
    assert chosen["s2"] != chosen["s4"]  # both on node2, brought up at once: never the same


def test_a_lab_on_two_engines_is_a_split_lab_on_the_swarm() -> None:
    node1, node2 = Sized("node1"), Sized("node2")
    node1.add("split", "ns")
    node2.add("split", "mail")
    lab = fleet(node1, node2, manager="node1").lab("split")
    assert isinstance(lab, SplitLab) and lab.manager == "node1"
    assert {h.name: h.engine for h in lab.status()} == {"ns": "node1", "mail": "node2"}
    with pytest.raises(Exception, match=r"needs a Swarm: name its manager in engines.yml"):
        fleet(node1, node2).lab("split")


def test_without_an_engines_file_everything_is_the_local_engine() -> None:
    local = Sized("local")
    f = Fleet(None, lambda entry: local)  # type: ignore[arg-type,return-value]
    assert f.names() == [LOCAL] and f.lab("maillab").engine is local and f.lab("maillab").engine_name == ""
    assert f.place_all(["a", "b"]) == {"a": LOCAL, "b": LOCAL}


def _plan() -> Any:
    from labctl.plan import plan

    return plan("b", topology.load(), "maillab:test")["ns"]
