"""What the steps of one running scenario share, and how a step fails.

Apart from :mod:`labctl.scenario.steps` so that the modules a step uses (observing the lab,
faults, traffic facts) can raise :class:`StepFailed` and read the :class:`Context` without
importing the step runners that import them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from labctl.lab import Lab
from labctl.scenario.model import Task
from labctl.topology import Topology


class StepFailed(Exception):
    """The step ran but the lab did not do what the scenario says it should."""

    def __init__(self, expected: str, seen: str) -> None:
        super().__init__(f"expected {expected}; saw {seen}")
        self.expected = expected
        self.seen = seen


@dataclass
class TaskWindow:
    """A task under way: the wait and expect steps after it have until its time limit to hold."""

    task: Task
    started: float  # on the context's clock
    hint_shown: bool = False

    def remaining(self, now: float) -> float:
        return max(0.0, self.started + self.task.time_limit - now)

    def hint_due(self, now: float) -> bool:
        """Half the time limit has passed and the hint has not been shown yet."""
        return bool(self.task.hint) and not self.hint_shown and now >= self.started + self.task.time_limit / 2


@dataclass
class Context:
    """What the steps of one scenario share while it runs."""

    lab: Lab
    topology: Topology  # the lab as it is now, on its real subnet
    serial: int = 1  # of the zone files the DNS server has loaded
    transcript: list[str] = field(default_factory=list)  # the step's protocol lines, for the report
    undo: dict[str, list[list[str]]] = field(default_factory=dict)  # host -> commands undoing its shaping
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    task: TaskWindow | None = None  # the task whose checks the steps now running are
    patient: bool = True  # False (`labctl check`): a wait looks once, the student is done
    show_hint: Callable[[str], None] = lambda hint: None  # the runner tells its Progress

    def mail_host(self, address: str) -> str:
        """The host keeping the mailbox of ``address``."""
        domain = address.rpartition("@")[2].lower()
        for d in self.topology.domains:
            if d.name == domain:
                return d.mail_host
        raise StepFailed(f"a lab domain for {address}", f"no domain {domain} in this lab")
