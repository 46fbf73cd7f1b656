"""Judging what a look at the lab showed against what the scenario expects: pure functions.

Each function takes a condition or an expectation of :mod:`labctl.scenario.model` and the views
:mod:`labctl.scenario.observe` read from the lab, and returns a :class:`Verdict`: whether it holds,
what was expected and what was seen, in the words the report shows. No lab, no exec, no clock:
``tests/unit/test_scenario_judge.py`` checks them on hand-made views.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from labctl.scenario import model as m
from labctl.scenario.observe import MessageView, PartView, QueuedMessage, QueuedRecipient, TalkLine
from services.talk import reply_fits, status_line

SUMMARY_SHOWN = 6  # subjects listed when a mailbox is summarised


@dataclass(frozen=True)
class Verdict:
    ok: bool
    expected: str
    seen: str  # on success, what the report says the step found


def _passed(expected: str, seen: str) -> Verdict:
    return Verdict(True, expected, seen)


def _failed(expected: str, seen: str) -> Verdict:
    return Verdict(False, expected, seen)


# -- mailboxes and queues, in words ----------------------------------------------------------------


def summary(messages: Sequence[MessageView]) -> str:
    if not messages:
        return "no messages"
    shown = ", ".join(repr(x.subject) for x in messages[:SUMMARY_SHOWN])
    return f"{len(messages)} message(s): {shown}{', ...' if len(messages) > SUMMARY_SHOWN else ''}"


def _queue_listing(entries: Sequence[QueuedMessage]) -> list[str]:
    return [f"{e.id} to {', '.join(r.address for r in e.recipients)}" for e in entries]


def _recipients(entries: Sequence[QueuedMessage], address: str | None) -> list[QueuedRecipient]:
    return [r for e in entries for r in e.recipients if address and r.address.lower() == address.lower()]


def _matching(messages: Sequence[MessageView], subject_part: str | None) -> list[MessageView]:
    return [x for x in messages if subject_part is None or subject_part in x.subject]


def describe(cond: m.Condition) -> str:
    match cond:
        case m.Delivered(to=to, subject=subj, count=count):
            return f"{count} message(s){f' with {subj!r}' if subj else ''} delivered to {to}"
        case m.Read(to=to, subject=subj, count=count):
            return f"{count} message(s){f' with {subj!r}' if subj else ''} of {to} read (flagged \\Seen on the server)"
        case m.Queued(host=host, to=to, attempts=attempts):
            return f"{to} pending in {host}'s queue after {attempts} attempt(s)"
        case m.Bounced(to=to, about=about, status=status):
            return f"a bounce to {to}" + (f" about {about}" if about else "") + (f" with {status}" if status else "")
        case m.QueueEmpty(host=host):
            return f"{host}'s queue empty"
    return "time to pass"


# -- conditions (what a wait waits for; a bounce is also an expectation) ---------------------------


def delivered(cond: m.Delivered, mailbox: Sequence[MessageView]) -> Verdict:
    hits = _matching([x for x in mailbox if not x.is_bounce], cond.subject)
    return Verdict(cond.count.holds(len(hits)), describe(cond), f"{cond.to}'s mailbox holds {summary(mailbox)}")


def read(cond: m.Read, mailbox: Sequence[MessageView]) -> Verdict:
    hits = _matching([x for x in mailbox if not x.is_bounce], cond.subject)
    seen = [x for x in hits if x.seen]
    return Verdict(cond.count.holds(len(seen)), describe(cond),
                   f"{len(seen)} of the {len(hits)} matching message(s) in {cond.to}'s mailbox flagged \\Seen")


def queued(cond: m.Queued, entries: Sequence[QueuedMessage]) -> Verdict:
    rcpts = _recipients(entries, cond.to)
    ok = any(r.status == "pending" and cond.attempts.holds(r.attempts) for r in rcpts)
    seen = "; ".join(f"{r.address} {r.status} after {r.attempts} attempt(s)"
                     + (f", last error: {r.last_error}" if r.last_error else "") for r in rcpts)
    return Verdict(ok, describe(cond),
                   seen or f"{cond.to} is not in {cond.host}'s queue ({len(entries)} message(s) queued)")


def bounced(cond: m.Bounced, mailbox: Sequence[MessageView]) -> Verdict:
    bounces = [x for x in mailbox if x.is_bounce and _bounce_matches(x, cond)]
    reports = [f"{f.get('Final-Recipient', '?')} {f.get('Status', '?')}" for x in mailbox for f in x.delivery_status]
    seen = f"{cond.to}'s mailbox holds {summary(mailbox)}"
    return Verdict(bool(bounces), describe(cond), seen + (f"; bounce reports: {', '.join(reports)}" if reports else ""))


def _bounce_matches(message: MessageView, cond: m.Bounced) -> bool:
    """Does the report name ``cond.about`` as a failed recipient, with ``cond.status``?"""
    for fields in message.delivery_status:
        recipient = fields.get("Final-Recipient", "").rpartition(";")[2].strip().lower()
        if cond.about is not None and recipient != cond.about.lower():
            continue
        if cond.status is None or fields.get("Status", "").strip() == cond.status:
            return True
    return False


def queue_empty(cond: m.QueueEmpty, entries: Sequence[QueuedMessage]) -> Verdict:
    left = _queue_listing(entries)
    seen = f"{cond.host}'s queue holds " + ("; ".join(left) if left else "nothing")
    return Verdict(not entries, describe(cond), seen)


# -- expectations ----------------------------------------------------------------------------------


def mailbox(exp: m.MailboxExpect, found: Sequence[MessageView]) -> Verdict:
    where = f"{exp.user}'s {'local ' if exp.on == 'client' else ''}mailbox"
    hits = [x for x in _matching(found, exp.subject)
            if exp.sender is None or exp.sender.lower() in next(iter(x.header("From")), "").lower()]
    wanted = (f"messages{f' with subject containing {exp.subject!r}' if exp.subject else ''}"
              f"{f' from {exp.sender}' if exp.sender else ''} in {where}")
    if not exp.count.holds(len(hits)):
        return _failed(f"{exp.count} {wanted}", f"{len(hits) or 'none'}; the mailbox holds {summary(found)}")
    for x in hits:
        failed = _message(exp, x)
        if failed is not None:
            return failed
    return _passed(wanted, f"{len(hits)} matching message(s) in {where}")


def _message(exp: m.MailboxExpect, x: MessageView) -> Verdict | None:
    """The first thing ``exp`` wants of each matching message that ``x`` lacks."""
    label = f"message {x.subject!r}"
    for name, pattern in exp.headers:
        values = x.header(name)
        if not any(pattern.search(v) for v in values):
            return _failed(f"a {name} header matching /{pattern.pattern}/ in {label}",
                           f"{name}: {values}" if values else f"no {name} header")
    if exp.seen is not None and x.seen != exp.seen:
        return _failed(f"{label} {'flagged' if exp.seen else 'not flagged'} \\Seen on the server",
                       f"its flags: {' '.join(x.flags) or 'none'}")
    if exp.body is not None and not exp.body.search(x.text):
        return _failed(f"text matching /{exp.body.pattern}/ in {label}", repr(x.text[:300]))
    if exp.received_via:
        chain = received_chain(x, exp.received_via, label)
        if not chain.ok:
            return chain
    files = [p for p in x.parts if p.filename]
    for want in exp.attachments:
        named = [p for p in files if p.filename == want.name]
        fits = [p for p in named if (want.size is None or p.size == want.size)
                and (want.sha256 is None or p.sha256 == want.sha256)]
        if not fits:
            detailed = want.size is not None or want.sha256 is not None
            return _failed(f"attachment {_attachment(want)} in {label}",
                           "attachments: " + (", ".join(_attachment_seen(p) if detailed else str(p.filename)
                                                        for p in files) or "none"))
    return None


def _attachment(want: m.AttachmentExpect) -> str:
    extra = [f"{want.size} bytes" if want.size is not None else "", f"sha256 {want.sha256}" if want.sha256 else ""]
    detail = ", ".join(e for e in extra if e)
    return want.name + (f" ({detail})" if detail else "")


def _attachment_seen(p: PartView) -> str:
    return f"{p.filename} ({p.size} bytes, sha256 {p.sha256})" if p.size is not None else str(p.filename)


def received_chain(message: MessageView, via: Sequence[str], label: str) -> Verdict:
    """Each host of ``via`` added a Received header ("by HOST"), in that order, oldest hop first."""
    chain = list(reversed(message.header("Received")))  # a header is prepended at each hop (RFC 5321 §4.4)
    hops = [_by(r) for r in chain]
    expected = f"a Received chain through {' -> '.join(via)} in {label}"
    seen = "hops (oldest first): " + (" -> ".join(h or "?" for h in hops) or "none")
    position = 0
    for host in via:
        try:
            position = hops.index(host, position) + 1
        except ValueError:
            return _failed(expected, seen)
    return _passed(expected, seen)


_BY = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)


def _by(received: str) -> str:
    found = _BY.search(received)
    return found[1].lower().rstrip(".") if found else ""


def queue(exp: m.QueueExpect, entries: Sequence[QueuedMessage]) -> Verdict:
    if exp.empty is not None:
        if exp.empty and entries:
            return _failed(f"{exp.host}'s queue empty", "; ".join(_queue_listing(entries)))
        if not exp.empty and not entries:
            return _failed(f"mail in {exp.host}'s queue", "an empty queue")
        return _passed(f"{exp.host}'s queue {'empty' if exp.empty else 'holding mail'}",
                       f"{exp.host}'s queue holds {len(entries)} message(s)")
    rcpts = _recipients(entries, exp.to)
    seen = "; ".join(f"{r.status} after {r.attempts} attempt(s), last error: {r.last_error or 'none'}"
                     + (f", gaps between attempts: {_gaps(r)}" if exp.retry_gap else "")
                     for r in rcpts) or f"{exp.to} not in {exp.host}'s queue"
    gap = exp.retry_gap
    wanted = [f"status {exp.status}" if exp.status else "", f"{exp.attempts} attempt(s)"
              if exp.attempts is not None else "", f"an error matching /{exp.error.pattern}/" if exp.error else "",
              f"{gap.seconds} s from attempt {gap.attempt - 1} to attempt {gap.attempt}" if gap else ""]
    detail = ", ".join(w for w in wanted if w)
    expected = f"{exp.to} in {exp.host}'s queue" + (f" with {detail}" if detail else "")
    for r in rcpts:
        if exp.status is not None and r.status != exp.status:
            continue
        if exp.attempts is not None and not exp.attempts.holds(r.attempts):
            continue
        if exp.retry_gap is not None and not _gap_holds(exp.retry_gap, r):
            continue
        if exp.error is not None and not exp.error.search(r.last_error or ""):
            continue
        return _passed(expected, seen)
    return _failed(expected, seen)


def _gap_holds(gap: m.RetryGap, r: QueuedRecipient) -> bool:
    """Attempt ``gap.attempt`` came ``gap.seconds`` after the one before it (the queue records
    when each attempt ended: RFC 5321 §4.5.4.1's retry interval is measured between them)."""
    times = r.attempt_times
    return len(times) >= gap.attempt and gap.seconds.holds(times[gap.attempt - 1] - times[gap.attempt - 2])


def _gaps(r: QueuedRecipient) -> str:
    times = r.attempt_times
    return ", ".join(f"{b - a:.1f} s" for a, b in zip(times, times[1:], strict=False)) or "none yet"


def host_file(exp: m.FileExpect, text: str | None) -> Verdict:
    """A file a student wrote (an answer) against the pattern it must match."""
    expected = f"a file {exp.path} on {exp.host}" + (f" matching /{exp.match.pattern}/" if exp.match else "")
    if text is None:
        return _failed(expected, f"no file {exp.path} on {exp.host}")
    shown = repr(text.strip()[:200]) if text.strip() else "an empty file"
    return Verdict(exp.match is None or exp.match.search(text) is not None, expected, f"{exp.path} holds {shown}")


def dialogue(step: m.Dialogue, log: Sequence[TalkLine]) -> Verdict:
    """Each reply of a raw dialogue against its exchange's ``expect`` (a prefix) and ``match``."""
    replies = log if step.exchanges[0].send is None else log[1:]
    for i, ex in enumerate(step.exchanges):
        sent = f"after {ex.send.splitlines()[0]!r}" if ex.send else "as the greeting"
        where = f" (line {ex.line})" if ex.line else ""
        if i >= len(replies) or (not replies[i].reply and replies[i].error):
            reason = next((e.error for e in log if e.error), "the server closed the connection")
            return _failed(f"a reply {sent}{where}", reason)
        reply = replies[i].reply
        first = status_line(reply, step.proto)
        if not reply_fits(reply, ex.expect, None, step.proto):
            return _failed(f"{ex.expect!r} {sent}{where}", repr(first) if first else "no reply (connection closed)")
        if ex.match is not None and not reply_fits(reply, None, ex.match.pattern, step.proto):
            return _failed(f"a reply matching /{ex.match.pattern}/ {sent}{where}", repr(first))
    return _passed(f"{len(step.exchanges)} replies as expected", f"{len(step.exchanges)} replies as expected")
