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
from labctl.topology import Topology


class StepFailed(Exception):
    """The step ran but the lab did not do what the scenario says it should."""

    def __init__(self, expected: str, seen: str) -> None:
        super().__init__(f"expected {expected}; saw {seen}")
        self.expected = expected
        self.seen = seen


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

    def mail_host(self, address: str) -> str:
        """The host keeping the mailbox of ``address``."""
        domain = address.rpartition("@")[2].lower()
        for d in self.topology.domains:
            if d.name == domain:
                return d.mail_host
        raise StepFailed(f"a lab domain for {address}", f"no domain {domain} in this lab")
