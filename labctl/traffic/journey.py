"""The journey of one message, from the decoded conversations alone: the article's six steps.

1. submission: the sender's MUA hands the message to its MTA over SMTP;
2. MX query: the MTA asks the DNS for the MX of the recipient's domain;
3. MX answer: the DNS names the mail exchanger;
4. relay: the MTA hands the message to the MX over SMTP (and a backup MX hands it on to a
   better MX: each hand-over is a hop of this step);
5. storage acknowledgement: the MX's 250 after the data (our servers say 250 only once the
   message is on disk, design decision 8);
6. retrieval: the recipient's MUA fetches the message with POP3 RETR (or TOP), or IMAP FETCH.

A message is recognised by its Message-ID wherever it crosses (SMTP DATA/BDAT, POP3 RETR/TOP).
The submission is the earliest SMTP transfer of it; the MTA is that transfer's server; a relay is
a later transfer from the MTA, then from the host that took it, and so on. A step not found is
reported missing, with what was seen in its place: SYNs nobody answered (the MX is down), ARP
requests nobody answered (the MX is switched off), a refused connection, a 4xx or 5xx reply, an
attempt that came before the one that worked (a retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from labctl.errors import LabctlError
from labctl.traffic.arp import NeighbourLookup
from labctl.traffic.model import Conversation, Endpoint, Event, MailMessage
from labctl.traffic.payload import DnsAnswer, DnsQuery, Reply, reply_line
from labctl.traffic.render import clock

STEP_NAMES = ("submission", "MX query", "MX answer", "relay", "storage acknowledgement", "retrieval")


@dataclass(frozen=True)
class Hop:
    """One hand-over of the relay step after the first: a backup MX passing the message on."""

    time: float
    source: str
    target: str
    summary: str
    detail: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JourneyStep:
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
    hops: tuple[Hop, ...] = ()  # the relay: the hand-overs after the first (from a backup MX on)


@dataclass(frozen=True)
class Journey:
    message_id: str | None
    subject: str | None
    steps: tuple[JourneyStep, ...]
    participants: tuple[tuple[str, str], ...]  # (host, role) in the order of the article's figure
    others: tuple[str, ...] = field(default=())  # other messages that matched --subject

    @property
    def complete(self) -> bool:
        return all(s.found for s in self.steps)


def _norm_id(mid: str | None) -> str | None:
    return mid.strip().strip("<>").strip() if mid else None


@dataclass(frozen=True)
class Transfer:
    """One crossing of the message: an SMTP transfer or a POP3 retrieval, in its conversation."""

    conv: Conversation
    msg: MailMessage


@dataclass(frozen=True)
class Sightings:
    """Everything a finder looks at: the capture's conversations, and where the message crossed."""

    conversations: Sequence[Conversation]
    transfers: tuple[Transfer, ...]  # its SMTP transfers, in time order
    retrievals: tuple[Transfer, ...]  # its POP3 and IMAP retrievals, in time order
    lookups: tuple[NeighbourLookup, ...] = ()  # the capture's ARP lookups

    @property
    def domains(self) -> set[str]:
        """The domains it was sent to: the ones whose MX the MTA must look up."""
        return {r.rsplit("@", 1)[-1].lower() for t in self.transfers for r in t.msg.recipients}


@dataclass(frozen=True)
class Lookup:
    """The MTA's MX query, in its DNS conversation."""

    conv: Conversation
    query: Event


def _matches(msg: MailMessage, message_id: str | None, subject: str | None) -> bool:
    if message_id is not None:
        return _norm_id(msg.message_id) == message_id
    return subject is not None and subject.lower() in (msg.subject or "").lower()


def _messages(conversations: Sequence[Conversation], *protocols: str) -> list[Transfer]:
    return sorted((Transfer(c, m) for c in conversations if c.protocol in protocols for m in c.messages),
                  key=lambda t: t.msg.time)


RETRIEVAL = ("pop3", "imap")  # the access protocols step 6 is found in: POP3 RETR/TOP, IMAP FETCH


def _describe(conv: Conversation) -> str:
    """One line on a connection that did not carry the message: how it ended."""
    who = f"{clock(conv.start)} {conv.client.host} -> {conv.server.host}:{conv.server.port}"
    if conv.state == "unanswered":
        return f"{who}: {next((e.text for e in conv.events if e.kind == 'unanswered'), 'no answer')}"
    if conv.state == "refused":
        return f"{who}: connection refused (RST)"
    failure = next((e.payload for e in conv.events if isinstance(e.payload, Reply) and e.payload.code >= 400), None)
    if failure is not None:
        return f"{who}: {reply_line(failure)}"
    if conv.state == "reset":
        return f"{who}: connection reset"
    return f"{who}: {conv.protocol.upper()} session, message not sent"


def _size(m: MailMessage) -> str:
    return f"<message, {m.lines} lines, {m.octets} octets>"


# -- one finder per step of the article, each given what the steps before it found ----------------


def _under_tls(conv: Conversation) -> str:
    """", under TLS 1.3" for a step read from inside TLS (the lab's key log opened it)."""
    return f", under {conv.tls.version}" if conv.tls is not None and conv.tls.version else ""


def find_submission(seen: Sightings) -> tuple[JourneyStep, Transfer | None]:
    """1. The sender's MUA hands the message to its MTA: the earliest SMTP transfer of it."""
    if not seen.transfers:
        return JourneyStep(1, STEP_NAMES[0], False, instead=("no SMTP transfer of this message was captured",)), None
    sub = seen.transfers[0]
    m = sub.msg
    return JourneyStep(1, STEP_NAMES[0], True, m.time, sub.conv.client.host, sub.conv.server.host, _size(m),
                       f"SMTP to port {sub.conv.server.port}{_under_tls(sub.conv)}, from <{m.sender}> to "
                       f"{', '.join(f'<{r}>' for r in m.recipients)}; answered "
                       f"{m.reply_code or '(no reply captured)'} {m.reply_text or ''}".strip()), sub


def find_mx_query(seen: Sightings, sub: Transfer | None) -> tuple[JourneyStep, Lookup | None]:
    """2. The MTA (the submission's server) asks for the MX of a recipient's domain, after the submission."""
    mta = sub.conv.server if sub else None
    domains = seen.domains
    after = sub.msg.time if sub else 0.0
    lookup = None
    if mta is not None:
        lookup = next((Lookup(conv, ev) for conv in seen.conversations
                       if conv.protocol == "dns" and conv.client.ip == mta.ip
                       for ev in conv.events
                       if isinstance(ev.payload, DnsQuery) and ev.time >= after
                       and any(q.type == "MX" and q.name.lower() in domains for q in ev.payload.questions)), None)
    if lookup is None:
        return JourneyStep(2, STEP_NAMES[1], False, instead=(
            f"no MX query from {mta.host if mta else 'the MTA'} for {', '.join(sorted(domains)) or 'the domain'} "
            "(the capture may have started later, or the MTA had the answer cached)",)), None
    return JourneyStep(2, STEP_NAMES[1], True, lookup.query.time, lookup.conv.client.host, lookup.conv.server.host,
                       lookup.query.text, f"DNS over {lookup.conv.transport.upper()}"), lookup


def find_mx_answer(lookup: Lookup | None) -> tuple[JourneyStep, DnsAnswer | None]:
    """3. The DNS names the mail exchanger: the answer with the query's id (RFC 1035 §4.1.1), after it."""
    if lookup is None:
        return JourneyStep(3, STEP_NAMES[2], False, instead=("no MX query, so no answer",)), None
    query = lookup.query
    asked = query.payload.id if isinstance(query.payload, DnsQuery) else None
    found = next((e for e in lookup.conv.events if isinstance(e.payload, DnsAnswer) and e.time >= query.time
                  and e.payload.id == asked), None)
    if found is None or not isinstance(found.payload, DnsAnswer):
        return JourneyStep(3, STEP_NAMES[2], False, instead=("no answer to the MX query was captured",)), None
    answer = found.payload
    return JourneyStep(3, STEP_NAMES[2], True, found.time, lookup.conv.server.host, lookup.conv.client.host,
                       answer.summary, f"rcode {answer.rcode}"), answer


def _unreachable(lookup: NeighbourLookup) -> str:
    return (f"{clock(lookup.start)} {lookup.asker_host} -> {lookup.target_host}: ARP who-has {lookup.target} "
            f"unanswered ({lookup.requests} request{'s' if lookup.requests != 1 else ''}): the host is down "
            "or off the network, so not even a SYN could be sent")


def _attempts(seen: Sightings, client: Endpoint, since: float, until: float, relays: Sequence[Transfer],
              relay: Transfer | None) -> list[str]:
    """What ``client`` tried between ``since`` and ``until`` besides ``relay``, oldest first:
    SMTP connections that did not carry the message, transfers of it that were refused, and
    neighbours it asked for in vain (ARP: a host switched off)."""
    carried = {id(t.conv) for t in relays}  # described below, with the reply to the message
    found = [_describe(conv) for conv in seen.conversations
             if conv.client.ip == client.ip and conv.protocol == "smtp"
             and since <= conv.start < until and id(conv) not in carried]
    found += [f"{clock(t.msg.time)} {t.conv.client.host} -> {t.conv.server.host}: message refused: "
              f"{t.msg.reply_code} {t.msg.reply_text}" for t in relays if t is not relay]
    found += [_unreachable(n) for n in seen.lookups
              if n.asker == client.ip and not n.answered and since <= n.start < until]
    return sorted(found)  # each starts with its time of day


@dataclass(frozen=True)
class _Hop:
    """One hand-over of the relay step, found: the transfer, what was tried before it."""

    transfer: Transfer
    attempts: tuple[str, ...]


def _next_hop(seen: Sightings, client: Endpoint, since: float) -> tuple[_Hop | None, tuple[str, ...]]:
    """The first transfer of the message from ``client`` after ``since`` that got a 250, with the
    attempts before it; else None and everything ``client`` tried since (the last refused transfer too)."""
    relays = [t for t in seen.transfers if t.conv.client.ip == client.ip and t.msg.time >= since]
    accepted = next((t for t in relays if t.msg.reply_code == 250), None)
    if accepted is None:
        return None, tuple(_attempts(seen, client, since, float("inf"), relays, None))
    return _Hop(accepted, tuple(_attempts(seen, client, since, accepted.conv.start, relays, accepted))), ()


def relay_chain(seen: Sightings, sub: Transfer | None) -> tuple[list[_Hop], tuple[str, ...]]:
    """4. The hand-overs from the MTA on: the MTA to an MX, and on from each MX that relayed it
    (a backup MX queues it and passes it to a better MX, RFC 5321 §5.1). Also what the last host
    reached tried after it, without success so far (the message is still on its way there)."""
    hops: list[_Hop] = []
    if sub is None:
        return hops, ()
    client, since, visited = sub.conv.server, sub.msg.time, {sub.conv.client.ip, sub.conv.server.ip}
    while True:
        hop, tried = _next_hop(seen, client, since)
        if hop is None or hop.transfer.conv.server.ip in visited:  # a loop would never end
            return hops, tried
        hops.append(hop)
        client, since = hop.transfer.conv.server, hop.transfer.msg.time
        visited.add(client.ip)


def _hop_step(hop: _Hop, onward: bool) -> Hop:
    t = hop.transfer
    detail = f"SMTP to port {t.conv.server.port}{_under_tls(t.conv)}"
    if onward:
        detail += f"; {t.conv.server.host} answered {t.msg.reply_code} and queued it to relay it on (a backup MX)"
    return Hop(t.msg.time, t.conv.client.host, t.conv.server.host, _size(t.msg), detail,
               tuple(f"earlier attempt: {a}" for a in hop.attempts))


def find_relay(seen: Sightings, sub: Transfer | None) -> tuple[JourneyStep, Transfer | None]:
    """4. The MTA hands the message to the MX, and each backup MX on to the next: the first later
    transfer from each that got a 250, with the attempts before it (unanswered, refused, 4xx,
    unanswered ARP) as notes. Returns the step and the last transfer (the one the storage
    acknowledgement answers)."""
    mta = sub.conv.server if sub else None
    hops, stuck = relay_chain(seen, sub)
    if not hops:
        relays = [t for t in seen.transfers[1:] if mta is not None and t.conv.client.ip == mta.ip]
        last = relays[-1] if relays else None
        if last is not None and sub is not None:  # refused every time: the last try, the rest as notes
            step = _hop_step(_Hop(last, tuple(_attempts(seen, last.conv.client, sub.msg.time, float("inf"),
                                                        relays, last))), False)
            return JourneyStep(4, STEP_NAMES[3], True, step.time, step.source, step.target, step.summary, step.detail,
                               notes=step.notes), last
        return JourneyStep(4, STEP_NAMES[3], False, instead=stuck or (
            f"no SMTP connection from {mta.host if mta else 'the MTA'} to an MX after the submission",)), None
    shown = [_hop_step(h, onward=i < len(hops) - 1 or bool(stuck)) for i, h in enumerate(hops)]
    first = shown[0]
    return JourneyStep(4, STEP_NAMES[3], True, first.time, first.source, first.target, first.summary, first.detail,
                       notes=first.notes, hops=tuple(shown[1:])), hops[-1].transfer


def find_storage(relay: Transfer | None, seen: Sightings | None = None) -> JourneyStep:
    """5. The MX's 250 after the data: our servers say it only once the message is on disk. A
    backup MX's 250 is no storage: it holds the message only until a better MX takes it, so a
    host that went on trying to hand it on (seen in ``seen``) has not stored it."""
    if relay is None:
        return JourneyStep(5, STEP_NAMES[4], False, instead=("no relay, so nothing stored on the MX",))
    m = relay.msg
    if m.reply_code != 250:
        return JourneyStep(5, STEP_NAMES[4], False, instead=(
            f"the MX answered {m.reply_code} {m.reply_text}" if m.reply_code else "no reply to the data was captured",))
    stuck = _next_hop(seen, relay.conv.server, m.time)[1] if seen is not None else ()
    if stuck:
        return JourneyStep(5, STEP_NAMES[4], False, instead=(
            f"{relay.conv.server.host} queued it ({m.reply_code} {m.reply_text}) to relay it on, and has not "
            "handed it on yet:", *stuck))
    return JourneyStep(5, STEP_NAMES[4], True, m.reply_time, relay.conv.server.host, relay.conv.client.host,
                       f"{m.reply_code} {m.reply_text}", "the MX's reply after the data: stored")


def find_retrieval(seen: Sightings, sub: Transfer | None,
                   relay: Transfer | None) -> tuple[JourneyStep, Transfer | None]:
    """6. The recipient's MUA fetches it with POP3 RETR (or TOP) or IMAP FETCH: from the MX it was
    relayed to last, if any."""
    mx_ip = relay.conv.server.ip if relay else None
    fetched = next((t for t in seen.retrievals if mx_ip is None or t.conv.server.ip == mx_ip), None)
    fetched = fetched or (seen.retrievals[0] if seen.retrievals else None)
    if fetched is None:
        after = sub.msg.time if sub else 0.0
        sessions = [_describe(c) if c.state in ("refused", "unanswered") else
                    f"{clock(c.start)} {c.client.host} -> {c.server.host}:{c.server.port}: {c.protocol.upper()} "
                    f"session, {len(c.messages)} message(s) retrieved, not this one"
                    for c in seen.conversations if c.protocol in RETRIEVAL and c.start >= after]
        return JourneyStep(6, STEP_NAMES[5], False, instead=tuple(sessions) or (
            "no POP3 or IMAP retrieval of this message (has the recipient fetched mail since?)",)), None
    m = fetched.msg
    return JourneyStep(6, STEP_NAMES[5], True, m.time, fetched.conv.server.host, fetched.conv.client.host,
                       f"{m.command}: {_size(m)}",
                       f"{fetched.conv.protocol.upper()} from port {fetched.conv.server.port}"
                       f"{_under_tls(fetched.conv)}"), fetched


def trace(conversations: Sequence[Conversation], message_id: str | None = None,
          subject: str | None = None, lookups: Sequence[NeighbourLookup] = ()) -> Journey:
    """Reconstruct the six steps for the message with this Message-ID (or Subject containing
    ``subject``); ``lookups`` are the capture's ARP lookups (a host switched off shows only there)."""
    if message_id is None and subject is None:
        raise LabctlError("say which message: a Message-ID, or --subject TEXT")
    wanted = _norm_id(message_id)
    smtp = _messages(conversations, "smtp")
    pop = _messages(conversations, *RETRIEVAL)
    matching = [t for t in smtp + pop if _matches(t.msg, wanted, subject)]
    if not matching:
        seen = sorted({f"{m.msg.message_id or '(no Message-ID)'}  {m.msg.subject or ''}".strip()
                       for m in smtp + pop})
        listing = "\n  ".join(seen) if seen else "(none: no SMTP DATA, POP3 RETR or IMAP FETCH in the capture)"
        what = f"Message-ID {message_id}" if message_id else f"subject containing {subject!r}"
        raise LabctlError(f"no message with {what} crossed the wire in this capture; messages seen:\n  {listing}")
    first = min(matching, key=lambda t: t.msg.time)
    others: tuple[str, ...] = ()
    if wanted is None:
        wanted = _norm_id(first.msg.message_id)
        others = tuple(sorted({f"{t.msg.message_id} {t.msg.subject}" for t in matching
                               if _norm_id(t.msg.message_id) != wanted}))
    by_subject = None if wanted else subject
    sightings = Sightings(conversations, tuple(t for t in smtp if _matches(t.msg, wanted, by_subject)),
                          tuple(t for t in pop if _matches(t.msg, wanted, by_subject)), tuple(lookups))

    # The article's order; each step is looked for where the one before it leaves the message.
    submitted, sub = find_submission(sightings)
    queried, lookup = find_mx_query(sightings, sub)
    answered, answer = find_mx_answer(lookup)
    relayed, relay = find_relay(sightings, sub)
    stored = find_storage(relay, sightings)
    retrieved, fetched = find_retrieval(sightings, sub, relay)

    participants = (
        (sub.conv.client.host if sub else "sender's MUA", "MUA"),
        (sub.conv.server.host if sub else "MTA", "MTA"),
        (lookup.conv.server.host if lookup else "DNS", "DNS"),
        # a backup MX that handed it on: the target of every hop but the last
        *((target, "backup MX") for target in [relayed.target, *(h.target for h in relayed.hops)][:len(relayed.hops)]
          if target is not None),
        (relay.conv.server.host if relay else next(iter(answer.exchanges if answer else ()), "MX"), "MX"),
        (fetched.conv.client.host if fetched else "recipient's MUA", "MUA"),
    )
    return Journey(first.msg.message_id, first.msg.subject,
                   (submitted, queried, answered, relayed, stored, retrieved), participants, others)


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
            for k, hop in enumerate(s.hops, start=2):
                lines.append(f"   {clock(hop.time)}  {f'{s.name}, hop {k}':<24} {hop.source} -> {hop.target}: "
                             f"{hop.summary}")
                lines.append(f"   {'':12}  {'':24} ({hop.detail})")
                lines += [f"   {'':12}  {'':24} {n}" for n in hop.notes]
        else:
            lines.append(f"{s.number}. {'--':12}  {s.name:<24} MISSING")
            lines += [f"   {'':12}  {'':24} seen instead: {i}" for i in s.instead]
    found = sum(s.found for s in journey.steps)
    lines.append(f"{found} of {len(journey.steps)} steps seen on the wire")
    if journey.others:
        lines.append("other messages matched the subject: " + "; ".join(journey.others))
    return "\n".join(lines) + "\n"
