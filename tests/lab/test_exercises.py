"""Exercises on the real engine: `labctl run --keep` gives the task, the test plays the student on a
lab host (nc -C typed line by line, dig), and the lab grades it; `labctl check` grades a lab that
is up, after the fact.

Each exercise brings up its own lab. A wrong answer is given a short time limit (a copy of the
exercise), so a failure comes in seconds, not the shipped ten minutes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from labctl.backend.docker_engine import DockerEngine
from tests.lab.conftest import labctl
from tests.lab.test_scenarios import leftovers
from tests.lab.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = ROOT / "exercises"


class Exercise:
    """`labctl run --keep --json FILE` in the background, its progress read as it comes."""

    def __init__(self, path: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "labctl", "run", "--json", "--keep", *args, str(path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "COLUMNS": "200"})
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        pipe = self.proc.stderr
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(pipe.readline, "")), daemon=True)
        self.reader.start()
        self.lab = ""

    def task_given(self) -> str:
        """The lab's name, once the runner has shown the task and how to get in."""
        def given() -> str | None:
            return next((m[1] for line in list(self.lines) if (m := re.search(r"labctl shell HOST --lab (\S+)", line))),
                        None)
        try:
            self.lab = eventually(given, 180, "the task shown with the lab to get into")
        except AssertionError as exc:
            self.proc.kill()
            raise AssertionError(f"{exc}\n{''.join(self.lines)[-3000:]}") from None
        assert any(line.startswith("Your task: ") for line in self.lines), self.lines
        return self.lab

    def student(self, host: str, script: str) -> str:
        """A shell command typed on a lab host, as the student would."""
        return labctl("exec", "--lab", self.lab, host, "--", "sh", "-c", script).stdout

    def result(self, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
        stdout, _ = self.proc.communicate(timeout=timeout)
        self.reader.join(timeout=10)
        (result,) = json.loads(stdout)
        self.lab = self.lab or result["lab"]
        return self.proc.returncode, result, "".join(self.lines)

    def down(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.lab:
            labctl("down", "--lab", self.lab, check=False)


def typed(*lines: str, first: float = 1.0, between: float = 0.4) -> str:
    """Lines for `nc -C`, each after a pause, as a person types them after reading the reply."""
    pauses = "; ".join(f"sleep {between}; printf '%s\\n' '{line}'" for line in lines)
    return f"(sleep {first}; {pauses}; sleep 1)"


def smtp_by_hand(subject: str) -> str:
    return typed("HELO andy.ouhk.example", "MAIL FROM:<andy@ouhk.example>", "RCPT TO:<betty@stevenchoy.example>",
                 "DATA", f"Subject: {subject}", "", "Typed by hand.", ".", "QUIT") \
        + " | nc -C -q 2 smtp.ouhk.example 25"


def pop3_by_hand(*commands: str) -> str:
    return typed("USER betty", "PASS betty-secret", "LIST", *commands, "QUIT") \
        + " | nc -C -q 2 mail.stevenchoy.example 110"


def shortened(path: Path, folder: Path, seconds: int) -> Path:
    """A copy of the exercise whose task has ``seconds`` to be done."""
    copy = folder / path.name
    text = path.read_text()
    assert "time_limit: 600" in text
    copy.write_text(text.replace("time_limit: 600", f"time_limit: {seconds}"))
    return copy


def check(lab: str, path: Path, junit: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = labctl("check", "--lab", lab, "--json", "--junit", str(junit), str(path), check=False)
    (result,) = json.loads(proc.stdout)
    return proc, result


def test_activity_1_typed_by_hand_passes_and_check_grades_the_lab_after(client: DockerEngine, image: str,
                                                                        tmp_path: Path) -> None:
    path = EXERCISES / "activity-1-by-hand.yml"
    ex = Exercise(path, "--report", str(tmp_path / "report"))
    try:
        ex.task_given()
        ex.student("andy", smtp_by_hand("Lab 3"))
        code, result, stderr = ex.result()
        assert code == 0 and result["status"] == "passed", f"{result['message']}\n{stderr[-3000:]}"
        assert [s["status"] for s in result["steps"]] == ["passed"] * 3
        # The message the student typed is traced in the report (it carries the awaited subject).
        trace = (tmp_path / "report" / "activity-1-by-hand" / "trace.txt").read_text()
        assert '"Lab 3"' in trace.splitlines()[0] and "submission" in trace, trace
        assert result["kept"] and leftovers(client, ex.lab)

        junit = tmp_path / "junit.xml"
        proc, graded = check(ex.lab, path, junit)
        assert proc.returncode == 0, proc.stderr
        assert [s["status"] for s in graded["steps"]] == ["skipped", "passed", "passed"]
        assert graded["steps"][0]["detail"] == "not run by labctl check: an action"
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite is not None and suite.get("name") == "activity-1-by-hand" and suite.get("failures") == "0"
        assert leftovers(client, ex.lab)  # check leaves the student's lab as it was
    finally:
        ex.down()


def test_activity_1_with_the_wrong_subject_fails_saying_what_was_seen(client: DockerEngine, image: str,
                                                                      tmp_path: Path) -> None:
    path = shortened(EXERCISES / "activity-1-by-hand.yml", tmp_path, 20)
    ex = Exercise(path)
    try:
        ex.task_given()
        ex.student("andy", smtp_by_hand("Lab 4"))
        code, result, stderr = ex.result()
        assert code == 1 and result["status"] == "failed", stderr
        step = result["steps"][1]
        assert step["expected"] == ("at least 1 message(s) with 'Lab 3' delivered to betty@stevenchoy.example "
                                    "within the task's time limit (20 s)")
        assert step["seen"] == "betty@stevenchoy.example's mailbox holds 1 message(s): 'Lab 4'"

        junit = tmp_path / "junit.xml"
        proc, graded = check(ex.lab, path, junit)
        assert proc.returncode == 1 and graded["status"] == "failed"
        # Graded as it is: a wait looks once, and every check is reported.
        wanted = "at least 1 message(s) with 'Lab 3' delivered to betty@stevenchoy.example"
        assert graded["steps"][1]["expected"] == wanted
        assert graded["steps"][2]["status"] == "failed"
        failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
        assert failure is not None and "'Lab 4'" in (failure.get("message") or "")
    finally:
        ex.down()


def test_activity_2_reading_and_deleting_one_message_passes(client: DockerEngine, image: str) -> None:
    ex = Exercise(EXERCISES / "activity-2-by-hand.yml")
    try:
        ex.task_given()
        ex.student("betty", pop3_by_hand("RETR 1", "DELE 1"))
        code, result, stderr = ex.result()
        assert code == 0, f"{result['message']}\n{stderr[-3000:]}"
        assert result["steps"][4]["detail"].endswith("betty's POP3 session ended: RETR 1, DELE 1"), result["steps"]
    finally:
        ex.down()


def test_activity_2_deleting_both_messages_fails(client: DockerEngine, image: str, tmp_path: Path) -> None:
    ex = Exercise(shortened(EXERCISES / "activity-2-by-hand.yml", tmp_path, 15))
    try:
        ex.task_given()
        ex.student("betty", pop3_by_hand("RETR 1", "DELE 1", "DELE 2"))
        code, result, stderr = ex.result()
        assert code == 1 and result["status"] == "failed", stderr
        step = result["steps"][4]
        assert step["status"] == "failed" and "ended: RETR 1, DELE 1, 2" in step["seen"], step
    finally:
        ex.down()


def test_which_mx_is_answered_from_a_lookup_and_a_written_answer(client: DockerEngine, image: str) -> None:
    ex = Exercise(EXERCISES / "which-mx.yml")
    try:
        ex.task_given()
        listing = ex.student("andy", "dig +short MX stevenchoy.example")
        assert "20 mx2.stevenchoy.example." in listing
        ex.student("andy", "echo '10 mail.stevenchoy.example.' > ~/answer.txt")
        code, result, stderr = ex.result()
        assert code == 0, f"{result['message']}\n{stderr[-3000:]}"
        assert result["steps"][1]["detail"].endswith("andy asked MX? stevenchoy.example")
    finally:
        ex.down()


def test_a_time_limit_that_runs_out_fails_and_ctrl_c_gives_up(client: DockerEngine, image: str,
                                                              tmp_path: Path) -> None:
    ex = Exercise(shortened(EXERCISES / "which-mx.yml", tmp_path, 3))
    try:
        ex.task_given()
        code, result, stderr = ex.result()
        assert code == 1 and result["status"] == "failed", stderr
        step = result["steps"][1]
        assert step["expected"] == "andy to query the MX of stevenchoy.example within the task's time limit (3 s)"
        assert step["seen"].startswith("its DNS queries: ")
    finally:
        ex.down()
    ex = Exercise(EXERCISES / "activity-1-by-hand.yml")
    try:
        ex.task_given()
        assert ex.proc.poll() is None
        ex.proc.send_signal(signal.SIGINT)
        code, result, stderr = ex.result()
        assert code == 1 and result["status"] == "failed", stderr
        seen = result["steps"][1]["seen"]
        # What the last look saw, or that the signal came before the first look ended.
        assert seen.startswith("given up (Ctrl-C) after ") and seen.endswith(
            ("betty@stevenchoy.example's mailbox holds no messages", "nothing checked yet")), seen
    finally:
        ex.down()
