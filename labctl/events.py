"""Progress that the library reports and only the CLI prints (style: labctl is a thin CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Notice:
    """Something the user should know, e.g. that a base image is being bootstrapped."""

    text: str


@dataclass(frozen=True)
class BuildOutput:
    """One line of output from building the image (docker build, debootstrap)."""

    text: str


@dataclass(frozen=True)
class Stage:
    """A stage of bringing a lab up or down reached, e.g. ("network", "created maillab-lab")."""

    name: str
    text: str


Event = Notice | BuildOutput | Stage
Reporter = Callable[[Event], None]


def ignore(_: Event) -> None:
    """A reporter for callers that want no progress (tests, benchmarks)."""
