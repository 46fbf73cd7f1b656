"""Each view of ``labctl web`` as JSON, from what the lab and its capture say: pure functions.

The server (:mod:`labctl.web.server`) asks the lab and the live decoder, these functions shape the
answer; the page and the tests read the same JSON (documented in README, "labctl web"). An
exchange is one conversation of ``labctl traffic`` (a TCP connection, or a DNS client's flow),
drawn as one arrow from its client's lane to its server's; its ``text`` is what ``labctl traffic``
prints for it, event for event (the follower's settled events, so the page never shows a line
that a later packet takes back).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from labctl.lab import HostStatus
from labctl.traffic import render
from labctl.traffic.model import CLIENT, Conversation
from labctl.traffic.payload import DnsAnswer, ImapResponse, Pop3Status, Reply

if TYPE_CHECKING:
    from labctl.traffic.arp import NeighbourLookup
    from labctl.traffic.journey import Journey

# The lanes' order, after the reference article's figure: the sender's MUA, its MTA, the DNS, the
# MX, the recipient's MUA. The first MUA (by name) sends, the others receive; other hosts after.
LANE_ORDER = ("mua-first", "mta", "dns", "mx", "mua", "client")


def lanes(hosts: Sequence[HostStatus]) -> list[str]:
    """The diagram's lanes, one per host, in the article's order (andy, smtp, ns, mail, betty)."""
    muas = sorted(h.name for h in hosts if h.kind == "mua")
    order = {kind: i for i, kind in enumerate(LANE_ORDER)}

    def rank(h: HostStatus) -> tuple[int, str]:
        kind = "mua-first" if muas and h.name == muas[0] else h.kind
        return order.get(kind, len(order)), h.name

    return [h.name for h in sorted(hosts, key=rank)]


def host_json(h: HostStatus) -> dict[str, Any]:
    return {"name": h.name, "fqdn": h.fqdn, "role": h.role, "kind": h.kind, "address": h.address,
            "ports": h.ports, "state": h.condition, "user": h.user or None, "tls": h.tls}


def topology_json(lab: str, hosts: Sequence[HostStatus]) -> dict[str, Any]:
    """``GET /api/topology``: the lab's hosts with their live state, and the diagram's lanes."""
    return {"lab": lab, "lanes": lanes(hosts), "hosts": [host_json(h) for h in hosts]}


def lane_of(endpoint_name: str | None, ip: str, hosts: Sequence[HostStatus]) -> str:
    """The lane of an endpoint: the host at that address (its short name), or the address itself."""
    for h in hosts:
        if h.address == ip or endpoint_name in (h.name, h.fqdn):
            return h.name
    return endpoint_name or ip


def failure(conv: Conversation) -> str | None:
    """Why the exchange is drawn as a failure: no connection, or a refusal said on the wire."""
    if conv.state in ("refused", "unanswered"):
        return conv.state
    for e in conv.events:
        match e.payload:
            case Reply(code=code) if code >= 400:
                return f"{code} reply"
            case Pop3Status(status="-ERR"):
                return "-ERR"
            case ImapResponse(status="NO" | "BAD" as status) if e.direction != CLIENT:
                return status
            case DnsAnswer(rcode=rcode) if rcode != "NOERROR":
                return rcode
    return "reset" if conv.state == "reset" else None


def label(conv: Conversation) -> str:
    """The arrow's few words: what the exchange did, as its own lines say it."""
    proto = conv.protocol.upper()
    if conv.protocol == "dns":
        asked = ", ".join(e.text for e in conv.events if e.direction == CLIENT)
        answered = "; ".join(e.text.split("   [")[0] for e in conv.events if e.direction != CLIENT)
        return f"{asked} \u2192 {answered}" if answered else asked or proto
    if conv.state in ("refused", "unanswered"):
        return f"{proto} {conv.state}"
    parts = [proto]
    for m in conv.messages:
        parts.append(f"\u201c{m.subject}\u201d" if m.subject else (m.message_id or "message"))
        if m.reply_code is not None:
            parts.append(str(m.reply_code))
    why = failure(conv)
    if why and why not in parts:
        parts.append(why)
    return " ".join(parts)


def exchange_json(xid: int, conv: Conversation, hosts: Sequence[HostStatus], *,
                  hide_secrets: bool = False) -> dict[str, Any]:
    """One arrow: ``conv`` holds the events settled so far (see :mod:`labctl.traffic.follow`);
    ``hide_secrets``: its text masks the passwords, as ``labctl traffic --hide-secrets``."""
    text = (render.dns_lines(conv, hide_secrets=hide_secrets) if conv.protocol == "dns" and conv.decodable
            else render.text([conv], hide_secrets=hide_secrets))
    return {
        "id": xid,
        "protocol": conv.protocol,
        "from": lane_of(conv.client.name, conv.client.ip, hosts),
        "to": lane_of(conv.server.name, conv.server.ip, hosts),
        "client": conv.client.label(),
        "server": conv.server.label(),
        "start": round(conv.start, 6),
        "end": round(max([conv.end, *(e.time for e in conv.events)]), 6),
        "state": conv.state,
        "failure": failure(conv),
        "clear_text_secret": any(e.secrets for e in conv.events),
        "encrypted": conv.tls is not None,
        "label": label(conv),
        "events": len(conv.events),
        "message_ids": [m.message_id for m in conv.messages if m.message_id],
        "text": text,
    }


def lookup_json(xid: int, lookup: NeighbourLookup, hosts: Sequence[HostStatus], text: str) -> dict[str, Any]:
    """An ARP lookup nobody answered, as an exchange: the only trace of an attempt to reach a host
    that is off (Linux sends no SYN to a neighbour it cannot find; see :mod:`labctl.traffic.arp`)."""
    return {
        "id": xid, "protocol": "arp",
        "from": lane_of(lookup.asker_host, lookup.asker, hosts),
        "to": lane_of(lookup.target_host, lookup.target, hosts),
        "client": lookup.asker_host or lookup.asker, "server": lookup.target_host or lookup.target,
        "start": round(lookup.start, 6), "end": round(lookup.end, 6), "state": "unanswered",
        "failure": "no ARP answer", "clear_text_secret": False, "encrypted": False,
        "label": f"ARP who-has {lookup.target}: no answer ({lookup.requests}\u00d7)",
        "events": lookup.requests, "message_ids": [], "text": text + "\n",
    }


def messages_json(conversations: Iterable[Conversation]) -> list[dict[str, Any]]:
    """``GET /api/messages``: every message that crossed the wire, once, in order of first sight."""
    seen: dict[str, dict[str, Any]] = {}
    for conv in conversations:
        for m in conv.messages:
            if not m.message_id:
                continue
            entry = seen.setdefault(m.message_id, {"message_id": m.message_id, "subject": m.subject,
                                                   "first_seen": round(m.time, 6), "sender": None,
                                                   "recipients": [], "crossings": 0})
            entry["crossings"] += 1
            entry["first_seen"] = min(entry["first_seen"], round(m.time, 6))
            entry["sender"] = entry["sender"] or m.sender
            entry["recipients"] = sorted({*entry["recipients"], *m.recipients})
    return sorted(seen.values(), key=lambda m: m["first_seen"])


def journey_json(journey: Journey) -> dict[str, Any]:
    """``GET /api/journey?id=MESSAGE-ID``: the six steps, as ``labctl trace`` finds them."""
    return {
        "message_id": journey.message_id,
        "subject": journey.subject,
        "complete": journey.complete,
        "found": sum(s.found for s in journey.steps),
        "participants": [{"host": h, "role": r} for h, r in journey.participants],
        "steps": [asdict(s) for s in journey.steps],
        "others": list(journey.others),
    }


def command_json(output: str, what: str) -> Any:
    """The JSON a lab command printed (the MTA's queue, a mailbox listing); ValueError if none."""
    try:
        return json.loads(output)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: the lab's answer was not JSON ({output[:120]!r})") from exc


def mailboxes_json(listings: Mapping[str, tuple[str, Any]]) -> list[dict[str, Any]]:
    """``GET /api/mailboxes``: each user's mailbox on the server, {user: (address, listing or the
    exception that kept it unread)}: one host down does not hide the others' mailboxes."""
    return [{"user": user, "address": address, "messages": None, "error": str(listing)}
            if isinstance(listing, Exception) else {"user": user, "address": address, "messages": listing}
            for user, (address, listing) in listings.items()]
