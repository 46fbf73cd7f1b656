"""The journey of one message, from the decoded conversations alone: the article's six steps.

1. submission: the sender's MUA hands the message to its MTA over SMTP;
2. MX query: the MTA asks the DNS for the MX of the recipient's domain;
3. MX answer: the DNS names the mail exchanger;
4. relay: the MTA hands the message to the MX over SMTP;
5. storage acknowledgement: the MX's 250 after the data (our servers say 250 only once the
   message is on disk, design decision 8);
6. retrieval: the recipient's MUA fetches the message with POP3 RETR (or TOP).

A message is recognised by its Message-ID wherever it crosses (SMTP DATA/BDAT, POP3 RETR/TOP).
The submission is the earliest SMTP transfer of it; the MTA is that transfer's server; a relay is
a later transfer from the MTA. A step not found is reported missing, with what was seen in its
place: SYNs nobody answered (the MX is down), a refused connection, a 4xx or 5xx reply, an
attempt that came before the one that worked (a retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from labctl.errors import LabctlError
from labctl.traffic.model import Conversation, Event, MailMessage
from labctl.traffic.render import clock

STEP_NAMES = ("submission", "MX query", "MX answer", "relay", "storage acknowledgement", "retrieval")


@dataclass(frozen=True)
class Step:
    number: int
    name: str
    found: bool
    time: float | None = None
    source: str | None = None  # the host the arrow starts at
    target: str | None = None
    summary: str = ""  # what crossed: a command, an answer, a reply
    detail: str = ""  # how (protocol, ports)
    instead: tuple[str, ...] = ()  # for a missing step: what was seen in its place
    notes: tuple[str, ...] = ()  # for a found step: what came before it (earlier failed attempts)


@dataclass(frozen=True)
class Journey:
    message_id: str | None
    subject: str | None
    steps: tuple[Step, ...]
    participants: tuple[tuple[str, str], ...]  # (host, role) in the order of the article's figure
    others: tuple[str, ...] = field(default=())  # other messages that matched --subject

    @property
    def complete(self) -> bool:
        return all(s.found for s in self.steps)


def _norm_id(mid: str | None) -> str | None:
    return mid.strip().strip("<>").strip() if mid else None


@dataclass(frozen=True)
class _Transfer:
    conv: Conversation
    msg: MailMessage


def _matches(msg: MailMessage, message_id: str | None, subject: str | None) -> bool:
    if message_id is not None:
        return _norm_id(msg.message_id) == message_id
    return subject is not None and subject.lower() in (msg.subject or "").lower()


def _messages(conversations: Sequence[Conversation], protocol: str) -> list[_Transfer]:
    return sorted((_Transfer(c, m) for c in conversations if c.protocol == protocol for m in c.messages),
                  key=lambda t: t.msg.time)


def _describe(conv: Conversation) -> str:
    """One line on a connection that did not carry the message: how it ended."""
    who = f"{clock(conv.start)} {conv.client.host} -> {conv.server.host}:{conv.server.port}"
    if conv.state == "unanswered":
        return f"{who}: {next((e.text for e in conv.events if e.kind == 'unanswered'), 'no answer')}"
    if conv.state == "refused":
        return f"{who}: connection refused (RST)"
    failures = [e for e in conv.events if e.kind == "reply" and str(e.info.get("code", 200))[0] in "45"]
    if failures:
        return f"{who}: {failures[0].text.splitlines()[-1]}"
    if conv.state == "reset":
        return f"{who}: connection reset"
    return f"{who}: {conv.protocol.upper()} session, message not sent"


def trace(conversations: Sequence[Conversation], message_id: str | None = None,
          subject: str | None = None) -> Journey:
    """Reconstruct the six steps for the message with this Message-ID (or Subject containing ``subject``)."""
    if message_id is None and subject is None:
        raise LabctlError("say which message: a Message-ID, or --subject TEXT")
    wanted = _norm_id(message_id)
    smtp = _messages(conversations, "smtp")
    pop = _messages(conversations, "pop3")
    matching = [t for t in smtp + pop if _matches(t.msg, wanted, subject)]
    if not matching:
        seen = sorted({f"{m.msg.message_id or '(no Message-ID)'}  {m.msg.subject or ''}".strip()
                       for m in smtp + pop})
        listing = "\n  ".join(seen) if seen else "(none: no SMTP DATA or POP3 RETR in the capture)"
        what = f"Message-ID {message_id}" if message_id else f"subject containing {subject!r}"
        raise LabctlError(f"no message with {what} crossed the wire in this capture; messages seen:\n  {listing}")
    first = min(matching, key=lambda t: t.msg.time)
    others: tuple[str, ...] = ()
    if wanted is None:
        wanted = _norm_id(first.msg.message_id)
        others = tuple(sorted({f"{t.msg.message_id} {t.msg.subject}" for t in matching
                               if _norm_id(t.msg.message_id) != wanted}))
    transfers = [t for t in smtp if _matches(t.msg, wanted, None if wanted else subject)]
    retrievals = [t for t in pop if _matches(t.msg, wanted, None if wanted else subject)]

    steps: list[Step] = []
    sub = transfers[0] if transfers else None
    mta = sub.conv.server if sub else None
    relays = [t for t in transfers[1:] if mta is not None and t.conv.client.ip == mta.ip]

    # 1. submission
    if sub is not None:
        m = sub.msg
        steps.append(Step(1, STEP_NAMES[0], True, m.time, sub.conv.client.host, sub.conv.server.host,
                          f"<message, {m.lines} lines, {m.octets} octets>",
                          f"SMTP to port {sub.conv.server.port}, from <{m.sender}> to "
                          f"{', '.join(f'<{r}>' for r in m.recipients)}; answered "
                          f"{m.reply_code or '(no reply captured)'} {m.reply_text or ''}".strip()))
    else:
        steps.append(Step(1, STEP_NAMES[0], False, instead=("no SMTP transfer of this message was captured",)))

    # 2, 3: the MTA's MX lookup for a recipient domain, after the submission
    domains = {r.rsplit("@", 1)[-1].lower() for t in transfers for r in t.msg.recipients}
    query: Event | None = None
    answer: Event | None = None
    dns_conv: Conversation | None = None
    after = sub.msg.time if sub else 0.0
    if mta is not None:
        for conv in conversations:
            if conv.protocol != "dns" or conv.client.ip != mta.ip:
                continue
            for ev in conv.events:
                if ev.kind == "query" and ev.time >= after and query is None and any(
                        q.upper().startswith("MX?") and q.split()[-1].lower() in domains
                        for q in ev.info.get("questions", [])):
                    query, dns_conv = ev, conv
            if query is not None:
                answer = next((e for e in dns_conv.events if e.kind == "answer" and e.time >= query.time
                               and e.info.get("id") == query.info.get("id")), None) if dns_conv else None
                break
    if query is not None and dns_conv is not None:
        steps.append(Step(2, STEP_NAMES[1], True, query.time, dns_conv.client.host, dns_conv.server.host,
                          query.text, f"DNS over {dns_conv.transport.upper()}"))
    else:
        steps.append(Step(2, STEP_NAMES[1], False, instead=(
            f"no MX query from {mta.host if mta else 'the MTA'} for {', '.join(sorted(domains)) or 'the domain'} "
            "(the capture may have started later, or the MTA had the answer cached)",)))
    if answer is not None and dns_conv is not None:
        steps.append(Step(3, STEP_NAMES[2], True, answer.time, dns_conv.server.host, dns_conv.client.host,
                          answer.text.split("   [")[0], f"rcode {answer.info.get('rcode')}"))
    else:
        steps.append(Step(3, STEP_NAMES[2], False, instead=("no answer to the MX query was captured",)
                          if query else ("no MX query, so no answer",)))

    # 4, 5: the relay and the MX's acknowledgement
    accepted = [t for t in relays if t.msg.reply_code == 250]
    relay = accepted[0] if accepted else (relays[-1] if relays else None)
    attempts: list[str] = []
    if mta is not None:
        until = relay.conv.start if relay and accepted else float("inf")
        carried = {id(t.conv) for t in relays}  # described below, with the reply to the message
        for conv in conversations:
            if (conv.client.ip == mta.ip and conv.protocol == "smtp" and after <= conv.start < until
                    and id(conv) not in carried):
                attempts.append(_describe(conv))
        attempts += [f"{clock(t.msg.time)} {t.conv.client.host} -> {t.conv.server.host}: message refused: "
                     f"{t.msg.reply_code} {t.msg.reply_text}" for t in relays if t is not relay]
        attempts.sort()  # each starts with its time of day
    if relay is not None:
        m = relay.msg
        steps.append(Step(4, STEP_NAMES[3], True, m.time, relay.conv.client.host, relay.conv.server.host,
                          f"<message, {m.lines} lines, {m.octets} octets>",
                          f"SMTP to port {relay.conv.server.port}", notes=tuple(
                              f"earlier attempt: {a}" for a in attempts)))
    else:
        steps.append(Step(4, STEP_NAMES[3], False, instead=tuple(attempts) or (
            f"no SMTP connection from {mta.host if mta else 'the MTA'} to an MX after the submission",)))
    if relay is not None and relay.msg.reply_code == 250:
        m = relay.msg
        steps.append(Step(5, STEP_NAMES[4], True, m.reply_time, relay.conv.server.host, relay.conv.client.host,
                          f"{m.reply_code} {m.reply_text}", "the MX's reply after the data: stored"))
    elif relay is not None:
        steps.append(Step(5, STEP_NAMES[4], False, instead=(
            f"the MX answered {relay.msg.reply_code} {relay.msg.reply_text}" if relay.msg.reply_code
            else "no reply to the data was captured",)))
    else:
        steps.append(Step(5, STEP_NAMES[4], False, instead=("no relay, so nothing stored on the MX",)))

    # 6. retrieval
    mx_ip = relay.conv.server.ip if relay else None
    fetched = next((t for t in retrievals if mx_ip is None or t.conv.server.ip == mx_ip), None)
    fetched = fetched or (retrievals[0] if retrievals else None)
    if fetched is not None:
        m = fetched.msg
        steps.append(Step(6, STEP_NAMES[5], True, m.time, fetched.conv.server.host, fetched.conv.client.host,
                          f"{m.command}: <message, {m.lines} lines, {m.octets} octets>",
                          f"POP3 from port {fetched.conv.server.port}"))
    else:
        sessions = [_describe(c) if c.state in ("refused", "unanswered") else
                    f"{clock(c.start)} {c.client.host} -> {c.server.host}:{c.server.port}: POP3 session, "
                    f"{len(c.messages)} message(s) retrieved, not this one"
                    for c in conversations if c.protocol == "pop3" and c.start >= after]
        steps.append(Step(6, STEP_NAMES[5], False, instead=tuple(sessions) or (
            "no POP3 retrieval of this message (has the recipient fetched mail since?)",)))

    participants = (
        (sub.conv.client.host if sub else "sender's MUA", "MUA"),
        (mta.host if mta else "MTA", "MTA"),
        (dns_conv.server.host if dns_conv else "DNS", "DNS"),
        (relay.conv.server.host if relay else _mx_name(answer) or "MX", "MX"),
        (fetched.conv.client.host if fetched else "recipient's MUA", "MUA"),
    )
    return Journey(first.msg.message_id, first.msg.subject, tuple(steps), participants, others)


def _mx_name(answer: Event | None) -> str | None:
    if answer is None:
        return None
    for a in answer.info.get("answers", []):
        parts = a.split()
        if parts and parts[0] == "MX" and len(parts) >= 3:
            return str(parts[2])
    return None


def timeline(journey: Journey) -> str:
    """The numbered timeline, one line per step, what was seen instead under a missing one."""
    head = f"The journey of {journey.message_id or '(no Message-ID)'}"
    if journey.subject:
        head += f'  "{journey.subject}"'
    lines = [head]
    for s in journey.steps:
        if s.found:
            when = clock(s.time) if s.time is not None else "?"
            lines.append(f"{s.number}. {when}  {s.name:<24} {s.source} -> {s.target}: {s.summary}")
            if s.detail:
                lines.append(f"   {'':12}  {'':24} ({s.detail})")
            lines += [f"   {'':12}  {'':24} {n}" for n in s.notes]
        else:
            lines.append(f"{s.number}. {'--':12}  {s.name:<24} MISSING")
            lines += [f"   {'':12}  {'':24} seen instead: {i}" for i in s.instead]
    found = sum(s.found for s in journey.steps)
    lines.append(f"{found} of {len(journey.steps)} steps seen on the wire")
    if journey.others:
        lines.append("other messages matched the subject: " + "; ".join(journey.others))
    return "\n".join(lines) + "\n"
