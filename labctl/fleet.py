"""Where labs are: the one local engine, or every engine of the engines file (issue 16).

Without an engines file this is what labctl always did: the engine DOCKER_HOST (or the local
socket) names holds every lab. With one, a lab lives on the engine its containers are on (each
carries ``org.maillab.engine``), found by asking every engine at once; a new lab goes where
:func:`labctl.placement.choose` says, and a lab whose topology places hosts on several engines
(``x-maillab.placement``) is a :class:`~labctl.split.SplitLab` on the Swarm the file names.

Images are built on the local engine only (it has the base and the build cache) and copied to an
engine that lacks them over the Engine API (:func:`labctl.image.push`): no registry anywhere.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from labctl import engine, enginesfile, placement, subnets
from labctl.backend import Engine
from labctl.enginesfile import EngineEntry, Engines
from labctl.errors import LabctlError, LabNotRunning
from labctl.events import Reporter, Stage, ignore
from labctl.lab import Lab, parallel
from labctl.plan import LABEL_ENGINE, LABEL_LAB
from labctl.topology import Topology

LOCAL = "local"  # the name `status --all` gives the one engine when there is no engines file


def _connect(entry: EngineEntry | None) -> Engine:
    from labctl.backend.docker_engine import connect

    if entry is None:
        return engine.connect()
    return connect(entry.url, tls=entry.tls)


@dataclass
class EngineLabs:
    """What one engine answered: its labs and the memory it has, or why it did not answer."""

    name: str
    labs: frozenset[str] = frozenset()
    memory: int | None = None
    error: str | None = None


@dataclass
class Fleet:
    engines: Engines | None  # None: no engines file, the one local engine
    connect: Callable[[EngineEntry | None], Engine] = _connect
    _connected: dict[str, Engine] = field(default_factory=dict)

    @classmethod
    def from_file(cls, given: str | None = None) -> Fleet:
        return cls(enginesfile.load(given))

    @property
    def spread(self) -> bool:
        """Labs go over the engines of an engines file (not just the local engine)."""
        return self.engines is not None

    def names(self) -> list[str]:
        return self.engines.names() if self.engines is not None else [LOCAL]

    def local(self) -> Engine:
        """The machine's own engine (DOCKER_HOST or the socket): where images are built."""
        if LOCAL not in self._connected:
            self._connected[LOCAL] = self.connect(None)
        return self._connected[LOCAL]

    def engine(self, name: str) -> Engine:
        if self.engines is None:
            return self.local()
        if name not in self._connected:
            self._connected[name] = self.connect(self.engines.get(name))
        return self._connected[name]

    # -- asking every engine -----------------------------------------------------------------

    def survey(self) -> list[EngineLabs]:
        """Every engine's labs and memory, asked at once; an engine that does not answer says why."""
        def look(name: str) -> EngineLabs:
            engine = self.engine(name)
            labels = [c.labels for c in engine.containers({LABEL_LAB: ""})]
            labels += [n.labels for n in engine.networks({LABEL_LAB: ""})]
            return EngineLabs(name, placement.labs_present(labels), engine.memory())

        def ask(name: str) -> EngineLabs:
            try:
                return look(name)
            except LabctlError as exc:
                return EngineLabs(name, error=str(exc).splitlines()[0])

        if self.engines is None:  # the one engine: not answering is the whole answer (what to do, too)
            return [look(LOCAL)]

        return parallel(ask, self.names())

    def labs(self) -> dict[str, list[str]]:
        """Lab -> the engines it has containers or networks on, for every engine that answered."""
        where: dict[str, list[str]] = {}
        for e in self.survey():
            for lab in e.labs:
                where.setdefault(lab, []).append(e.name)
        return dict(sorted(where.items()))

    # -- one lab ---------------------------------------------------------------------------

    def lab(self, name: str, report: Reporter = ignore, *, topo: Topology | None = None,
            place: bool = False, split: bool = False) -> Lab:
        """Lab ``name`` on the engine(s) it is on; with ``place``, a lab not up yet goes where
        placement says: split over the Swarm when ``split`` or when ``topo`` places hosts on
        engines (``x-maillab.placement``), else whole on the least-loaded engine."""
        if self.engines is None:
            if split or (place and topo is not None and topo.placement):
                raise LabctlError(f"lab {name!r} is to be split over several engines, and there is no engines file: "
                                  "make local nodes with `labctl cluster create --nodes 2`, or add engines with "
                                  "`labctl engines add NAME URL`")
            return Lab(self.local(), name, report)
        survey = self.survey()
        found = [e.name for e in survey if name in e.labs]
        if len(found) > 1 or (found and found[0] == self.engines.manager and self._overlay(name)) or (
                not found and place and (split or (topo is not None and topo.placement))):
            return self._split(name, report)
        if found:
            return Lab(self.engine(found[0]), name, report, engine_name=found[0])
        down = [e for e in survey if e.error]
        if not place:
            gone = "".join(f"; engine {e.name} did not answer ({e.error})" for e in down)
            labs = sorted({lab for e in survey for lab in e.labs})
            raise LabNotRunning(f"lab {name!r} is on none of the engines in {self.engines.path} "
                                f"({', '.join(labs) or 'no labs are up'}){gone}; start it with "
                                f"`labctl up --lab {name}`")
        answered = [e for e in survey if not e.error]
        loads = [placement.EngineLoad(e.name, self.engines.get(e.name).capacity, e.labs, self._free(e))
                 for e in answered]
        chosen = placement.choose(name, loads)
        report(Stage("engine", f"lab {name} goes to engine {chosen} ({self.engines.get(chosen).url})"
                               + "".join(f"; {e.name} did not answer" for e in down)))
        return Lab(self.engine(chosen), name, report, engine_name=chosen)

    def place_all(self, names: Iterable[str]) -> dict[str, str]:
        """Lab -> engine for many labs at once (``up --labs``), as if each were up before the next."""
        names = list(names)
        if self.engines is None:
            return dict.fromkeys(names, LOCAL)
        answered = [e for e in self.survey() if not e.error]
        loads = [placement.EngineLoad(e.name, self.engines.get(e.name).capacity, e.labs, self._free(e))
                 for e in answered]
        return placement.place_all(names, loads)

    def lab_on(self, name: str, engine: str, report: Reporter = ignore) -> Lab:
        if self.engines is None:
            return Lab(self.local(), name, report)
        return Lab(self.engine(engine), name, report, engine_name=engine)

    @staticmethod
    def _free(e: EngineLabs) -> int | None:
        # The Engine API says how much memory its machine has, not how much is free: count each
        # lab on it at what a lab may hold (placement.LAB_MEMORY) and call the rest free.
        return None if e.memory is None else e.memory - len(e.labs) * placement.LAB_MEMORY

    def _overlay(self, name: str) -> bool:
        assert self.engines is not None and self.engines.manager is not None
        nets = self.engine(self.engines.manager).networks({LABEL_LAB: name})
        return any(n.driver == "overlay" for n in nets)

    def _split(self, name: str, report: Reporter) -> Lab:
        from labctl.split import SplitLab

        assert self.engines is not None
        if self.engines.manager is None:
            raise LabctlError(f"lab {name!r} places hosts on several engines, which needs a Swarm: name its manager "
                              f"in {self.engines.path} (swarm: {{manager: ENGINE}}), or make local nodes with "
                              "`labctl cluster create --nodes 2`")
        engines = dict(zip(self.names(), parallel(self.engine, self.names()), strict=True))
        return SplitLab(engines, self.engines.manager, name, report)

    # -- images ----------------------------------------------------------------------------

    def build(self, wanted: Iterable[str], report: Reporter = ignore, *, base: str | None = None,
              mirror: str | None = None) -> dict[str, str]:
        """The images a topology's hosts run (image name -> tag), built on the local engine."""
        from labctl.image import ImageBuilder

        return ImageBuilder(self.local(), report).images(wanted, base=base, mirror=mirror)

    def push(self, engines: Iterable[Engine], tags: Mapping[str, str], report: Reporter = ignore) -> None:
        """Copy ``tags`` from the local engine to each of ``engines`` that lacks them, at once."""
        from labctl.image import push

        if self.engines is None:
            return
        targets = list(dict.fromkeys(engines))
        parallel(lambda e: [push(self.local(), e, tag, report) for tag in tags.values()], targets)


def engine_of_labels(labels: Mapping[str, str]) -> str:
    return labels.get(LABEL_ENGINE, "") or LOCAL


# -- many labs at once (`up/down/run --labs`) ----------------------------------------------------

BATCH = 8  # labs brought up (or down) at once: each start is a burst of Engine API calls


@dataclass
class Outcome:
    """One lab of a batch: where it went and how it ended."""

    lab: str
    engine: str
    seconds: float = 0.0
    error: str | None = None


def subnets_for(fleet: Fleet, placed: Mapping[str, str], topo: Topology) -> dict[str, ipaddress.IPv4Network | None]:
    """A subnet per lab not up yet, chosen in order per engine so that labs brought up at once
    never pick the same free subnet (each engine's networks are read once)."""
    chosen: dict[str, ipaddress.IPv4Network | None] = {}
    present = fleet.labs()
    for engine_name in dict.fromkeys(placed.values()):
        labs = [lab for lab, e in placed.items() if e == engine_name]
        taken = fleet.lab_on(labs[0], engine_name).taken_networks()
        for lab in labs:
            if lab in present:
                chosen[lab] = None  # up already: it keeps the subnet it has
                continue
            choice = subnets.choose_subnet(topo.subnet, None, taken).subnet
            taken.append(subnets.Taken(choice, f"lab {lab!r}"))
            chosen[lab] = choice
    return chosen


def each(labs: Sequence[str], work: Callable[[str], str], done: Callable[[Outcome], None]) -> list[Outcome]:
    """``work(lab)`` (which returns the lab's engine) for every lab, BATCH at once; a lab that
    fails is reported with its error and the others go on."""
    def one(lab: str) -> Outcome:
        started = time.monotonic()
        try:
            outcome = Outcome(lab, work(lab), time.monotonic() - started)
        except LabctlError as exc:
            outcome = Outcome(lab, "", time.monotonic() - started, str(exc))
        done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=BATCH) as pool:
        return list(pool.map(one, labs))
