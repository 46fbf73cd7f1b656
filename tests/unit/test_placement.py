"""labctl.placement and labctl.labnames: pure choices, no engine."""

from __future__ import annotations

import pytest

from labctl.errors import LabctlError
from labctl.labnames import expand
from labctl.placement import EngineLoad, choose, labs_present, place_all


def test_the_least_filled_engine_with_room_is_chosen() -> None:
    loads = [EngineLoad("a", 4, frozenset({"x", "y"})), EngineLoad("b", 4, frozenset({"z"}))]
    assert choose("new", loads) == "b"


def test_a_lab_already_on_an_engine_stays_there() -> None:
    loads = [EngineLoad("a", 4, frozenset({"x"})), EngineLoad("b", 4, frozenset())]
    assert choose("x", loads) == "a"


def test_full_engines_are_refused_with_what_to_do() -> None:
    with pytest.raises(LabctlError, match="capacity"):
        choose("n", [EngineLoad("a", 1, frozenset({"x"})), EngineLoad("b", 4, frozenset(), free_memory=0)])


def test_many_labs_spread_evenly() -> None:
    placed = place_all(["l1", "l2", "l3", "l4"], [EngineLoad("a", 9, frozenset()), EngineLoad("b", 9, frozenset())])
    assert sorted(placed.values()) == ["a", "a", "b", "b"]


def test_labels_name_each_lab_once() -> None:
    assert labs_present([{"org.maillab.lab": "x"}, {"org.maillab.lab": "x"}, {}]) == {"x"}


def test_brace_ranges_keep_zero_padding() -> None:
    assert expand("student-{001..003}", lambda p: "") == ["student-001", "student-002", "student-003"]


def test_a_file_of_names_and_its_bad_line() -> None:
    assert expand("@f", lambda p: "a\n# c\nb\n") == ["a", "b"]
    with pytest.raises(LabctlError, match="f:2"):
        expand("@f", lambda p: "a\nbad name\n")


def test_duplicates_and_backward_ranges_are_refused() -> None:
    with pytest.raises(LabctlError, match="twice"):
        expand("a,a", lambda p: "")
    with pytest.raises(LabctlError, match="backwards"):
        expand("s{3..1}", lambda p: "")
