"""Injected replies: the rules alone (counting, time windows, patterns), then in the session core."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.smtp.replyfaults import (
    FaultFileError,
    ReplyFaultFile,
    ReplyFaults,
    ReplyRule,
    parse_rules,
    render_rules,
    rule_problem,
)
from services.smtp.session import ServerSession, State
from services.smtp.wire import Reply
from tests.unit.test_smtp_session import ANDY, BETTY, Checks, say

GREYLIST = ReplyRule("g1", "rcpt", 450, "4.7.1", "Greylisted, try again later", times=1)


def test_greylisting_answers_the_first_try_only() -> None:
    faults = ReplyFaults()
    faults.load([GREYLIST], now=0.0)
    assert faults.answer("rcpt", 1.0, sender=ANDY, recipients=[BETTY]) == (GREYLIST, GREYLIST.reply)
    assert faults.answer("rcpt", 2.0, sender=ANDY, recipients=[BETTY]) is None
    assert faults.answer("mail", 2.0, sender=ANDY) is None  # another stage is never touched


def test_a_reload_keeps_the_count_of_a_rule_it_still_holds() -> None:
    faults = ReplyFaults()
    rule = ReplyRule("t3", "mail", 550, "5.7.1", "No", times=3)
    faults.load([rule], now=0.0)
    faults.answer("mail", 0.0, sender=ANDY)
    faults.load([rule, GREYLIST], now=5.0)
    assert faults.used(rule) == 1
    assert [faults.answer("mail", 6.0, sender=ANDY) is not None for _ in range(3)] == [True, True, False]
    faults.load([], now=7.0)
    faults.load([rule], now=8.0)  # a rule cleared and written again starts afresh
    assert faults.used(rule) == 0


def test_a_time_window_starts_when_the_rule_is_loaded() -> None:
    faults = ReplyFaults()
    rule = ReplyRule("w", "connect", 421, "4.3.2", "Busy", seconds=30)
    faults.load([rule], now=100.0)
    assert faults.answer("connect", 129.9) is not None
    assert faults.answer("connect", 130.0) is None


def test_patterns_pick_the_sender_or_recipient() -> None:
    faults = ReplyFaults()
    rule = ReplyRule("p", "rcpt", 450, "4.7.1", "Later", recipient="BETTY@*", sender="*@ouhk.example")
    faults.load([rule], now=0.0)
    assert faults.answer("rcpt", 0.0, sender=ANDY, recipients=["carol@stevenchoy.example"]) is None
    assert faults.answer("rcpt", 0.0, sender="x@other.example", recipients=[BETTY]) is None
    assert faults.answer("rcpt", 0.0, sender=ANDY, recipients=[BETTY]) is not None


@pytest.mark.parametrize(("args", "problem"), [
    (("ehlo", 450, ""), "stage 'ehlo' is not one of"),
    (("rcpt", 250, ""), "not a failure"),
    (("connect", 450, ""), "421 (and closes) or 554"),
    (("rcpt", 450, "5.7.1"), "of the reply's class"),
    (("helo", 550, "5.7.1"), None),
])
def test_rule_problems_are_said_for_the_teacher(args: tuple[str, int, str], problem: str | None) -> None:
    said = rule_problem(*args)
    assert said is None if problem is None else said is not None and problem in said[1]
    assert rule_problem("mail", 550, "", recipient="b*") == (
        "recipient", "a recipient pattern cannot apply at mail (known there: sender)")
    assert rule_problem("mail", 550, "", times=1, seconds=2) == ("times", "give times or seconds, not both")


def test_the_file_round_trips_and_a_bad_one_is_refused() -> None:
    assert parse_rules(render_rules([GREYLIST])) == (GREYLIST,)
    assert parse_rules(b"") == ()
    with pytest.raises(FaultFileError, match="rule x: code 200"):
        parse_rules(json.dumps({"rules": [{"id": "x", "stage": "rcpt", "code": 200}]}).encode())
    with pytest.raises(FaultFileError, match="not a rules file"):
        parse_rules(b"[1, 2")


def test_the_file_is_reread_when_it_changes_and_a_bad_one_keeps_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    now = [0.0]
    faults = ReplyFaultFile(path, clock=lambda: now[0])
    assert faults.answer("rcpt", recipients=[BETTY]) is None  # no file: no faults
    path.write_bytes(render_rules([ReplyRule("a", "rcpt", 450, "4.7.1", "Later", times=2)]))
    assert faults.answer("rcpt", recipients=[BETTY]) == Reply(450, "4.7.1", "Later")
    path.write_bytes(b"{garbage")
    assert faults.answer("rcpt", recipients=[BETTY]) == Reply(450, "4.7.1", "Later")  # second try of two
    assert faults.answer("rcpt", recipients=[BETTY]) is None
    path.unlink()
    faults.reload()
    assert faults.answer("rcpt", recipients=[BETTY]) is None


# -- in the session ---------------------------------------------------------------------------


class Fixed:
    """A consult that injects ``reply`` at ``stage``, and records what it was asked."""

    def __init__(self, stage: str, reply: Reply) -> None:
        self.stage, self.reply = stage, reply
        self.asked: list[tuple[str, str | None, tuple[str, ...]]] = []

    def answer(self, stage: str, *, sender: str | None = None, recipients: Sequence[str] = ()) -> Reply | None:
        self.asked.append((stage, sender, tuple(recipients)))
        return self.reply if stage == self.stage else None


def faulty(stage: str, reply: Reply) -> tuple[ServerSession, Fixed]:
    consult = Fixed(stage, reply)
    s = ServerSession("mail.stevenchoy.example", Checks(), size_limit=2048, faults=consult)
    return s, consult


def test_rcpt_fault_replaces_the_yes_and_adds_no_recipient() -> None:
    s, consult = faulty("rcpt", GREYLIST.reply)
    assert s.connect() is None
    say(s, "MAIL FROM:<andy@ouhk.example>")
    assert say(s, "RCPT TO:<betty@stevenchoy.example>") == "450 4.7.1 Greylisted, try again later"
    assert (s.state, s.recipients) == (State.MAIL, [])
    assert ("rcpt", ANDY, (BETTY,)) in consult.asked
    # A real refusal stays: the fault is asked only where the server would say yes.
    assert say(s, "RCPT TO:<nobody@stevenchoy.example>").startswith("550 5.1.1")
    assert ("rcpt", ANDY, ("nobody@stevenchoy.example",)) not in consult.asked


def test_554_at_connect_leaves_only_quit() -> None:
    s, _ = faulty("connect", Reply(554, "5.3.2", "No service"))
    assert s.connect() == Reply(554, "5.3.2", "No service")
    assert say(s, "EHLO client.example") == "503 5.5.1 No SMTP service here; send QUIT"
    assert say(s, "MAIL FROM:<andy@ouhk.example>") == "503 5.5.1 No SMTP service here; send QUIT"
    assert say(s, "QUIT") == "221 2.0.0 Bye"


def test_421_at_connect_closes() -> None:
    s, _ = faulty("connect", Reply(421, "4.3.2", "Busy"))
    reply = s.connect()
    assert reply is not None and s.replied(reply.code) is None
    assert s.closed


@pytest.mark.parametrize(("stage", "line", "state"), [
    ("helo", "EHLO client.example", State.CONNECTED),
    ("mail", "MAIL FROM:<andy@ouhk.example>", State.CONNECTED),
])
def test_helo_and_mail_faults_leave_the_state_as_it_was(stage: str, line: str, state: State) -> None:
    s, _ = faulty(stage, Reply(550, "5.7.1", "Go away"))
    assert say(s, line) == "550 5.7.1 Go away"
    assert (s.state, s.helo, s.sender) == (state, None, None)


def test_data_and_dot_faults() -> None:
    s, _ = faulty("data", Reply(452, "4.3.1", "Full"))
    say(s, "MAIL FROM:<andy@ouhk.example>")
    say(s, "RCPT TO:<betty@stevenchoy.example>")
    assert say(s, "DATA") == "452 4.3.1 Full"
    assert s.state is State.RCPT
    s, consult = faulty("dot", Reply(554, "5.6.0", "Content refused"))
    assert s.end_of_data(ANDY, [BETTY]) == Reply(554, "5.6.0", "Content refused")
    assert consult.asked == [("dot", ANDY, (BETTY,))]
