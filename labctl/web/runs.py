"""Scenario runs on the page: ``labctl run`` publishes its progress, ``labctl web`` reads it.

A run writes one JSON line per happening (a scenario started, a step started or finished, the
scenario finished) to a file per lab (:func:`path`), through :class:`Published`, which wraps the
CLI's own progress view; the follower of ``labctl web`` reads what was appended since its last
look (:class:`RunReader`) and passes each line on as a ``run`` event; :func:`fold` turns the lines
into the runs the page lists, each step passed, failed or running, a failure with its expected
and seen text. A file on this machine, not the lab: a run and the page are both labctl here, and
nothing a student does in the lab can forge a result.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labctl.scenario.model import Scenario, Step, Task
    from labctl.scenario.runner import Progress, ScenarioResult, StepResult

KEPT_RUNS = 20  # the page lists the latest runs only


def path(lab: str) -> Path:
    """Where the runs in ``lab`` are published (this user's temporary folder)."""
    return Path(tempfile.gettempdir()) / f"maillab-runs-{os.getuid()}" / f"{lab}.jsonl"


class Published:
    """A run's progress shown as before (``inner``) and also written for ``labctl web``."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.run = ""
        self.file: Path | None = None

    def _write(self, event: str, **fields: Any) -> None:
        if self.file is None:
            return
        line = json.dumps({"event": event, "run": self.run, "time": round(time.time(), 3), **fields})
        try:
            self.file.parent.mkdir(mode=0o700, exist_ok=True)
            with self.file.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            self.file = None  # the page misses this run; the run itself goes on

    def scenario_started(self, scenario: Scenario, lab: str) -> None:
        self.run, self.file = f"{lab}-{time.time():.3f}", path(lab)
        self._write("started", scenario=scenario.name, file=str(scenario.source), goal=scenario.goal, lab=lab,
                    steps=[{"number": s.number, "title": s.title, "kind": s.kind} for s in scenario.steps])
        self.inner.scenario_started(scenario, lab)

    def lab_ready(self, seconds: float) -> None:
        self.inner.lab_ready(seconds)

    def step_started(self, step: Step) -> None:
        self._write("step", number=step.number, status="running")
        self.inner.step_started(step)

    def step_finished(self, step: Step, result: StepResult) -> None:
        self._write("step", number=step.number, status=result.status, seconds=round(result.seconds, 3),
                    detail=result.detail, expected=result.expected, seen=result.seen)
        self.inner.step_finished(step, result)

    def scenario_finished(self, result: ScenarioResult) -> None:
        self._write("finished", status=result.status, message=result.message, seconds=round(result.seconds, 3))
        self.inner.scenario_finished(result)

    def task_given(self, step: Step, task: Task, lab: str) -> None:
        self._write("note", number=step.number, text=f"Your task: {task.text}")
        self.inner.task_given(step, task, lab)

    def hint(self, text: str) -> None:
        self._write("note", text=f"Hint: {text}")
        self.inner.hint(text)


class RunReader:
    """The lines appended to a lab's run file since the last :meth:`read`."""

    def __init__(self, lab: str) -> None:
        self.file = path(lab)
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.file.open("rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:
                    self.offset, self.partial = 0, b""  # the file was removed and begun again
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        out = []
        for line in lines:
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # not a line a run wrote
            if isinstance(value, dict) and isinstance(value.get("run"), str):
                out.append(value)
        return out


def fold(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``GET /api/runs``: the latest runs first, each ``{"run", "scenario", "file", "goal", "lab",
    "started", "status" (running, passed, failed, error), "message", "seconds", "notes",
    "steps": [{"number", "title", "kind", "status" (pending, running, passed, failed, error,
    skipped), "seconds", "detail", "expected", "seen"}]}``."""
    runs: dict[str, dict[str, Any]] = {}
    for line in lines:
        run = line["run"]
        if line.get("event") == "started":
            runs[run] = {"run": run, "scenario": line.get("scenario"), "file": line.get("file"),
                         "goal": line.get("goal"), "lab": line.get("lab"), "started": line.get("time"),
                         "status": "running", "message": "", "seconds": None, "notes": [],
                         "steps": [{**s, "status": "pending"} for s in line.get("steps", [])]}
            continue
        state = runs.get(run)
        if state is None:
            continue  # its start is not in the file (written before the file was begun again)
        if line.get("event") == "step":
            for step in state["steps"]:
                if step["number"] == line.get("number"):
                    step.update({k: v for k, v in line.items() if k not in ("event", "run", "number", "time")})
        elif line.get("event") == "finished":
            state.update(status=line.get("status"), message=line.get("message", ""), seconds=line.get("seconds"))
        elif line.get("event") == "note":
            state["notes"].append(line.get("text", ""))
    return sorted(runs.values(), key=lambda r: r["started"] or 0, reverse=True)[:KEPT_RUNS]
