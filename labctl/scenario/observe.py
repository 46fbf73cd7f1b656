"""Looking at a running lab the way a student would, and reading what it shows into typed views.

Each look is one ``Lab.exec`` of a lab tool with ``--json`` (the mailbox viewer on the mail host,
the MUA on the user's host, the queue tool on the MTA, ``services talk`` for a raw dialogue); the
``*_from_json`` functions turn that output into the frozen views below, which
:mod:`labctl.scenario.judge` checks without a lab. A tool that fails or prints something
unreadable is a :class:`StepFailed` saying which look it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labctl import mail
from labctl.lab import Lab
from labctl.scenario import model as m
from labctl.scenario.context import Context, StepFailed

# -- the views -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageView:
    """One message of a mailbox, as ``services store --json`` or ``mail read --json`` show it."""

    headers: tuple[tuple[str, str], ...]  # every field in order, as in the file
    text: str  # the text the MUA would show
    parts: tuple[PartView, ...]  # each MIME part
    delivery_status: tuple[Mapping[str, str], ...] = ()  # per-recipient fields of a bounce (RFC 3464 §2.3)
    flags: tuple[str, ...] = ()  # on the server: the IMAP flags kept in the file's name (\Seen, ...)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def subject(self) -> str:
        return next(iter(self.header("Subject")), "")

    @property
    def is_bounce(self) -> bool:
        return "message/delivery-status" in (p.content_type for p in self.parts) or self.header("Return-Path") == ["<>"]

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    @property
    def attachments(self) -> list[str]:
        return [p.filename for p in self.parts if p.filename]


@dataclass(frozen=True)
class PartView:
    """One MIME part: its type, and for a leaf its file name, decoded size and SHA-256."""

    content_type: str
    filename: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class QueuedRecipient:
    address: str
    status: str  # pending, delivered, bounced
    attempts: int
    last_error: str  # "" before the first failure
    attempt_times: tuple[float, ...] = ()  # when each attempt ended, oldest first


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    recipients: tuple[QueuedRecipient, ...]


@dataclass(frozen=True)
class TalkLine:
    """One entry of a raw dialogue's log (``services talk``): what was sent, what came back."""

    sent: str | None  # None: only read (the greeting)
    reply: str
    error: str | None = None  # why there was no (whole) reply


# -- reading tool output -------------------------------------------------------------------------


def message_from_json(doc: Mapping[str, Any]) -> MessageView:
    return MessageView(
        headers=tuple((str(k), str(v)) for k, v in doc.get("all_headers", [])),
        text=str(doc.get("text", "")),
        parts=tuple(PartView(str(p.get("content_type", "")), p.get("filename"), p.get("size"), p.get("sha256"))
                    for p in doc.get("parts", [])),
        delivery_status=tuple({str(k): str(v) for k, v in fields.items()} for fields in doc.get("delivery_status", [])),
        flags=tuple(str(f) for f in doc.get("flags", [])),
    )


def queue_from_json(doc: Mapping[str, Any]) -> list[QueuedMessage]:
    return [QueuedMessage(str(e["id"]), tuple(QueuedRecipient(str(r["address"]), str(r["status"]), int(r["attempts"]),
                                                              str(r.get("last_error") or ""),
                                                              tuple(float(t) for t in r.get("attempt_times") or ()))
                                              for r in e["recipients"]))
            for e in doc["entries"]]


def talk_from_json(doc: Sequence[Mapping[str, Any]]) -> list[TalkLine]:
    return [TalkLine(None if e.get("sent") is None else str(e["sent"]), str(e.get("reply", "")),
                     str(e["error"]) if e.get("error") else None) for e in doc]


# -- looking -------------------------------------------------------------------------------------


def _json(lab: Lab, host: str, cmd: list[str], what: str) -> Any:
    result = lab.exec(host, cmd)
    if result.exit_code != 0:
        raise StepFailed(what, f"`{' '.join(cmd[2:])}` on {host} failed: "
                               f"{(result.stderr.decode('utf-8', 'replace') or result.output).strip()[:500]}")
    try:
        return json.loads(result.output)
    except json.JSONDecodeError:
        raise StepFailed(what, f"unreadable output from {host}: {result.output[:300]!r}") from None


def server_mailbox(ctx: Context, address: str) -> list[MessageView]:
    """The messages the mail host keeps for ``address`` (``services store``)."""
    host = ctx.mail_host(address)
    found = _json(ctx.lab, host, ["python3", "-m", "services", "store", address, "--json"],
                  f"the mailbox of {address} on {host}")
    return [message_from_json(x) for x in found]


def client_mailbox(ctx: Context, user: str) -> list[MessageView]:
    """The messages in the MUA's local mailbox of ``user`` (after fetch)."""
    host = mail.mua_host(ctx.lab, user)
    listing = _json(ctx.lab, host.name, [*mail.MAIL, "list", "--json"], f"{user}'s local mailbox")
    return [message_from_json(_json(ctx.lab, host.name, [*mail.MAIL, "read", str(e["number"]), "--json"],
                                    f"message {e['number']}"))
            for e in listing]


def queue(ctx: Context, host: str) -> list[QueuedMessage]:
    return queue_from_json(_json(ctx.lab, host, [*mail.QUEUE, "--json"], f"the queue of {host}"))


def host_file(ctx: Context, host: str, path: str) -> str | None:
    """The text of a file on a lab host (``~/`` is the home of the host's shell); None when there is none."""
    cmd = ["sh", "-c", 'cat -- "$HOME/$1"', "sh", path[2:]] if path.startswith("~/") else ["cat", "--", path]
    result = ctx.lab.exec(host, cmd)
    return result.output if result.exit_code == 0 else None


def talk(ctx: Context, step: m.Dialogue) -> list[TalkLine]:
    """Type the step's lines from its host (``services talk``); the log of what was sent and read."""
    # What each reply must be goes along: the typing stops at the first one that is not.
    lines = [{"send": e.send, "expect": e.expect, "match": e.match.pattern if e.match else None}
             for e in step.exchanges]
    result = ctx.lab.exec(step.host, ["python3", "-m", "services", "talk", "--proto", step.proto, step.server,
                                      str(step.port)], stdin=json.dumps(lines).encode())
    if result.exit_code != 0:
        raise StepFailed(f"a {step.proto.upper()} session from {step.host}",
                         result.stderr.decode("utf-8", "replace").strip())
    return talk_from_json(json.loads(result.output))
