"""``labctl run``: each scenario in a fresh lab of its own, step by step, then a report.

One scenario = one lab with a unique name, built from the scenario's topology. Steps run in order;
the first one that fails ends the scenario with what it expected and what it saw. Whatever
happens (a failure, an exception, Ctrl-C), the lab is removed afterwards unless ``keep``; the
report directory then holds, per scenario, ``result.json``, each host's log, and the lab's
capture (``capture.pcapng``) where the capture can be exported.

The runner prints nothing: it tells a :class:`Progress` (the CLI draws it with rich).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labctl.errors import LabctlError
from labctl.events import Reporter, ignore
from labctl.fleet import Fleet
from labctl.lab import Lab
from labctl.scenario import facts, faults, steps
from labctl.scenario import model as m
from labctl.scenario.context import Context, StepFailed, TaskWindow
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
    def task_given(self, step: m.Step, task: m.Task, lab: str) -> None: ...
    def hint(self, text: str) -> None: ...


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

    def task_given(self, step: m.Step, task: m.Task, lab: str) -> None:
        pass

    def hint(self, text: str) -> None:
        pass


def lab_name(scenario: m.Scenario) -> str:
    """A name no other lab has: the scenario's file, shortened, and a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", scenario.source.stem.lower()).strip("-")[:24] or "scenario"
    return f"sc-{slug}-{uuid.uuid4().hex[:6]}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "scenario"


def slug(scenario: m.Scenario) -> str:
    return _slug(scenario.source.stem)


def report_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A name per scenario file for its report folder and JUnit suite, distinct for distinct files.

    The file's name without ``.yml`` where that is unique; two files of the same name in different
    folders (``alice/answer.yml``, ``bob/answer.yml``) take as many of their folders as make them
    differ (``alice-answer``, ``bob-answer``), and a number if even that does not.
    """
    parts = {p: p.resolve().with_suffix("").parts for p in paths}
    depth = dict.fromkeys(paths, 1)

    def name(p: Path) -> str:
        return "-".join(_slug(x) for x in parts[p][-depth[p]:])

    while True:
        owners: dict[str, set[tuple[str, ...]]] = {}
        for p in paths:
            owners.setdefault(name(p), set()).add(parts[p])
        clashing = [p for p in paths if len(owners[name(p)]) > 1 and depth[p] < len(parts[p])]
        if not clashing:
            break
        for p in clashing:
            depth[p] += 1
    names: dict[Path, str] = {}
    taken: dict[str, tuple[str, ...]] = {}
    for p in paths:
        n, k = name(p), 1
        while taken.setdefault(n if k == 1 else f"{n}-{k}", parts[p]) != parts[p]:
            k += 1
        names[p] = n if k == 1 else f"{n}-{k}"
    return names


def traced_subjects(scenario: m.Scenario) -> list[str]:
    """The subjects of the messages a scenario puts on the wire, for its ``trace.txt``: sent, typed in
    a dialogue (its ``Subject:`` line), or awaited (an exercise's student sends them)."""
    found: list[str] = []
    for s in scenario.steps:
        a = s.action
        if isinstance(a, m.Send):
            found.append(a.subject)
        elif isinstance(a, m.Dialogue):
            found += [h[1].strip() for e in a.exchanges if e.send and "\n" in e.send
                      for h in re.findall(r"(?im)^(subject:)[ \t]*(.+)$", e.send)]
        elif isinstance(a, m.Wait) and isinstance(a.until, m.Delivered) and a.until.subject:
            found.append(a.until.subject)
        elif isinstance(a, m.Expect):
            found += [c.subject for c in a.checks if isinstance(c, m.MailboxExpect) and c.subject]
    return list(dict.fromkeys(found))


def _place(scenario: m.Scenario, step: m.Step) -> str:
    """Where a step is written: file:line."""
    return f"{scenario.source.name}:{step.line}" if step.line else scenario.source.name


def _shaped_host(step: m.Step) -> str:
    assert isinstance(step.action, m.Shape)
    return step.action.host


def _expect(ctx: Context, action: m.Expect) -> str:
    def once() -> str:
        return "; ".join(EXPECTATIONS[type(check)](ctx, check) for check in action.checks)
    # After a task, an expect waits as a wait does: the student may still be at it.
    return steps.patiently(ctx, once, 0.0) if ctx.task else once()


def _task(ctx: Context, task: m.Task) -> str:
    ctx.task = TaskWindow(task, ctx.clock())
    return f"given, {task.time_limit:g} s to do it"


# What each check of an expect step does, by its type in the model.
EXPECTATIONS: Mapping[type[m.Expectation], Callable[[Context, Any], str]] = {
    m.MailboxExpect: steps.check_mailbox,
    m.QueueExpect: steps.check_queue,
    m.Bounced: steps.check_bounce,
    m.TrafficExpect: facts.check,
    m.FileExpect: steps.check_file,
}

# What each step does, by the type of its action in the model (faults: the table of faults.py);
# the step's result is what it returns.
ACTIONS: Mapping[type[m.Action], Callable[[Context, Any], str]] = dict([
    (m.Send, steps.run_send),
    (m.Fetch, steps.run_fetch),
    (m.Dialogue, steps.run_dialogue),
    (m.Wait, steps.run_wait),
    (m.Expect, _expect),
    (m.Task, _task),
    *faults.FAULTS.items(),
])


def _graded(scenario: m.Scenario) -> set[int]:
    """The steps `labctl check` runs: the wait and expect steps right after a task (all of them in a
    scenario without tasks); the ones before an exercise's first task check its setup."""
    checks = [s for s in scenario.steps if isinstance(s.action, m.Wait | m.Expect)]
    if not any(isinstance(s.action, m.Task) for s in scenario.steps):
        return {s.number for s in checks}
    graded: set[int] = set()
    in_task = False
    for s in scenario.steps:
        if isinstance(s.action, m.Task):
            in_task = True
        elif not isinstance(s.action, m.Wait | m.Expect):
            in_task = False
        elif in_task:
            graded.add(s.number)
    return graded


class Runner:
    def __init__(self, where: Fleet, *, progress: Progress | None = None, report_dir: Path | None = None,
                 keep: bool = False, reporter: Reporter = ignore, image: str | None = None,
                 names: Mapping[Path, str] | None = None) -> None:
        self.fleet = where  # the engine(s) labs are on, and where a new one goes
        self.progress = progress or Silent()
        self.report_dir = report_dir
        self.keep = keep
        self.reporter = reporter
        self.names = dict(names or {})  # report folder per scenario file (report_names); default its stem
        self._image = image
        self._images: dict[str, str] = {}  # image name (topology.IMAGES) -> tag, built once per run
        self.interrupted = False  # set by a Ctrl-C inside run(): the caller runs no more scenarios
        self.netem: bool | None = None  # whether the engine's kernel has netem, once a lab was asked
        self._running: tuple[m.Step, StepResult] | None = None  # the step under way; None while the lab comes up

    def images(self, topo: Topology, lab: Lab) -> str | dict[str, str]:
        """The images ``topo``'s hosts run: the lab image, and the reference image when a host of
        the scenario's lab runs a reference peer (``swap: {mail: postfix-mx}``), as `labctl up` does;
        built once on the local engine, copied to the lab's engines that lack them."""
        if self._image is not None:
            return self._image
        wanted = {h.image for h in topo.hosts}
        if not self._images or not wanted <= self._images.keys():
            self._images.update(self.fleet.build(wanted, self.reporter))
        self.fleet.push(lab.engine_list(), self._images, self.reporter)
        return dict(self._images)

    def run(self, scenario: m.Scenario, *, lab: str | None = None) -> ScenarioResult:
        """Run every step in a fresh lab; with ``lab``, in that lab (brought up if it is not, and
        left up: it is someone's)."""
        name = lab or lab_name(scenario)
        return self._scenario(scenario, self.fleet.lab(name, self.reporter, topo=scenario.topology, place=True),
                              existing=lab is not None, grading=False)

    def check(self, scenario: m.Scenario, lab: str) -> ScenarioResult:
        """Grade lab ``lab`` as it is against the scenario's checks, running none of its actions.

        The checks are the wait and expect steps after each task (all of them in a scenario without
        tasks); each wait looks once. Every check runs, a failed one does not stop the others.
        """
        return self._scenario(scenario, self.fleet.lab(lab, self.reporter), existing=True, grading=True)

    def _scenario(self, scenario: m.Scenario, lab: Lab, *, existing: bool, grading: bool) -> ScenarioResult:
        result = ScenarioResult(scenario.name, str(scenario.source), lab.name, started=time.time())
        result.steps = [StepResult(s.number, s.kind, s.title, s.line, SKIPPED, note=s.note) for s in scenario.steps]
        self.progress.scenario_started(scenario, lab.name)
        started = time.monotonic()
        self._running = None
        try:
            try:
                # `labctl check` shapes nothing, so a delay it cannot make does not matter there.
                delayed = None if grading else next(
                    (s for s in scenario.steps if isinstance(s.action, m.Shape) and s.action.delay_ms), None)
                if delayed is not None and self.netem is False:
                    self._cannot_delay(scenario, result, delayed)  # known from an earlier lab: none is brought up
                else:
                    ctx = self._join(lab, scenario) if grading else self._bring_up(lab, scenario)
                    ctx.show_hint = self.progress.hint
                    self.progress.lab_ready(time.monotonic() - started)
                    if delayed is not None and self.netem is None:
                        self.netem = faults.netem_works(ctx, _shaped_host(delayed))
                    if delayed is not None and not self.netem:
                        self._cannot_delay(scenario, result, delayed)
                    else:
                        self._steps(ctx, scenario, result, grading=grading)
            except KeyboardInterrupt:
                # Ctrl-C: the scenario ends as an error whose report is still written; the caller
                # learns of the interrupt from `interrupted` and stops there.
                self.interrupted = True
                result.status, result.message = ERROR, "interrupted (Ctrl-C) while the lab came up"
                if self._running is not None:
                    step, step_result = self._running
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
            if self.keep or existing:
                result.kept = True
            else:
                lab.down()
        self.progress.scenario_finished(result)
        return result

    def _steps(self, ctx: Context, scenario: m.Scenario, result: ScenarioResult, *, grading: bool) -> None:
        """Run the steps in order; a run stops at the first that fails, a grading (`labctl check`)
        runs every check it grades and reports the others as not run."""
        graded = _graded(scenario) if grading else {s.number for s in scenario.steps}
        for step, step_result in zip(scenario.steps, result.steps, strict=True):
            self._running = step, step_result
            if step.number not in graded:
                step_result.detail = "not run by labctl check: " + (
                    "a check of the setup, not of a task" if isinstance(step.action, m.Wait | m.Expect)
                    else "an action")
                continue
            if not self._step(ctx, step, step_result) and not result.message:
                result.status = step_result.status
                result.message = (f"step {step.number} ({_place(scenario, step)}) {step.title}: "
                                  f"expected {step_result.expected}; saw {step_result.seen}")
                if not grading:
                    break

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
        return Context(lab, lab.up(scenario.topology, self.images(scenario.topology, lab)).topology)

    def _join(self, lab: Lab, scenario: m.Scenario) -> Context:
        """A lab that is up, as it is (nothing started): the scenario's topology on the lab's subnet."""
        hosts = {h.name for h in lab.hosts()}
        missing = [h.name for h in scenario.topology.hosts if h.name not in hosts]
        net = lab.network()
        subnet = next((n for n in net.subnets if isinstance(n, ipaddress.IPv4Network)), None) if net else None
        if missing or subnet is None:
            raise LabctlError(f"lab {lab.name!r} is not the lab of this scenario (it has no host "
                              f"{', '.join(missing) or 'network'}); run it with `labctl run {scenario.source}`")
        return Context(lab, scenario.topology.with_subnet(subnet), patient=False)

    def _step(self, ctx: Context, step: m.Step, out: StepResult) -> bool:
        self.progress.step_started(step)
        started = time.monotonic()
        ctx.transcript = []
        if isinstance(step.action, m.Task):
            self.progress.task_given(step, step.action, ctx.lab.name)
        elif not isinstance(step.action, m.Wait | m.Expect):
            ctx.task = None  # a task's checks are the wait and expect steps right after it
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
        folder = self.report_dir / self.names.get(scenario.source, slug(scenario))
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
        result.artifacts += facts.save_traffic(lab, folder, since=result.started - 1,
                                               subjects=traced_subjects(scenario))
        (folder / "result.json").write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
