"""Running the non-fault steps of a scenario in a lab: send, fetch, raw dialogues, wait, expect.

Every step acts inside the lab the way a student would (the MUA, a telnet-like client, the queue
tool, the mailbox viewer on the mail host), through ``Lab.exec``: the lab is sealed from the host.
A step that does not get what it wanted raises :class:`StepFailed` with what it expected and what
it saw instead; the runner stops the scenario there.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl import mail
from labctl.lab import Lab
from labctl.scenario import model as m
from labctl.topology import Topology

POLL_INTERVAL = 0.5  # seconds between two looks while waiting; each look is one exec in the lab


class StepFailed(Exception):
    """The step ran but the lab did not do what the scenario says it should."""

    def __init__(self, expected: str, seen: str) -> None:
        super().__init__(f"expected {expected}; saw {seen}")
        self.expected = expected
        self.seen = seen


@dataclass
class Context:
    """What the steps of one scenario share while it runs."""

    lab: Lab
    topology: Topology  # the lab as it is now, on its real subnet
    serial: int = 1  # of the zone files the DNS server has loaded
    transcript: list[str] = field(default_factory=list)  # the step's protocol lines, for the report
    undo: dict[str, list[list[str]]] = field(default_factory=dict)  # host -> commands undoing its shaping
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def mail_host(self, address: str) -> str:
        """The host keeping the mailbox of ``address``."""
        domain = address.rpartition("@")[2].lower()
        for d in self.topology.domains:
            if d.name == domain:
                return d.mail_host
        raise StepFailed(f"a lab domain for {address}", f"no domain {domain} in this lab")


# -- reading the lab -----------------------------------------------------------------------------


def _json(lab: Lab, host: str, cmd: list[str], what: str) -> Any:
    result = lab.exec(host, cmd)
    if result.exit_code != 0:
        raise StepFailed(what, f"`{' '.join(cmd[2:])}` on {host} failed: "
                               f"{(result.stderr.decode('utf-8', 'replace') or result.output).strip()[:500]}")
    try:
        return json.loads(result.output)
    except json.JSONDecodeError:
        raise StepFailed(what, f"unreadable output from {host}: {result.output[:300]!r}") from None


def server_mailbox(ctx: Context, address: str) -> list[dict[str, Any]]:
    """The messages the mail host keeps for ``address`` (``services store``)."""
    host = ctx.mail_host(address)
    found: list[dict[str, Any]] = _json(ctx.lab, host, ["python3", "-m", "services", "store", address, "--json"],
                                        f"the mailbox of {address} on {host}")
    return found


def client_mailbox(ctx: Context, user: str) -> list[dict[str, Any]]:
    """The messages in the MUA's local mailbox of ``user`` (after fetch)."""
    host = mail.mua_host(ctx.lab, user)
    listing = _json(ctx.lab, host.name, [*mail.MAIL, "list", "--json"], f"{user}'s local mailbox")
    return [_json(ctx.lab, host.name, [*mail.MAIL, "read", str(e["number"]), "--json"], f"message {e['number']}")
            for e in listing]


def queue_of(ctx: Context, host: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = _json(ctx.lab, host, [*mail.QUEUE, "--json"], f"the queue of {host}")["entries"]
    return entries


def headers(message: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in message.get("all_headers", []) if k.lower() == name.lower()]


def subject(message: dict[str, Any]) -> str:
    return next(iter(headers(message, "Subject")), "")


def is_bounce(message: dict[str, Any]) -> bool:
    types = [p.get("content_type", "") for p in message.get("parts", [])]
    return "message/delivery-status" in types or headers(message, "Return-Path") == ["<>"]


def summary(messages: list[dict[str, Any]]) -> str:
    if not messages:
        return "no messages"
    shown = ", ".join(repr(subject(x)) for x in messages[:6])
    return f"{len(messages)} message(s): {shown}{', ...' if len(messages) > 6 else ''}"


# -- actions -------------------------------------------------------------------------------------


def run_send(ctx: Context, step: m.Send) -> str:
    with tempfile.TemporaryDirectory(prefix="labctl-attach-") as tmp:
        paths = []
        for a in step.attachments:
            path = Path(tmp) / a.filename
            path.write_bytes(a.data)
            paths.append(path)
        out = mail.send(ctx.lab, step.sender, list(step.to), step.subject, step.body, paths or None,
                        submission=step.submission)
    ctx.transcript.extend((out.output + out.errors).strip().splitlines())
    if not out.ok or "250" not in out.output:
        raise StepFailed("the MTA to accept the message (250)", (out.output + out.errors).strip() or "no answer")
    return out.output.strip().splitlines()[0]


def run_fetch(ctx: Context, step: m.Fetch) -> str:
    out = mail.fetch(ctx.lab, step.user, delete=step.delete)
    ctx.transcript.extend((out.output + out.errors).strip().splitlines())
    if not out.ok:
        raise StepFailed(f"{step.user} to fetch its mail by POP3", (out.output + out.errors).strip())
    return out.output.strip()


def run_dialogue(ctx: Context, step: m.Dialogue) -> str:
    lines = [e.send for e in step.exchanges if e.send is not None]
    result = ctx.lab.exec(step.host, ["python3", "-m", "services", "talk", "--proto", step.proto, step.server,
                                      str(step.port)], stdin=json.dumps(lines).encode())
    if result.exit_code != 0:
        raise StepFailed(f"a {step.proto.upper()} session from {step.host}",
                         result.stderr.decode("utf-8", "replace").strip())
    log: list[dict[str, Any]] = json.loads(result.output)
    for entry in log:
        if entry.get("sent") is not None:
            ctx.transcript.extend(f"C: {line}" for line in str(entry["sent"]).splitlines())
        ctx.transcript.extend(f"S: {line}" for line in str(entry.get("reply", "")).splitlines())
        if entry.get("error"):
            ctx.transcript.append(f"!! {entry['error']}")
    replies = log if step.exchanges[0].send is None else log[1:]
    for i, ex in enumerate(step.exchanges):
        sent = f"after {ex.send.splitlines()[0]!r}" if ex.send else "as the greeting"
        where = f" (line {ex.line})" if ex.line else ""
        if i >= len(replies) or (not replies[i].get("reply") and replies[i].get("error")):
            reason = next((str(e["error"]) for e in log if e.get("error")), "the server closed the connection")
            raise StepFailed(f"a reply {sent}{where}", reason)
        reply = str(replies[i]["reply"])
        first = reply.split("\r\n", 1)[0].rstrip("\r\n")
        if ex.expect is not None and not first.startswith(ex.expect):
            raise StepFailed(f"{ex.expect!r} {sent}{where}", repr(first) if first else "no reply (connection closed)")
        if ex.match is not None and not ex.match.search(reply.replace("\r\n", "\n")):
            raise StepFailed(f"a reply matching /{ex.match.pattern}/ {sent}{where}", repr(first))
    return f"{len(step.exchanges)} replies as expected"


# -- conditions ----------------------------------------------------------------------------------


def _matching(messages: list[dict[str, Any]], subject_part: str | None) -> list[dict[str, Any]]:
    return [x for x in messages if subject_part is None or subject_part in subject(x)]


def check_condition(ctx: Context, cond: m.Condition) -> tuple[bool, str]:
    """Whether ``cond`` holds now, and what was seen."""
    if isinstance(cond, m.Delivered):
        found = server_mailbox(ctx, cond.to)
        hits = _matching([x for x in found if not is_bounce(x)], cond.subject)
        return len(hits) >= cond.count, f"{cond.to}'s mailbox holds {summary(found)}"
    if isinstance(cond, m.Queued):
        entries = queue_of(ctx, cond.host)
        rcpts = [r for e in entries for r in e["recipients"] if r["address"].lower() == cond.to.lower()]
        ok = any(r["status"] == "pending" and r["attempts"] >= cond.attempts for r in rcpts)
        seen = "; ".join(f"{r['address']} {r['status']} after {r['attempts']} attempt(s)"
                         + (f", last error: {r['last_error']}" if r["last_error"] else "") for r in rcpts)
        return ok, seen or f"{cond.to} is not in {cond.host}'s queue ({len(entries)} message(s) queued)"
    if isinstance(cond, m.Bounced):
        found = server_mailbox(ctx, cond.to)
        bounces = [x for x in found if is_bounce(x) and _bounce_matches(x, cond)]
        reports = [f"{f.get('Final-Recipient', '?')} {f.get('Status', '?')}" for x in found
                   for f in x.get("delivery_status", [])]
        seen = f"{cond.to}'s mailbox holds {summary(found)}"
        return bool(bounces), seen + (f"; bounce reports: {', '.join(reports)}" if reports else "")
    if isinstance(cond, m.QueueEmpty):
        entries = queue_of(ctx, cond.host)
        left = [f"{e['id']} to {', '.join(r['address'] for r in e['recipients'])}" for e in entries]
        return not entries, f"{cond.host}'s queue holds " + ("; ".join(left) if left else "nothing")
    return True, ""


def _bounce_matches(message: dict[str, Any], cond: m.Bounced) -> bool:
    """Does the report name ``cond.about`` as a failed recipient, with ``cond.status``?"""
    for fields in message.get("delivery_status", []):
        recipient = fields.get("Final-Recipient", "").rpartition(";")[2].strip().lower()
        if cond.about is not None and recipient != cond.about.lower():
            continue
        if cond.status is None or fields.get("Status", "").strip() == cond.status:
            return True
    return False


def describe(cond: m.Condition) -> str:
    match cond:
        case m.Delivered(to=to, subject=subj, count=count):
            return f"{count} message(s){f' with {subj!r}' if subj else ''} delivered to {to}"
        case m.Queued(host=host, to=to, attempts=attempts):
            return f"{to} pending in {host}'s queue after at least {attempts} attempt(s)"
        case m.Bounced(to=to, about=about, status=status):
            return f"a bounce to {to}" + (f" about {about}" if about else "") + (f" with {status}" if status else "")
        case m.QueueEmpty(host=host):
            return f"{host}'s queue empty"
    return "time to pass"


def run_wait(ctx: Context, step: m.Wait) -> str:
    if isinstance(step.until, m.Seconds):
        ctx.sleep(step.until.seconds)
        return f"waited {step.until.seconds:g} s"
    started = ctx.clock()
    while True:
        ok, seen = check_condition(ctx, step.until)
        if ok:
            return f"after {ctx.clock() - started:.1f} s: {seen}"
        if ctx.clock() - started >= step.timeout:
            raise StepFailed(f"{describe(step.until)} within {step.timeout:g} s", seen)
        ctx.sleep(POLL_INTERVAL)


# -- expectations --------------------------------------------------------------------------------


def check_mailbox(ctx: Context, exp: m.MailboxExpect) -> str:
    found = server_mailbox(ctx, exp.user) if exp.on == "server" else client_mailbox(ctx, exp.user)
    where = f"{exp.user}'s {'local ' if exp.on == 'client' else ''}mailbox"
    hits = [x for x in _matching(found, exp.subject)
            if exp.sender is None or exp.sender.lower() in next(iter(headers(x, "From")), "").lower()]
    wanted = (f"messages{f' with subject containing {exp.subject!r}' if exp.subject else ''}"
              f"{f' from {exp.sender}' if exp.sender else ''} in {where}")
    if exp.count is not None and len(hits) != exp.count:
        raise StepFailed(f"{exp.count} {wanted}", f"{len(hits)}; the mailbox holds {summary(found)}")
    if exp.count is None and not hits:
        raise StepFailed(f"at least one of the {wanted}", f"none; the mailbox holds {summary(found)}")
    for x in hits:
        label = f"message {subject(x)!r}"
        for name, pattern in exp.headers:
            values = headers(x, name)
            if not any(pattern.search(v) for v in values):
                raise StepFailed(f"a {name} header matching /{pattern.pattern}/ in {label}",
                                 f"{name}: {values}" if values else f"no {name} header")
        if exp.body is not None and not exp.body.search(x.get("text", "")):
            raise StepFailed(f"text matching /{exp.body.pattern}/ in {label}", repr(x.get("text", "")[:300]))
        if exp.received_via:
            check_received_chain(x, exp.received_via, label)
        names = [p.get("filename") for p in x.get("parts", []) if p.get("filename")]
        missing = [a for a in exp.attachments if a not in names]
        if missing:
            raise StepFailed(f"attachment(s) {', '.join(missing)} in {label}",
                             f"attachments: {', '.join(names) if names else 'none'}")
    return f"{len(hits)} matching message(s) in {where}"


def check_received_chain(message: dict[str, Any], via: tuple[str, ...], label: str) -> None:
    """Each host of ``via`` added a Received header ("by HOST"), in that order, oldest hop first."""
    chain = list(reversed(headers(message, "Received")))  # a header is prepended at each hop
    hops = [_by(r) for r in chain]
    position = 0
    for host in via:
        try:
            position = hops.index(host, position) + 1
        except ValueError:
            raise StepFailed(f"a Received chain through {' -> '.join(via)} in {label}",
                             "hops (oldest first): " + (" -> ".join(h or "?" for h in hops) or "none")) from None


_BY = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)


def _by(received: str) -> str:
    found = _BY.search(received)
    return found[1].lower().rstrip(".") if found else ""


def check_queue(ctx: Context, exp: m.QueueExpect) -> str:
    entries = queue_of(ctx, exp.host)
    if exp.empty is not None:
        left = [f"{e['id']} to {', '.join(r['address'] for r in e['recipients'])}" for e in entries]
        if exp.empty and entries:
            raise StepFailed(f"{exp.host}'s queue empty", "; ".join(left))
        if not exp.empty and not entries:
            raise StepFailed(f"mail in {exp.host}'s queue", "an empty queue")
        return f"{exp.host}'s queue holds {len(entries)} message(s)"
    rcpts = [r for e in entries for r in e["recipients"] if exp.to and r["address"].lower() == exp.to.lower()]
    seen = "; ".join(f"{r['status']} after {r['attempts']} attempt(s), last error: {r['last_error'] or 'none'}"
                     for r in rcpts) or f"{exp.to} not in {exp.host}'s queue"
    for r in rcpts:
        if exp.status is not None and r["status"] != exp.status:
            continue
        if exp.attempts is not None and r["attempts"] < exp.attempts:
            continue
        if exp.error is not None and not exp.error.search(r["last_error"] or ""):
            continue
        return seen
    wanted = [f"status {exp.status}" if exp.status else "", f"at least {exp.attempts} attempt(s)"
              if exp.attempts is not None else "", f"an error matching /{exp.error.pattern}/" if exp.error else ""]
    detail = ", ".join(w for w in wanted if w)
    raise StepFailed(f"{exp.to} in {exp.host}'s queue" + (f" with {detail}" if detail else ""), seen)


def check_bounce(ctx: Context, exp: m.Bounced) -> str:
    ok, seen = check_condition(ctx, exp)
    if not ok:
        raise StepFailed(describe(exp), seen)
    return seen
