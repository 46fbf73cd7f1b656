"""Every kind of step, check and fault of the scenario model has its entry in the dispatch tables."""

from __future__ import annotations

from typing import get_args

from labctl.scenario import faults, parse, runner, steps
from labctl.scenario import model as m


def test_every_action_of_the_model_runs() -> None:
    assert set(runner.ACTIONS) == set(get_args(m.Action))


def test_every_expectation_is_checked() -> None:
    assert set(runner.EXPECTATIONS) == set(get_args(m.Expectation))


def test_every_condition_but_time_is_looked_at() -> None:
    assert set(steps.CONDITIONS) == set(get_args(m.Condition)) - {m.Seconds}


def test_every_fault_and_host_action_is_done() -> None:
    assert set(faults.FAULTS) == set(get_args(m.Fault))
    assert set(faults.HOST_FAULTS) == set(m.HOST_ACTIONS)


def test_every_step_kind_of_the_file_is_read() -> None:
    assert parse.STEP_KINDS == ("send", "fetch", "smtp", "pop3", "imap", "task", "wait", "fault", "expect")
    assert set(parse.STEP_PARSERS) == set(parse.STEP_KINDS)
    assert set(parse.STEP_KEYS) == set(parse.STEP_KINDS)  # each kind's keys, for the indentation hint
