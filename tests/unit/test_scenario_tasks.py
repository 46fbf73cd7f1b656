"""Exercises: the task step, waiting while the student works, grading a lab as it is (`labctl check`),
the checks the exercises need, distinct report names, and the messages a YAML slip gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from labctl.lab import Lab
from labctl.scenario import judge, parse, runner, steps
from labctl.scenario import model as m
from labctl.scenario.context import Context, StepFailed, TaskWindow
from labctl.scenario.facts import check_fact
from labctl.scenario.junit import document
from labctl.scenario.runner import ScenarioResult, report_names, traced_subjects
from labctl.topology import load as load_topology
from labctl.traffic.decode import TrafficDecoder
from labctl.traffic.model import Conversation
from tests.unit.packets import BETTY, MAIL, NAMES, Tcp, pcap
from tests.unit.test_scenario_parse import HEAD, error_of, load

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = sorted((ROOT / "exercises").glob("*.yml"))


# -- the files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_every_shipped_exercise_parses_and_has_a_task_with_checks_after_it(path: Path) -> None:
    sc = parse.load(path)
    kinds = [s.kind for s in sc.steps]
    assert "task" in kinds and len(sc.description) > 100
    after = kinds[kinds.index("task") + 1:]
    assert after and set(after) <= {"wait", "expect"}


def test_there_are_the_exercises_of_the_issues() -> None:
    assert {p.stem for p in EXERCISES} == {"activity-1-by-hand", "activity-2-by-hand", "activity-3-by-hand",
                                           "which-mx"}


def test_a_task_has_a_text_an_optional_hint_and_a_time_limit() -> None:
    sc = load(HEAD + "steps:\n  - task: {text: \"Send betty a message\\nby hand\", hint: Use telnet}\n")
    (step,) = sc.steps
    assert step.action == m.Task("Send betty a message\nby hand", "Use telnet", parse.DEFAULT_TIME_LIMIT)
    assert step.title == "your task: Send betty a message"
    sc = load(HEAD + "steps:\n  - task: {text: Go, time_limit: 90}\n")
    assert sc.steps[0].action == m.Task("Go", "", 90.0)


@pytest.mark.parametrize(("text", "line", "message"), [
    (HEAD + "steps:\n  - task: {hint: h}\n", 5, "task needs 'text'"),
    (HEAD + "steps:\n  - task: {text: t, time_limit: 0}\n", 5, "time_limit must be more than 0 and at most 10800"),
    (HEAD + "steps:\n  - task: {text: t, limit: 5}\n", 5, "unknown key 'limit' in task; valid keys: text, hint, "
                                                       "time_limit"),
    (HEAD + "steps:\n  - expect:\n      file: {host: andy, path: answer.txt}\n", 6,
     "path 'answer.txt' must be absolute (/root/answer.txt) or in the home directory (~/answer.txt)"),
    (HEAD + "steps:\n  - expect:\n      traffic:\n        - pop3_session: {user: nobody@x.example}\n", 7,
     "'nobody@x.example' is not an account of this lab"),
    (HEAD + "steps:\n  - expect:\n      traffic:\n        - pop3_session: {user: betty, dele: -1}\n", 7,
     "dele must be a whole number of at least 0"),
])
def test_task_and_check_errors_have_their_line(text: str, line: int, message: str) -> None:
    err = error_of(text)
    assert message in err.message and err.line == line, str(err)


def test_the_checks_of_an_exercise_read_as_the_model_says() -> None:
    sc = load(HEAD + """steps:
  - task: {text: Delete one message}
  - expect:
      traffic:
        - pop3_session: {user: betty, retr: 1, dele: 1}
      file: {host: andy, path: ~/answer.txt, match: '^10 mail'}
""")
    expect = sc.steps[1].action
    assert isinstance(expect, m.Expect)
    traffic, answer = expect.checks
    assert traffic == m.TrafficExpect((m.Pop3Session("betty", 1, 1),))
    assert isinstance(answer, m.FileExpect) and answer.host == "andy" and answer.path == "~/answer.txt"


# -- YAML slips: say it is the indentation, and where ---------------------------------------------


def test_keys_beside_send_instead_of_under_it_are_an_indentation_slip() -> None:
    err = error_of(HEAD + "steps:\n  - send:\n    from: andy\n    to: betty\n    subject: Hi\n")
    assert err.line == 6
    assert err.message.startswith("'from' is a key of 'send' but stands beside it, not under it: probably wrong "
                                  "indentation; indent the lines of 'send''s keys further than 'send:'"), err.message


def test_a_misindented_key_says_indentation_with_the_line_and_columns() -> None:
    err = error_of(HEAD + "steps:\n  - send:\n      from: andy\n     to: betty\n")
    assert err.line == 7
    assert "expected <block end>" in err.message
    assert "probably wrong indentation: this line starts in column 6, but the block it belongs to (line 5) has " \
           "its entries in column 5" in err.message, err.message


def test_a_key_indented_under_a_key_with_a_value_says_indentation() -> None:
    err = error_of(HEAD + "steps:\n  - send:\n      from: andy\n        to: betty\n")
    assert err.line == 7 and "probably wrong indentation: this key is indented further than the key above it" \
        in err.message, err.message


# -- waiting while the student works ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def context(clock: Clock, **kw: Any) -> Context:
    return Context(cast(Lab, None), load_topology(), clock=clock, sleep=clock.sleep, **kw)


def test_after_a_task_a_check_waits_until_the_time_limit_and_shows_the_hint_at_half_time() -> None:
    clock = Clock()
    hints: list[str] = []
    ctx = context(clock, show_hint=hints.append)
    ctx.task = TaskWindow(m.Task("Send it", "Use nc -C", 10.0), clock())

    def never() -> str:
        raise StepFailed("a message 'Lab 3' to betty", "betty's mailbox holds no messages")

    with pytest.raises(StepFailed) as info:
        steps.patiently(ctx, never, timeout=1.0)  # the task's 10 s, not the step's 1 s
    assert clock.now == pytest.approx(10.0)
    assert info.value.expected == "a message 'Lab 3' to betty within the task's time limit (10 s)"
    assert info.value.seen == "betty's mailbox holds no messages"
    assert hints == ["Use nc -C"]


def test_a_check_that_holds_while_the_student_works_passes_then() -> None:
    clock = Clock()
    ctx = context(clock)
    ctx.task = TaskWindow(m.Task("Send it"), clock())

    def after_three_seconds() -> str:
        if clock.now < 3:
            raise StepFailed("x", "not yet")
        return "there it is"

    assert steps.patiently(ctx, after_three_seconds, timeout=1.0) == "after 3.0 s: there it is"


def test_ctrl_c_during_a_task_fails_it_with_what_was_seen() -> None:
    clock = Clock()
    ctx = context(clock)
    ctx.task = TaskWindow(m.Task("Send it"), clock())
    looks = 0

    def look() -> str:
        nonlocal looks
        looks += 1
        if looks == 3:
            raise KeyboardInterrupt
        raise StepFailed("a message 'Lab 3'", "1 message(s): 'Lab 4'")

    with pytest.raises(StepFailed) as info:
        steps.patiently(ctx, look, timeout=1.0)
    assert info.value.seen == "given up (Ctrl-C) after 1 s: 1 message(s): 'Lab 4'"


def test_ctrl_c_outside_a_task_stays_an_interrupt() -> None:
    def look() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        steps.patiently(context(Clock()), look, timeout=1.0)


def test_under_check_a_wait_looks_once() -> None:
    clock = Clock()
    ctx = context(clock, patient=False)

    def never() -> str:
        raise StepFailed("a message 'Lab 3'", "no messages")

    with pytest.raises(StepFailed) as info:
        steps.patiently(ctx, never, timeout=30.0)
    assert clock.now == 0 and info.value.expected == "a message 'Lab 3'"


def test_check_grades_the_checks_after_a_task_not_the_setup_nor_the_actions() -> None:
    sc = load(HEAD + """steps:
  - send: {from: andy, to: betty, subject: one}
  - wait: {delivered: {to: betty}}
  - task: {text: Delete it}
  - wait: {delivered: {to: betty}}
  - expect: {queue: {empty: true}}
  - send: {from: andy, to: betty, subject: two}
  - expect: {queue: {empty: true}}
""")
    assert runner._graded(sc) == {4, 5}
    plain = load(HEAD + "steps:\n  - send: {from: andy, to: betty, subject: s}\n  - wait: {delivered: {to: betty}}\n")
    assert runner._graded(plain) == {2}


# -- what the exercises check -------------------------------------------------------------------


def pop3(*commands: tuple[bytes, bytes], close: bool = True) -> Conversation:
    t = Tcp(BETTY, 37762, MAIL, 110).handshake().s(b"+OK POP3 server ready\r\n")
    t.c(b"USER betty\r\n").s(b"+OK\r\n").c(b"PASS betty-secret\r\n").s(b"+OK\r\n")
    for command, answer in commands:
        t.c(command).s(answer)
    if close:
        t.c(b"QUIT\r\n").s(b"+OK Bye-bye\r\n").close()
    d = TrafficDecoder(NAMES)
    d.feed_capture(pcap(t.packets))
    if close:
        d.tcp.finish()
    [conv] = d.conversations()
    return conv


RETR = (b"RETR 1\r\n", b"+OK 20 octets\r\nSubject: x\r\n\r\nhi\r\n.\r\n")


def test_a_pop3_session_that_read_and_deleted_exactly_one_message() -> None:
    fact = m.Pop3Session("betty", 1, 1)
    conv = pop3(RETR, (b"DELE 1\r\n", b"+OK message 1 deleted\r\n"))
    assert check_fact(fact, [conv], {}) == "betty's POP3 session ended: RETR 1, DELE 1"


def test_a_pop3_session_that_deleted_two_says_so() -> None:
    conv = pop3(RETR, (b"DELE 1\r\n", b"+OK\r\n"), (b"DELE 2\r\n", b"+OK\r\n"), (b"DELE 9\r\n", b"-ERR no such\r\n"))
    with pytest.raises(StepFailed) as info:
        check_fact(m.Pop3Session("betty", 1, 1), [conv], {})
    assert info.value.expected == ("a finished POP3 session of betty that retrieved 1 message(s) and deleted "
                                   "1 message(s)")
    assert info.value.seen == "betty's POP3 sessions: ended: RETR 1, DELE 1, 2"


def test_a_pop3_session_still_open_is_not_finished_yet() -> None:
    conv = pop3(RETR, (b"DELE 1\r\n", b"+OK\r\n"), close=False)
    with pytest.raises(StepFailed) as info:
        check_fact(m.Pop3Session("betty", 1, 1), [conv], {})
    assert info.value.seen == "betty's POP3 sessions: still open: RETR 1, DELE 1"
    with pytest.raises(StepFailed, match="no POP3 session of andy"):
        check_fact(m.Pop3Session("andy", 1, 1), [conv], {})


def test_an_answer_file_is_judged_by_its_pattern() -> None:
    exp = m.FileExpect("andy", "~/answer.txt", parse.re.compile(r"\A\s*10\s+mail\.stevenchoy\.example\.?\s*\Z"))
    assert judge.host_file(exp, "10 mail.stevenchoy.example.\n").ok
    wrong = judge.host_file(exp, "20 mx2.stevenchoy.example.\n")
    assert not wrong.ok and wrong.seen == "~/answer.txt holds '20 mx2.stevenchoy.example.'"
    missing = judge.host_file(exp, None)
    assert not missing.ok and missing.seen == "no file ~/answer.txt on andy"


# -- reports: distinct names, every message traced ------------------------------------------------


def test_two_files_of_one_name_in_different_folders_get_distinct_report_names(tmp_path: Path) -> None:
    alice, bob, solo = tmp_path / "alice" / "answer.yml", tmp_path / "bob" / "answer.yml", tmp_path / "journey.yml"
    assert report_names([alice, bob, solo]) == {alice: "alice-answer", bob: "bob-answer", solo: "journey"}
    same = tmp_path / "x" / "a" / "t.yml", tmp_path / "y" / "a" / "t.yml"
    assert list(report_names(list(same)).values()) == ["x-a-t", "y-a-t"]
    # Folder names that join to the same text still get distinct names.
    clash = tmp_path / "a-b.yml", tmp_path / "a" / "b.yml"
    names = report_names(list(clash))
    assert len(set(names.values())) == 2


def test_two_files_of_one_name_are_two_junit_suites(tmp_path: Path) -> None:
    results = [ScenarioResult("Answer", str(tmp_path / who / "answer.yml"), f"sc-{who}") for who in ("alice", "bob")]
    suites = document(results).findall("testsuite")
    assert [s.get("name") for s in suites] == ["alice-answer", "bob-answer"]
    assert [s.find("testcase").get("classname") for s in suites] == [  # type: ignore[union-attr]
        "scenarios.alice-answer", "scenarios.bob-answer"]


def test_the_trace_covers_messages_typed_in_dialogues_and_the_ones_an_exercise_awaits() -> None:
    sc = parse.load(ROOT / "scenarios" / "activity-1-smtp-by-hand.yml")
    assert traced_subjects(sc) == ["Activity 1"]  # typed after DATA: the old report traced nothing
    exercise = parse.load(ROOT / "exercises" / "activity-1-by-hand.yml")
    assert traced_subjects(exercise) == ["Lab 3"]
