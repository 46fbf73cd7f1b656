"""Replies a teacher chose, answered instead of the server's own: greylisting, a full queue, a refusal.

A :class:`ReplyRule` says at which stage of the SMTP dialogue (:data:`STAGES`) a chosen reply
replaces the server's yes, for how long (``seconds`` from when the server loaded it) or for how
many tries (``times``: the first N commands or sessions that reach the stage and match), and
optionally only for a sender or recipient pattern (shell-style, ``betty@*``). :class:`ReplyFaults`
decides, with no I/O and the time passed in; the server session consults it (through
:class:`ReplyFaultFile`, which reads the rules from the file labctl writes) only where the server
would have said yes, so a fault never hides a real refusal.

Counting is exact under concurrent sessions: every session of a server lives on one event loop
thread, and :meth:`ReplyFaults.answer` counts and decides in one call that never yields.
A reloaded file keeps the count and the start of each rule it still holds (rules are known by id).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.errors import LocalError
from services.smtp.wire import Reply

if TYPE_CHECKING:  # labctl imports this module for STAGES: no event loop there, so no asyncio
    import asyncio

log = logging.getLogger("services.smtp.faults")

FAULTS_FILE = Path("/run/maillab/reply-faults.json")  # written by `labctl fault reply` (Lab.put_files)

# Where a rule answers: the greeting, HELO/EHLO, MAIL, RCPT, DATA (instead of 354), and the
# final dot (instead of the 250 that takes responsibility: the message is not kept).
STAGES = ("connect", "helo", "mail", "rcpt", "data", "dot")
# RFC 5321 §3.1: a server that will not talk opens with 421 (and closes) or 554 (and then answers
# 503 to everything but QUIT).
CONNECT_CODES = (421, 554)
# The envelope a pattern can be checked against, by stage: nothing is known at connect and HELO,
# only the sender at MAIL.
PATTERNS = {"connect": (), "helo": (), "mail": ("sender",), "rcpt": ("sender", "recipient"),
            "data": ("sender", "recipient"), "dot": ("sender", "recipient")}


class FaultFileError(LocalError):
    """The rules file cannot be used; the server keeps the rules it had."""


@dataclass(frozen=True)
class ReplyRule:
    id: str  # names the rule across reloads (its count and start are kept by id)
    stage: str
    code: int
    status: str
    text: str
    times: int | None = None  # the first N tries only
    seconds: float | None = None  # for this long after the server loaded it
    sender: str | None = None  # pattern of MAIL FROM's address
    recipient: str | None = None  # pattern of a RCPT TO address

    @property
    def reply(self) -> Reply:
        return Reply(self.code, self.status, self.text)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> ReplyRule:
        try:
            rule = cls(str(item["id"]), str(item["stage"]), int(item["code"]), str(item.get("status", "")),
                       str(item.get("text", "")), _opt(int, item.get("times")), _opt(float, item.get("seconds")),
                       _opt(str, item.get("sender")), _opt(str, item.get("recipient")))
        except (KeyError, TypeError, ValueError) as exc:
            raise FaultFileError(f"a rule without a valid {exc}: {dict(item)!r}") from exc
        problem = rule_problem(rule.stage, rule.code, rule.status, sender=rule.sender, recipient=rule.recipient,
                               times=rule.times, seconds=rule.seconds)
        if problem:
            raise FaultFileError(f"rule {rule.id}: {problem[1]}")
        return rule

    def describe(self) -> str:
        """One line for a log, a step's result and `labctl fault list`."""
        scope = "".join(f" {k} {v}" for k, v in (("from", self.sender), ("to", self.recipient)) if v)
        span = (f" for the first {self.times} tr{'y' if self.times == 1 else 'ies'}" if self.times is not None
                else f" for {self.seconds:g} s" if self.seconds is not None else " until cleared")
        return f"{self.stage}{scope}: {self.reply}{span}"


def _opt(kind: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else kind(value)


def default_status(code: int) -> str:
    """RFC 3463 §3.1: X.0.0 when nothing more specific is known."""
    return f"{code // 100}.0.0"


def default_text(code: int) -> str:
    return "Try again later" if code < 500 else "Refused"


def rule_problem(stage: str, code: int, status: str, *, sender: str | None = None, recipient: str | None = None,
                 times: int | None = None, seconds: float | None = None) -> tuple[str, str] | None:
    """What is wrong with a rule, said for the teacher who wrote it, and the field at fault
    (stage, code, status, sender, recipient, times, seconds); None if it can be used. labctl
    asks this before it writes a rule, so a bad one fails at its file:line."""
    if stage not in STAGES:
        return "stage", f"stage {stage!r} is not one of: {', '.join(STAGES)}"
    if not 400 <= code <= 599:
        return "code", f"code {code} is not a failure: give a 4xx (try again later) or a 5xx (refused) code"
    if stage == "connect" and code not in CONNECT_CODES:
        return "code", f"at connect a server answers 421 (and closes) or 554 (RFC 5321 §3.1), not {code}"
    if status:
        fields = status.split(".")
        if len(fields) != 3 or not all(f.isdigit() for f in fields) or fields[0] != str(code // 100):
            return "status", f"status {status!r} is not an RFC 3463 code of the reply's class, like {code // 100}.7.1"
    for name, value in (("sender", sender), ("recipient", recipient)):
        if value is not None and name not in PATTERNS[stage]:
            known = ", ".join(PATTERNS[stage]) or "none"
            return name, f"a {name} pattern cannot apply at {stage} (known there: {known})"
    if times is not None and seconds is not None:
        return "times", "give times or seconds, not both"
    if times is not None and times < 1:
        return "times", f"times must be at least 1, not {times}"
    if seconds is not None and seconds <= 0:
        return "seconds", f"seconds must be more than 0, not {seconds:g}"
    return None


def parse_rules(data: bytes) -> tuple[ReplyRule, ...]:
    """The rules of a file: ``{"rules": [...]}``."""
    try:
        doc = json.loads(data or b'{"rules": []}')
        items = doc["rules"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FaultFileError(f"not a rules file ({exc}); expected {{\"rules\": [...]}}") from exc
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise FaultFileError('"rules" must be a list of mappings')
    return tuple(ReplyRule.from_json(i) for i in items)


def render_rules(rules: Iterable[ReplyRule]) -> bytes:
    return (json.dumps({"rules": [r.to_json() for r in rules]}, indent=2) + "\n").encode()


def _matches(pattern: str | None, addresses: Sequence[str]) -> bool:
    return pattern is None or any(fnmatch.fnmatchcase(a.lower(), pattern.lower()) for a in addresses)


class ReplyFaults:
    """The rules in force, and how often each has answered: pure, with the time passed in."""

    def __init__(self) -> None:
        self.rules: tuple[ReplyRule, ...] = ()
        self._used: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def load(self, rules: Sequence[ReplyRule], now: float) -> None:
        """Put ``rules`` in force; a rule already known keeps its count and its start."""
        ids = {r.id for r in rules}
        self._used = {i: n for i, n in self._used.items() if i in ids}
        self._since = {i: self._since.get(i, now) for i in ids}
        self.rules = tuple(rules)

    def used(self, rule: ReplyRule) -> int:
        return self._used.get(rule.id, 0)

    def answer(self, stage: str, now: float, *, sender: str | None = None,
               recipients: Sequence[str] = ()) -> tuple[ReplyRule, Reply] | None:
        """The first rule in force for this try at ``stage``, counted, and its reply; None: the
        server answers as it would. A rule spent (its tries used, its time up) answers no more."""
        for rule in self.rules:
            if rule.stage != stage:
                continue
            if rule.seconds is not None and now - self._since.get(rule.id, now) >= rule.seconds:
                continue
            if rule.times is not None and self.used(rule) >= rule.times:
                continue
            if not (_matches(rule.sender, [sender] if sender is not None else [])
                    and _matches(rule.recipient, recipients)):
                continue
            self._used[rule.id] = self.used(rule) + 1
            return rule, rule.reply
        return None


class ReplyFaultFile:
    """:class:`ReplyFaults` loaded from a file: reread when it changes (checked at each try, so a
    rule edited by hand inside the host counts too) or at :meth:`reload` (SIGHUP from labctl, so
    a ``seconds`` window starts when the rule was written). A bad file keeps the rules in force."""

    def __init__(self, path: Path = FAULTS_FILE, *, clock: Callable[[], float]) -> None:
        self.path = path
        self._clock = clock
        self._faults = ReplyFaults()
        self._seen: tuple[int, int, int] | None = None

    def reload(self) -> None:
        self._seen = None
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._faults.rules:
                log.info("reply faults cleared (%s is gone)", self.path)
            self._seen = None
            self._faults.load((), self._clock())
            return
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stamp == self._seen:
            return
        self._seen = stamp
        try:
            rules = parse_rules(self.path.read_bytes())
        except (OSError, FaultFileError) as exc:
            log.error("%s: %s; the reply faults in force stay", self.path, exc)
            return
        self._faults.load(rules, self._clock())
        for rule in rules:
            log.info("reply fault %s in force: %s", rule.id, rule.describe())
        if not rules:
            log.info("no reply faults in force")

    def answer(self, stage: str, *, sender: str | None = None, recipients: Sequence[str] = ()) -> Reply | None:
        self._refresh()
        found = self._faults.answer(stage, self._clock(), sender=sender, recipients=recipients)
        if found is None:
            return None
        rule, reply = found
        count = f" ({self._faults.used(rule)} of {rule.times})" if rule.times is not None else ""
        log.info("reply fault %s answers %s at %s%s", rule.id, reply, stage, count)
        return reply


def from_labctl(loop: asyncio.AbstractEventLoop, path: Path = FAULTS_FILE) -> ReplyFaultFile:
    """The rules a role's servers consult, reloaded at SIGHUP (``labctl fault`` sends it after
    writing the file: no restart, so the queue and the sessions stay)."""
    path.parent.mkdir(parents=True, exist_ok=True)  # where labctl puts the file
    faults = ReplyFaultFile(path, clock=time.time)
    faults.reload()
    loop.add_signal_handler(signal.SIGHUP, faults.reload)
    return faults
