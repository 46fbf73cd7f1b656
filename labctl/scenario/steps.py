"""Running the non-fault steps of a scenario in a lab: send, fetch, raw dialogues, wait, expect.

Every step acts inside the lab the way a student would (the MUA, a telnet-like client, the queue
tool, the mailbox viewer on the mail host), through ``Lab.exec``: the lab is sealed from the host.
What a step finds is read by :mod:`labctl.scenario.observe` and judged by the pure
:mod:`labctl.scenario.judge`; a step that does not get what it wanted raises :class:`StepFailed`
with what it expected and what it saw instead, and the runner stops the scenario there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from labctl import mail
from labctl.scenario import judge, observe
from labctl.scenario import model as m

# Context and StepFailed are imported from here by labctl.scenario.facts (explicit re-export).
from labctl.scenario.context import Context as Context
from labctl.scenario.context import StepFailed as StepFailed
from labctl.scenario.judge import Verdict

POLL_INTERVAL = 0.5  # seconds between two looks while waiting; each look is one exec in the lab


def _held(verdict: Verdict) -> str:
    """What the step found; StepFailed when the verdict says it is not what the scenario wants."""
    if not verdict.ok:
        raise StepFailed(verdict.expected, verdict.seen)
    return verdict.seen


# -- actions -------------------------------------------------------------------------------------


def run_send(ctx: Context, step: m.Send) -> str:
    with tempfile.TemporaryDirectory(prefix="labctl-attach-") as tmp:
        paths = []
        for a in step.attachments:
            path = Path(tmp) / a.filename
            path.write_bytes(a.data)
            paths.append(path)
        out = mail.send(ctx.lab, step.sender, list(step.to), step.subject, step.body, paths or None,
                        submission=step.submission, tls=[m.SEND_TLS[step.tls]] if step.tls else None)
    ctx.transcript.extend((out.output + out.errors).strip().splitlines())
    if not out.ok or "250" not in out.output:
        raise StepFailed("the MTA to accept the message (250)", (out.output + out.errors).strip() or "no answer")
    return out.output.strip().splitlines()[0]


def run_fetch(ctx: Context, step: m.Fetch) -> str:
    out = mail.fetch(ctx.lab, step.user, delete=step.delete, imap=step.imap)
    ctx.transcript.extend((out.output + out.errors).strip().splitlines())
    if not out.ok:
        raise StepFailed(f"{step.user} to fetch its mail by {'IMAP' if step.imap else 'POP3'}",
                         (out.output + out.errors).strip())
    return out.output.strip()


def run_dialogue(ctx: Context, step: m.Dialogue) -> str:
    log = observe.talk(ctx, step)
    for entry in log:
        if entry.sent is not None:
            ctx.transcript.extend(f"C: {line}" for line in entry.sent.splitlines())
        ctx.transcript.extend(f"S: {line}" for line in entry.reply.splitlines())
        if entry.error:
            ctx.transcript.append(f"!! {entry.error}")
    return _held(judge.dialogue(step, log))


# -- conditions ----------------------------------------------------------------------------------


def _delivered(ctx: Context, cond: m.Delivered) -> Verdict:
    return judge.delivered(cond, observe.server_mailbox(ctx, cond.to))


def _read(ctx: Context, cond: m.Read) -> Verdict:
    return judge.read(cond, observe.server_mailbox(ctx, cond.to))


def _queued(ctx: Context, cond: m.Queued) -> Verdict:
    return judge.queued(cond, observe.queue(ctx, cond.host))


def _bounced(ctx: Context, cond: m.Bounced) -> Verdict:
    return judge.bounced(cond, observe.server_mailbox(ctx, cond.to))


def _queue_empty(ctx: Context, cond: m.QueueEmpty) -> Verdict:
    return judge.queue_empty(cond, observe.queue(ctx, cond.host))


# What to look at and how to judge it, for each condition a wait can wait for (Seconds only sleeps).
CONDITIONS: Mapping[type[m.Condition], Callable[[Context, Any], Verdict]] = {
    m.Delivered: _delivered,
    m.Read: _read,
    m.Queued: _queued,
    m.Bounced: _bounced,
    m.QueueEmpty: _queue_empty,
}


def run_wait(ctx: Context, step: m.Wait) -> str:
    if isinstance(step.until, m.Seconds):
        if not ctx.patient:
            return "not waited: the lab is graded as it is"
        ctx.sleep(step.until.seconds)
        return f"waited {step.until.seconds:g} s"
    look = CONDITIONS[type(step.until)]
    return patiently(ctx, lambda: _held(look(ctx, step.until)), step.timeout)


def patiently(ctx: Context, attempt: Callable[[], str], timeout: float) -> str:
    """``attempt`` again every :data:`POLL_INTERVAL` until it holds (it raises StepFailed while not).

    After a task, until the task's time limit instead of ``timeout``, showing its hint at half
    time; a Ctrl-C there is the student giving up: the step fails with what was seen so far.
    Under ``labctl check`` (not ``ctx.patient``), one attempt: the lab is graded as it is.
    """
    window = ctx.task
    started = ctx.clock()
    limit = window.remaining(started) if window else timeout if ctx.patient else 0.0
    within = f"within the task's time limit ({window.task.time_limit:g} s)" if window else f"within {timeout:g} s"
    last: StepFailed | None = None
    try:
        while True:
            try:
                seen = attempt()
                return f"after {ctx.clock() - started:.1f} s: {seen}" if ctx.patient else seen
            except StepFailed as failed:
                last = failed
            now = ctx.clock()
            if now - started >= limit:
                raise StepFailed(f"{last.expected} {within}" if ctx.patient else last.expected, last.seen)
            if window and window.hint_due(now):
                window.hint_shown = True
                ctx.show_hint(window.task.hint)
            ctx.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        if window is None:
            raise
        seen = last.seen if last else "nothing checked yet"
        raise StepFailed(f"{last.expected if last else 'the task done'} {within}",
                         f"given up (Ctrl-C) after {ctx.clock() - window.started:.0f} s: {seen}") from None


# -- expectations --------------------------------------------------------------------------------


def check_mailbox(ctx: Context, exp: m.MailboxExpect) -> str:
    found = observe.server_mailbox(ctx, exp.user) if exp.on == "server" else observe.client_mailbox(ctx, exp.user)
    return _held(judge.mailbox(exp, found))


def check_queue(ctx: Context, exp: m.QueueExpect) -> str:
    return _held(judge.queue(exp, observe.queue(ctx, exp.host)))


def check_bounce(ctx: Context, exp: m.Bounced) -> str:
    return _held(_bounced(ctx, exp))


def check_file(ctx: Context, exp: m.FileExpect) -> str:
    return _held(judge.host_file(exp, observe.host_file(ctx, exp.host, exp.path)))
