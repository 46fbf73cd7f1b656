"""Which engine a new lab goes to: a pure choice over what each engine holds and has free.

The shell (labctl.fleet) asks every engine in parallel for its labs (by the ``org.maillab.lab``
label) and its free memory, then calls :func:`choose`; nothing here talks to an engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from labctl.errors import LabctlError
from labctl.plan import LABEL_ENGINE, LABEL_LAB

# What one five-host lab may hold: README's growth row measured 71 MiB for five hosts just up;
# this leaves room for mail, queues and logs. An engine with less than this free takes no further lab.
LAB_MEMORY = 160 * 1024 * 1024


@dataclass(frozen=True)
class EngineLoad:
    """One engine as placement sees it."""

    name: str
    capacity: int  # labs it may hold (the engines file's `capacity=`)
    labs: frozenset[str]  # labs present on it
    free_memory: int | None = None  # bytes; None when the engine does not say

    @property
    def fill(self) -> float:
        return len(self.labs) / self.capacity if self.capacity else 1.0


def labs_present(labels: Iterable[Mapping[str, str]]) -> frozenset[str]:
    """The labs among containers' labels (one lab has several containers)."""
    return frozenset(lab for lab in (ls.get(LABEL_LAB) for ls in labels) if lab)


def engine_label(labels: Mapping[str, str], engine: str) -> dict[str, str]:
    """A container's labels with the engine it is placed on."""
    return {**labels, LABEL_ENGINE: engine}


def choose(lab: str, loads: Sequence[EngineLoad], *, need: int = LAB_MEMORY) -> str:
    """The engine for ``lab``: the one it is on already, else the least filled that has room."""
    if not loads:
        raise LabctlError("no engines to place a lab on; add one with `labctl engines add NAME URL` "
                          "or start local ones with `labctl cluster create --nodes 2`")
    for load in loads:
        if lab in load.labs:
            return load.name
    room = [ld for ld in loads if len(ld.labs) < ld.capacity and (ld.free_memory is None or ld.free_memory >= need)]
    if not room:
        full = ", ".join(f"{ld.name} ({len(ld.labs)}/{ld.capacity} labs, {_mib(ld.free_memory)} free)" for ld in loads)
        raise LabctlError(f"no engine has room for lab {lab!r}: {full}. Take labs down, raise an engine's "
                          "capacity (`labctl engines add NAME URL --capacity N`) or add an engine")
    # Least filled first; among equals the one with more free memory, then by name so the choice is stable.
    best = min(room, key=lambda ld: (ld.fill, -(ld.free_memory or 0), ld.name))
    return best.name


def place_all(labs: Sequence[str], loads: Sequence[EngineLoad], *, need: int = LAB_MEMORY) -> dict[str, str]:
    """Each of ``labs`` -> its engine, placing one after another as if the earlier ones were up."""
    current = {ld.name: ld for ld in loads}
    placed: dict[str, str] = {}
    for lab in labs:
        name = choose(lab, list(current.values()), need=need)
        placed[lab] = name
        ld = current[name]
        if lab not in ld.labs:
            free = None if ld.free_memory is None else ld.free_memory - need
            current[name] = replace(ld, labs=ld.labs | {lab}, free_memory=free)
    return placed


def _mib(size: int | None) -> str:
    return "? MiB" if size is None else f"{size // (1024 * 1024)} MiB"
