"""`labctl run --junit`: valid JUnit XML with what the schema requires, read back with xml.etree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from labctl.scenario import junit
from labctl.scenario.runner import ERROR, FAILED, PASSED, SKIPPED, ScenarioResult, StepResult

# The strict JUnit schema (Ant/Jenkins JUnit.xsd): required attributes of each element.
REQUIRED = {
    "testsuite": {"name", "package", "id", "tests", "failures", "errors", "time", "timestamp", "hostname"},
    "testcase": {"name", "classname", "time"},
    "failure": {"type"},
    "error": {"type"},
    "property": {"name", "value"},
}
SUITE_CHILDREN = ["properties", "testcase", "system-out", "system-err"]  # the schema's sequence


def result(name: str, file: str, status: str, message: str = "") -> ScenarioResult:
    steps = [StepResult(1, "send", "andy sends 'x' <to> betty & co", 4, PASSED, 0.5, detail="250 2.0.0 ok",
                        transcript=["C: MAIL FROM:<andy@ouhk.example>", "S: 250 2.1.0 Sender ok"])]
    if status != PASSED:
        steps.append(StepResult(2, "wait", "wait until delivered", 9, status, 30.0,
                                expected="1 message delivered to betty", seen="an empty mailbox"))
        steps.append(StepResult(3, "expect", "expect mailbox", 12, SKIPPED))
    return ScenarioResult(name, file, f"sc-{name}", status, 31.25, 1.7e9, message, steps)


def write(tmp_path: Path, results: list[ScenarioResult]) -> ET.Element:
    path = tmp_path / "out" / "junit.xml"
    junit.write(results, path)
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    return ET.parse(path).getroot()


def test_one_suite_per_file_one_case_per_scenario_with_the_required_attributes(tmp_path: Path) -> None:
    root = write(tmp_path, [
        result("journey", "scenarios/journey.yml", PASSED),
        result("mx down", "scenarios/mx-down.yml", FAILED,
               "step 2 (mx-down.yml:9) wait until delivered: expected 1 message delivered to betty; saw an empty "
               "mailbox\nmore detail"),
        result("broken", "scenarios/broken.yml", ERROR, "the lab could not be used: <no engine> & \"quotes\""),
    ])
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["journey", "mx-down", "broken"]
    for suite in suites:
        for element in suite.iter():
            missing = REQUIRED.get(element.tag, set()) - set(element.attrib)
            assert not missing, f"<{element.tag}> lacks {missing}"
        order = [child.tag for child in suite]
        assert order == sorted(order, key=SUITE_CHILDREN.index), order
        assert suite.get("tests") == str(len(suite.findall("testcase")))
        float(suite.get("time", "x"))
        assert suite.get("timestamp", "").startswith("20")
    ok, failed, broken = (s.find("testcase") for s in suites)
    assert ok is not None and failed is not None and broken is not None
    assert ok.find("failure") is None and ok.find("error") is None
    failure = failed.find("failure")
    assert failure is not None and failure.get("type") == "ScenarioFailed"
    assert failure.get("message") == ("step 2 (mx-down.yml:9) wait until delivered: expected 1 message delivered "
                                      "to betty; saw an empty mailbox")
    assert failure.text is not None and failure.text.endswith("more detail")
    error = broken.find("error")
    assert error is not None and error.get("message") == 'the lab could not be used: <no engine> & "quotes"'
    log = suites[1].findtext("system-out") or ""
    assert "[failed] step 2 (line 9) wait until delivered (30.0 s)" in log
    assert "expected: 1 message delivered to betty" in log and "[skipped] step 3" in log
    assert "| C: MAIL FROM:<andy@ouhk.example>" in (suites[0].findtext("system-out") or "")
    props = {p.get("name"): p.get("value") for p in suites[1].iter("property")}
    assert props["file"] == "scenarios/mx-down.yml" and props["mx down: lab"] == "sc-mx down"


def test_an_empty_run_is_still_a_document(tmp_path: Path) -> None:
    root = write(tmp_path, [])
    assert root.tag == "testsuites" and root.get("tests") == "0" and not root.findall("testsuite")


def test_one_scenario_in_many_labs_is_a_case_per_lab(tmp_path: Path) -> None:
    from dataclasses import replace

    one = result("Activity 1", "scenarios/a1.yml", PASSED)
    root = write(tmp_path, [replace(one, lab="student-01"), replace(one, lab="student-02", status=FAILED,
                                                                     message="step 3 failed")])
    [suite] = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["Activity 1 [student-01]", "Activity 1 [student-02]"]
    assert cases[1].find("failure") is not None and cases[0].find("failure") is None
    labs = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert labs["Activity 1 [student-02]: lab"] == "student-02"
