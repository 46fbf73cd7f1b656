"""Conversations as the reference article prints its dialogues, or as JSON; and the filters.

Text (one block per conversation, DNS one line per query or answer)::

    andy (10.89.0.10:41234) -> smtp.ouhk.example (10.89.0.25:25)  SMTP
    S: 220 smtp.ouhk.example ESMTP maillab; ...
    C: MAIL FROM:<andy@ouhk.example>
    ...
    smtp.ouhk.example -> ns.lab.example: MX? stevenchoy.example

JSON (``labctl traffic --json``) is a list of conversations, each::

    {"protocol": "smtp"|"pop3"|"imap"|"dns"|"tcp"|"udp", "transport": "tcp"|"udp",
     "client": {"ip", "port", "name"}, "server": {"ip", "port", "name"},
     "start": epoch seconds, "end": epoch seconds,
     "state": "closed"|"open"|"reset"|"refused"|"unanswered",
     "joined_midway": bool, "decodable": bool, "vantages": [host captured on, ...],
     "events": [{"time", "direction": "C"|"S"|"-", "kind", "text",
                 "clear_text_secret"?: true, "partial"?: true, "decrypted"?: true, "info"?: {...}}],
     "messages": [{"time", "message_id", "subject", "lines", "octets", "complete",
                   "sender", "recipients", "reply_code", "reply_text", "reply_time", "command"}],
     "tls"?: {"started": "starttls"|"implicit", "version", "cipher", "server_name", "certificate",
              "decrypted", "problem"}}

``kind`` is one of :data:`labctl.traffic.model.KINDS`; ``partial``: the connection is still open and
more of it may change that event (a line, reply or message not yet ended). ``info`` is the event's
typed payload (:mod:`labctl.traffic.payload`, :func:`~labctl.traffic.payload.info`): a DNS query's
``id`` and ``questions``; a DNS answer's ``id``, ``questions``, ``rcode``, ``answers`` and
``additional``; an SMTP reply's ``code``; a POP3 response's ``status`` (and, after RETR/TOP, the
message's ``message_id``, ``subject``, ``lines`` and ``octets``, as a DATA's message has them); a
login line's ``mechanism``, ``user``, ``password``; the ``octets`` of undecodable bytes; the
``syn`` count of an unanswered connection. ``decrypted``: read from inside TLS with the lab's key
log (an outsider saw a record, kind ``record``); ``clear_text_secret`` on such an event means a
secret that was readable once decrypted. ``tls`` (:class:`~labctl.traffic.model.TlsSummary`): the
connection went into TLS. Fields are only ever added.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from labctl.errors import LabctlError
from labctl.traffic import PROTOCOL_CHOICES
from labctl.traffic.model import CLIENT, NOTE, Conversation, Event
from labctl.traffic.payload import ImapResponse, Pop3Status


def clock(t: float) -> str:
    """Local wall-clock time to the millisecond."""
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def select(conversations: Iterable[Conversation], *, proto: str | None = None, host: str | None = None,
           since: float | None = None, decoded_only: bool = False,
           hide_clients: Collection[str] = ()) -> list[Conversation]:
    """The conversations of protocol ``proto``, involving ``host`` (name or address), ending after ``since``;
    without the conversations opened from ``hide_clients`` (addresses: labctl's readiness probe)."""
    out = []
    for conv in conversations:
        if conv.client.ip in hide_clients:
            continue
        if proto is not None and conv.protocol != proto:
            continue
        if host is not None and not conv.involves(host):
            continue
        if since is not None and conv.end < since:
            continue
        if decoded_only and conv.protocol not in PROTOCOL_CHOICES:
            continue
        out.append(conv)
    return out


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: seconds since the epoch, a duration ago (``90s``, ``10m``, ``2h``), or a time today / ISO."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        return now - float(t[:-1]) * units[t[-1]]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        if "T" in t or "-" in t:
            return datetime.fromisoformat(t).timestamp()
        parsed = datetime.strptime(t, "%H:%M:%S" if t.count(":") == 2 else "%H:%M")
        today = datetime.fromtimestamp(now)
        return today.replace(hour=parsed.hour, minute=parsed.minute, second=parsed.second, microsecond=0).timestamp()
    except ValueError:
        raise LabctlError(f"--since {text!r}: give a duration ago (90s, 10m, 2h), a time today (14:05:30), "
                          "an ISO date-time (2026-11-29T14:05) or seconds since the epoch") from None


def _prefix(event: Event) -> str:
    if event.direction == NOTE:
        return "   "
    return "C: " if event.direction == CLIENT else "S: "


def event_lines(event: Event, *, hide_secrets: bool = False, times: bool = False) -> list[str]:
    stamp = f"{clock(event.time)}  " if times else ""
    pad = " " * len(stamp)
    text = event.shown(hide_secrets)
    if event.direction == NOTE:
        text = f"[{text}]"
    lines = text.split("\n")
    out = [stamp + _prefix(event) + lines[0]]
    # A message, and a POP3 answer's lines after its status line, are data, not lines of the dialogue.
    cont = "   " if event.kind == "message" or isinstance(event.payload, Pop3Status | ImapResponse) else _prefix(event)
    out += [pad + cont + line for line in lines[1:]]
    return out


def header(conv: Conversation) -> str:
    notes = []
    if conv.joined_midway:
        notes.append("joined mid-way")
    if not conv.decodable:
        notes.append(f"not {conv.protocol.upper()}: undecodable")
    if conv.state in ("refused", "unanswered", "reset", "open"):
        notes.append(conv.state)
    note = f"  ({', '.join(notes)})" if notes else ""
    return f"{conv.client.label()} -> {conv.server.label()}  {conv.protocol.upper()}{note}"


def text(conversations: Sequence[Conversation], *, hide_secrets: bool = False, times: bool = False) -> str:
    blocks: list[str] = []
    for conv in conversations:
        if conv.protocol == "dns" and conv.decodable:
            blocks.append(dns_lines(conv, hide_secrets=hide_secrets, times=times))
            continue
        lines = [f"{clock(conv.start)}  {header(conv)}" if times else header(conv)]
        for event in conv.events:
            lines += event_lines(event, hide_secrets=hide_secrets, times=times)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def dns_lines(conv: Conversation, *, hide_secrets: bool = False, times: bool = False) -> str:
    lines = []
    for event in conv.events:
        a, b = (conv.client, conv.server) if event.direction == CLIENT else (conv.server, conv.client)
        stamp = f"{clock(event.time)}  " if times else ""
        lines.append(f"{stamp}{a.host} -> {b.host}: {event.shown(hide_secrets)}")
    return "\n".join(lines) + "\n"


def to_json(conversations: Sequence[Conversation], *, hide_secrets: bool = False) -> str:
    return json.dumps([c.to_json(hide_secrets) for c in conversations], indent=1)
