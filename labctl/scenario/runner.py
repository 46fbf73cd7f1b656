"""``labctl run``: each scenario in a fresh lab of its own, step by step, then a report.

One scenario = one lab with a unique name, built from the scenario's topology. Steps run in order;
the first one that fails ends the scenario with what it expected and what it saw. Whatever
happens (a failure, an exception, Ctrl-C), the lab is removed afterwards unless ``keep``; the
report directory then holds, per scenario, ``result.json``, each host's log, and the lab's
capture (``capture.pcapng``) where the capture can be exported.

The runner prints nothing: it tells a :class:`Progress` (the CLI draws it with rich).
"""

from __future__ import annotations

import json
import re
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labctl.backend import Engine
from labctl.errors import LabctlError
from labctl.events import Reporter, ignore
from labctl.image import ImageBuilder
from labctl.lab import Lab
from labctl.scenario import facts, faults, steps
from labctl.scenario import model as m
from labctl.scenario.context import Context, StepFailed
from labctl.topology import Topology

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


@dataclass
class StepResult:
    number: int
    kind: str
    title: str
    line: int | None
    status: str  # passed, failed, error (the runner or the lab broke), skipped (after a failure)
    seconds: float = 0.0
    detail: str = ""  # what happened, on success
    expected: str = ""
    seen: str = ""
    transcript: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class ScenarioResult:
    name: str
    file: str
    lab: str
    status: str = PASSED
    seconds: float = 0.0
    started: float = 0.0  # epoch seconds
    message: str = ""  # the failure, in one paragraph
    steps: list[StepResult] = field(default_factory=list)
    report: str = ""  # the scenario's report folder
    artifacts: list[str] = field(default_factory=list)
    kept: bool = False

    @property
    def ok(self) -> bool:
        return self.status == PASSED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Progress(Protocol):
    def scenario_started(self, scenario: m.Scenario, lab: str) -> None: ...
    def lab_ready(self, seconds: float) -> None: ...
    def step_started(self, step: m.Step) -> None: ...
    def step_finished(self, step: m.Step, result: StepResult) -> None: ...
    def scenario_finished(self, result: ScenarioResult) -> None: ...


class Silent:
    def scenario_started(self, scenario: m.Scenario, lab: str) -> None:
        pass

    def lab_ready(self, seconds: float) -> None:
        pass

    def step_started(self, step: m.Step) -> None:
        pass

    def step_finished(self, step: m.Step, result: StepResult) -> None:
        pass

    def scenario_finished(self, result: ScenarioResult) -> None:
        pass


def lab_name(scenario: m.Scenario) -> str:
    """A name no other lab has: the scenario's file, shortened, and a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", scenario.source.stem.lower()).strip("-")[:24] or "scenario"
    return f"sc-{slug}-{uuid.uuid4().hex[:6]}"


def slug(scenario: m.Scenario) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", scenario.source.stem).strip("-") or "scenario"


def _place(scenario: m.Scenario, step: m.Step) -> str:
    """Where a step is written: file:line."""
    return f"{scenario.source.name}:{step.line}" if step.line else scenario.source.name


def _shaped_host(step: m.Step) -> str:
    assert isinstance(step.action, m.Shape)
    return step.action.host


def _expect(ctx: Context, action: m.Expect) -> str:
    return "; ".join(EXPECTATIONS[type(check)](ctx, check) for check in action.checks)


# What each check of an expect step does, by its type in the model.
EXPECTATIONS: Mapping[type[m.Expectation], Callable[[Context, Any], str]] = {
    m.MailboxExpect: steps.check_mailbox,
    m.QueueExpect: steps.check_queue,
    m.Bounced: steps.check_bounce,
    m.TrafficExpect: facts.check,
}

# What each step does, by the type of its action in the model (faults: the table of faults.py);
# the step's result is what it returns.
ACTIONS: Mapping[type[m.Action], Callable[[Context, Any], str]] = dict([
    (m.Send, steps.run_send),
    (m.Fetch, steps.run_fetch),
    (m.Dialogue, steps.run_dialogue),
    (m.Wait, steps.run_wait),
    (m.Expect, _expect),
    *faults.FAULTS.items(),
])


class Runner:
    def __init__(self, engine: Engine, *, progress: Progress | None = None, report_dir: Path | None = None,
                 keep: bool = False, reporter: Reporter = ignore, image: str | None = None) -> None:
        self.engine = engine
        self.progress = progress or Silent()
        self.report_dir = report_dir
        self.keep = keep
        self.reporter = reporter
        self._image = image
        self._images: dict[str, str] = {}  # image name (topology.IMAGES) -> tag, built once per run
        self.interrupted = False  # set by a Ctrl-C inside run(): the caller runs no more scenarios
        self.netem: bool | None = None  # whether the engine's kernel has netem, once a lab was asked

    def images(self, topo: Topology) -> str | dict[str, str]:
        """The images ``topo``'s hosts run: the lab image, and the reference image when a host of
        the scenario's lab runs a reference peer (``swap: {mail: postfix-mx}``), as `labctl up` does."""
        if self._image is not None:
            return self._image
        wanted = {h.image for h in topo.hosts}
        if not self._images or not wanted <= self._images.keys():
            self._images.update(ImageBuilder(self.engine, self.reporter).images(wanted))
        return dict(self._images)

    def run(self, scenario: m.Scenario) -> ScenarioResult:
        lab = Lab(self.engine, lab_name(scenario), self.reporter)
        result = ScenarioResult(scenario.name, str(scenario.source), lab.name, started=time.time())
        result.steps = [StepResult(s.number, s.kind, s.title, s.line, SKIPPED, note=s.note) for s in scenario.steps]
        self.progress.scenario_started(scenario, lab.name)
        started = time.monotonic()
        running: tuple[m.Step, StepResult] | None = None  # the step under way; None while the lab comes up
        try:
            try:
                delayed = next((s for s in scenario.steps if isinstance(s.action, m.Shape) and s.action.delay_ms), None)
                if delayed is not None and self.netem is False:
                    self._cannot_delay(scenario, result, delayed)  # known from an earlier lab: none is brought up
                else:
                    ctx = self._bring_up(lab, scenario)
                    self.progress.lab_ready(time.monotonic() - started)
                    if delayed is not None and self.netem is None:
                        self.netem = faults.netem_works(ctx, _shaped_host(delayed))
                    if delayed is not None and not self.netem:
                        self._cannot_delay(scenario, result, delayed)
                    else:
                        for step, step_result in zip(scenario.steps, result.steps, strict=True):
                            running = step, step_result
                            if not self._step(ctx, step, step_result):
                                result.status = step_result.status
                                result.message = (f"step {step.number} ({_place(scenario, step)}) {step.title}: "
                                                  f"expected {step_result.expected}; saw {step_result.seen}")
                                break
            except KeyboardInterrupt:
                # Ctrl-C: the scenario ends as an error whose report is still written; the caller
                # learns of the interrupt from `interrupted` and stops there.
                self.interrupted = True
                result.status, result.message = ERROR, "interrupted (Ctrl-C) while the lab came up"
                if running is not None:
                    step, step_result = running
                    result.message = (f"interrupted (Ctrl-C) during step {step.number} ({_place(scenario, step)}) "
                                      f"{step.title}")
                    step_result.status, step_result.expected = ERROR, "the step to run"
                    step_result.seen = "interrupted (Ctrl-C)"
            except LabctlError as exc:
                result.status, result.message = ERROR, f"the lab could not be used: {exc}"
            except Exception as exc:  # noqa: BLE001 - a bug or an engine failure: report it, then clean up
                result.status = ERROR
                result.message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
            result.seconds = time.monotonic() - started
            try:
                self._save(lab, scenario, result)
            except (LabctlError, OSError) as exc:
                # The verdict stands; a report that could not be completed must not hide it.
                result.artifacts.append(f"the report is incomplete: {exc}")
            except KeyboardInterrupt:  # a second Ctrl-C: no report, but the lab still goes
                self.interrupted = True
                result.artifacts.append("the report is incomplete: interrupted (Ctrl-C)")
        finally:
            # A second Ctrl-C lands here too: the lab goes, then the interrupt goes on up.
            if self.keep:
                result.kept = True
            else:
                lab.down()
        self.progress.scenario_finished(result)
        return result

    def _cannot_delay(self, scenario: m.Scenario, result: ScenarioResult, step: m.Step) -> None:
        """The scenario asks for a delay and the kernel has no netem: it fails before any step runs,
        at the step asking for it."""
        failed = result.steps[step.number - 1]
        self.progress.step_started(step)
        failed.status, failed.expected, failed.seen = FAILED, "a kernel with netem for the delay", faults.NO_NETEM
        self.progress.step_finished(step, failed)
        result.status = FAILED
        result.message = (f"step {step.number} ({_place(scenario, step)}) {step.title}: checked before any step "
                          f"ran: {faults.NO_NETEM}")

    def _bring_up(self, lab: Lab, scenario: m.Scenario) -> Context:
        # The lab may have moved to a free subnet (another lab holds the topology's): the placed
        # topology is where it really is.
        return Context(lab, lab.up(scenario.topology, self.images(scenario.topology)).topology)

    def _step(self, ctx: Context, step: m.Step, out: StepResult) -> bool:
        self.progress.step_started(step)
        started = time.monotonic()
        ctx.transcript = []
        try:
            out.detail = ACTIONS[type(step.action)](ctx, step.action)
            out.status = PASSED
        except StepFailed as exc:
            out.status, out.expected, out.seen = FAILED, exc.expected, exc.seen
        except LabctlError as exc:
            out.status, out.expected, out.seen = ERROR, "the step to run", str(exc)
        out.seconds = time.monotonic() - started
        out.transcript = list(ctx.transcript)
        self.progress.step_finished(step, out)
        return out.status == PASSED

    # -- the report ---------------------------------------------------------------------------

    def _save(self, lab: Lab, scenario: m.Scenario, result: ScenarioResult) -> None:
        if self.report_dir is None:
            return
        folder = self.report_dir / slug(scenario)
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        result.report = str(folder)
        for host in lab.status():
            try:
                text = b"".join(lab.logs(host.name)).decode("utf-8", "replace")
            except LabctlError as exc:
                text = f"(no log: {exc})\n"
            path = folder / "logs" / f"{host.name}.log"
            path.write_text(text, encoding="utf-8")
            result.artifacts.append(str(path.relative_to(folder)))
        subjects = [s.action.subject for s in scenario.steps if isinstance(s.action, m.Send)]
        result.artifacts += facts.save_traffic(lab, folder, since=result.started - 1, subjects=subjects)
        (folder / "result.json").write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
