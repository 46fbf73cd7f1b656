"""JUnit XML for grading systems and CI: one ``<testsuite>`` per scenario file, one ``<testcase>`` per scenario.

The shape is the one CI systems and graders read (Jenkins' JUnit schema, which GitLab and GitHub
actions follow; under ``<testsuites>`` also the stricter Ant JUnit.xsd): ``<testsuite name package
id tests failures errors skipped time timestamp hostname>`` holding ``<properties>``, then
``<testcase name classname time>`` (a failed scenario carries ``<failure message type>``: the step,
what was expected, what was seen; a broken run ``<error>``), then ``<system-out>`` (the step log)
and ``<system-err>``, in the order the strict schema wants.
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from labctl.scenario.runner import ERROR, FAILED, ScenarioResult, report_names

MESSAGE_LIMIT = 1000  # characters of the failure message attribute; the full text is the element's body


def step_log(result: ScenarioResult) -> str:
    lines = []
    for s in result.steps:
        where = f" (line {s.line})" if s.line else ""
        lines.append(f"[{s.status}] step {s.number}{where} {s.title} ({s.seconds:.1f} s)")
        if s.detail:
            lines.append(f"    {s.detail}")
        if s.status in (FAILED, ERROR):
            lines.append(f"    expected: {s.expected}")
            lines.append(f"    seen:     {s.seen}")
        lines.extend(f"    | {t}" for t in s.transcript)
    return "\n".join(lines) + "\n"


def document(results: Sequence[ScenarioResult]) -> ET.Element:
    root = ET.Element("testsuites", {
        "name": "maillab scenarios",
        "tests": str(len(results)),
        "failures": str(sum(r.status == FAILED for r in results)),
        "errors": str(sum(r.status == ERROR for r in results)),
        "time": f"{sum(r.seconds for r in results):.3f}",
    })
    by_file: dict[str, list[ScenarioResult]] = {}
    for r in results:
        by_file.setdefault(r.file, []).append(r)
    host = socket.gethostname()
    # Two files of one name in different folders are two suites (alice-answer, bob-answer).
    names = report_names([Path(f) for f in by_file])
    for number, (file, group) in enumerate(by_file.items()):
        suite = ET.SubElement(root, "testsuite", {
            "name": names[Path(file)],
            "package": "scenarios",
            "id": str(number),
            "tests": str(len(group)),
            "failures": str(sum(r.status == FAILED for r in group)),
            "errors": str(sum(r.status == ERROR for r in group)),
            "skipped": "0",
            "time": f"{sum(r.seconds for r in group):.3f}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(r.started for r in group))),
            "hostname": host,
        })
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", {"name": "file", "value": file})
        # `run --labs` runs one scenario in many labs: each is its own test case, named by its lab.
        repeated = {r.name for r in group if sum(o.name == r.name for o in group) > 1}
        case_names = [f"{r.name} [{r.lab}]" if r.name in repeated else r.name for r in group]
        for r, case_name in zip(group, case_names, strict=True):
            ET.SubElement(properties, "property", {"name": f"{case_name}: lab", "value": r.lab})
            if r.report:
                ET.SubElement(properties, "property", {"name": f"{case_name}: report", "value": r.report})
        for r, case_name in zip(group, case_names, strict=True):
            case = ET.SubElement(suite, "testcase", {
                "name": case_name, "classname": f"scenarios.{names[Path(file)]}", "time": f"{r.seconds:.3f}",
            })
            if r.status in (FAILED, ERROR):
                tag = "failure" if r.status == FAILED else "error"
                node = ET.SubElement(case, tag, {
                    "message": r.message.splitlines()[0][:MESSAGE_LIMIT] if r.message else r.status,
                    "type": "ScenarioFailed" if r.status == FAILED else "ScenarioError",
                })
                node.text = r.message
        # The strict JUnit schema has the output per suite: here, one step log per scenario.
        ET.SubElement(suite, "system-out").text = "".join(f"== {r.name}\n{step_log(r)}" for r in group)
        ET.SubElement(suite, "system-err").text = "".join(r.message + "\n" for r in group if r.status == ERROR)
    return root


def write(results: Sequence[ScenarioResult], path: Path) -> None:
    tree = ET.ElementTree(document(results))
    ET.indent(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="utf-8", xml_declaration=True)
