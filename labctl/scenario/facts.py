"""Facts about what crossed the wire, read from the lab's always-on capture.

A scenario states them in words a student knows ("the MTA asked for the MX of stevenchoy.example",
"a connection to the primary MX was refused", "PASS crossed the wire in clear"); this module
checks them against the conversations that :mod:`labctl.traffic` decodes from the packets the
hosts captured (:mod:`labctl.capture`), reading the events' typed payloads
(:mod:`labctl.traffic.payload`). :func:`check_fact` is a plain function of decoded traffic,
testable without a lab.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from labctl.capture import Capture, CaptureTail
from labctl.errors import LabctlError
from labctl.lab import Lab
from labctl.scenario import model as m
from labctl.scenario.steps import Context, StepFailed
from labctl.traffic.decode import TrafficDecoder
from labctl.traffic.journey import timeline, trace
from labctl.traffic.model import Conversation, Event
from labctl.traffic.payload import CommandLine, Credentials, DnsAnswer, DnsQuery, ImapResponse, Pop3Status
from labctl.traffic.pcap import write_merged_pcapng

# The answers a dns fact may name as such rather than as a record value (RFC 1035 §4.1.1, RFC 2308).
DNS_RCODES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")
CAPTURE_LAG = 5.0  # seconds a fact may take to show in the capture files
# tcpdump asks libpcap for a 1 s timeout, so a captured packet is in the file at most about this
# long after it crossed the wire (on a machine that is not starved of CPU).
CAPTURE_SETTLE = 1.2
POLL = 0.5


class Looks:
    """The lab's capture looked at again and again, decoded as it grows.

    Each :meth:`look` fetches only what the hosts captured since the last (:class:`CaptureTail`)
    and feeds it to one decoder, which re-decodes only the conversations that changed; the
    pieces are kept for :meth:`save`. Frames captured before ``since`` are left out of both.
    """

    def __init__(self, lab: Lab, since: float | None = None) -> None:
        self.tail = CaptureTail(lab)
        self.lab = lab
        self.since = since
        self.decoder = TrafficDecoder({h.address: h.fqdn for h in lab.status()})
        self.sources: dict[str, list[bytes]] = {}

    def fetch(self) -> dict[str, list[bytes]]:
        """What the hosts captured since the last look (kept for :meth:`save`)."""
        new = self.tail.poll()
        for host, pieces in new.items():
            self.sources.setdefault(host, []).extend(pieces)
        return new

    def look(self) -> list[Conversation]:
        """Every conversation so far, decoded."""
        self.decoder.feed_captures(self.fetch(), self.since)
        if self.decoder.wants_keys():  # TLS: read inside with the hosts' key logs, as labctl traffic does
            self.decoder.add_keys(Capture(self.lab).keylogs())
        return self.decoder.conversations()

    def save(self, path: Path) -> int:
        """Write what was looked at as one pcapng, a host per interface; the number of packets."""
        with path.open("wb") as out:
            # With the TLS secrets decoded with (if any), so Wireshark reads inside it too.
            return write_merged_pcapng(self.sources, out, since=self.since, keylog=self.decoder.keys.text() or None)


def check(ctx: Context, exp: m.TrafficExpect) -> str:
    """Every fact of ``exp``, looking again for a few seconds: the capture lags the wire a little
    (tcpdump gets packets from the kernel in blocks, up to about a second late)."""
    addresses = {h.name: str(h.address) for h in ctx.topology.hosts}
    deadline = ctx.clock() + CAPTURE_LAG
    looks = Looks(ctx.lab)
    while True:
        convs = looks.look()
        try:
            return "; ".join(check_fact(fact, convs, addresses) for fact in exp.facts)
        except StepFailed:
            if ctx.clock() >= deadline:
                raise
        ctx.sleep(POLL)


def check_fact(fact: m.Fact, convs: Sequence[Conversation], addresses: Mapping[str, str]) -> str:
    """What was seen for ``fact``; StepFailed when the traffic does not show it."""
    if isinstance(fact, m.MxQueried):
        client = addresses[fact.host]
        asked = [q for c in convs if c.protocol == "dns" and c.client.ip == client
                 for e in c.events if isinstance(e.payload, DnsQuery) for q in e.payload.questions]
        if any(q.type == "MX" and q.name.lower() == fact.domain for q in asked):
            return f"{fact.host} asked MX? {fact.domain}"
        raise StepFailed(f"{fact.host} to query the MX of {fact.domain}",
                         f"its DNS queries: {', '.join(map(str, asked)) or 'none'}")
    if isinstance(fact, m.ConnectionRefused):
        server = addresses[fact.host]
        tries = [c for c in convs if c.transport == "tcp" and c.server.ip == server and c.server.port == fact.port]
        if any(c.state == "refused" for c in tries):
            return f"a connection to {fact.host}:{fact.port} was refused"
        raise StepFailed(f"a refused connection to {fact.host}:{fact.port}",
                         f"connections to it: {', '.join(c.state for c in tries) or 'none'}")
    if isinstance(fact, m.Cleartext | m.Encrypted):
        return _secrecy(fact, convs)
    if isinstance(fact, m.DnsLooked):
        return _dns_looked(fact, convs, addresses)
    if isinstance(fact, m.Relayed):
        return _relayed(fact, convs, addresses)
    if isinstance(fact, m.Pop3Session):
        return _pop3_session(fact, convs)
    if isinstance(fact, m.ImapSession):
        return _imap_session(fact, convs)
    src, dst = addresses[fact.source], addresses[fact.target]
    sessions = [c for c in convs if c.transport == "tcp" and c.client.ip == src and c.server.ip == dst
                and c.server.port == fact.port]
    if any(c.state not in ("refused", "unanswered") for c in sessions):
        return f"{fact.source} talked to {fact.target}:{fact.port}"
    raise StepFailed(f"a connection from {fact.source} to {fact.target}:{fact.port}",
                     f"{', '.join(c.state for c in sessions)}" if sessions else "none")


def _secrecy(fact: m.Cleartext | m.Encrypted, convs: Sequence[Conversation]) -> str:
    """Did ``fact.command`` cross readable by anyone (Cleartext), or only inside TLS (Encrypted)?

    A line the decoder read out of TLS with the lab's key log (``Event.decrypted``) was ciphertext
    on the wire: it counts as encrypted, never as clear text. With ``fact.subject`` only the
    sessions that carried such a message are looked at.
    """
    if fact.subject is not None:
        wanted = fact.subject.lower()
        convs = [c for c in convs if any(wanted in (msg.subject or "").lower() for msg in c.messages)]
    lines = [(c, e) for c in convs if c.protocol == fact.proto for e in c.events
             if e.kind in ("command", "auth") and _command(c, e).upper().startswith(fact.command)]
    clear = [e for _, e in lines if not e.decrypted and (e.secrets or e.kind == "command")]
    hidden = [(c, e) for c, e in lines if e.decrypted]
    what = f"{fact.proto.upper()} {fact.command}" + (f" in the session of {fact.subject!r}" if fact.subject else "")
    if isinstance(fact, m.Cleartext):
        if clear:
            return f"{fact.command} crossed the wire in clear: {clear[0].text!r}"
        raise StepFailed(f"{what} readable on the wire",
                         f"{len(lines)} such line(s), none in clear (inside TLS)" if lines
                         else f"no {fact.command} seen")
    if clear:
        raise StepFailed(f"{what} only inside TLS", f"it crossed in clear: {clear[0].text!r}")
    if hidden:
        c, e = hidden[0]
        tls = c.tls
        how = f"{tls.started}, {tls.version or 'TLS'}" if tls is not None else "TLS"
        return f"{fact.command} crossed the wire encrypted ({how}; read with the lab's key log: {e.shown(True)!r})"
    sessions = [c for c in convs if c.protocol == fact.proto and c.tls is not None]
    problems = sorted({c.tls.problem for c in sessions if c.tls is not None and c.tls.problem})
    seen = f"no {fact.command} and no TLS session"
    if sessions:
        seen = (f"{len(sessions)} {fact.proto.upper()} session(s) in TLS, no {fact.command} read inside"
                + (f" ({'; '.join(problems)})" if problems else ""))
    raise StepFailed(f"{what} inside TLS, read with the lab's key log", seen)


def _command(conv: Conversation, event: Event) -> str:
    """A client line as its command: an IMAP line without its tag ("a1 LOGIN ..." is LOGIN)."""
    return event.text.partition(" ")[2] if conv.protocol == "imap" else event.text


def _answer_fits(fact: m.DnsLooked, answer: DnsAnswer, addresses: Mapping[str, str]) -> bool:
    """Does ``answer`` say what the fact names: an rcode, NODATA, or a record's value (a lab
    host's name standing for its address, which a scenario cannot know before the lab is up)?
    A value may also be in the additional section: an MX answer carries its hosts' addresses
    there (RFC 1035 §3.3.9), and the relay then asks no A or AAAA question of its own."""
    if fact.answer is None:
        return True
    records = [r for r in answer.answers if r.type == fact.type]
    if fact.answer == "NODATA":
        return answer.rcode == "NOERROR" and not records
    if fact.answer in DNS_RCODES:
        return answer.rcode == fact.answer
    wanted = addresses.get(fact.answer.lower(), fact.answer.lower().rstrip("."))
    return any(wanted in (r.value.lower().rstrip("."), (r.exchange or "").lower())
               for r in (*records, *answer.additional))


def _dns_looked(fact: m.DnsLooked, convs: Sequence[Conversation], addresses: Mapping[str, str]) -> str:
    """The DNS queries for ``fact.name``/``fact.type`` (from ``fact.host``), each with its answer
    (paired by id in its conversation, RFC 1035 §4.1.1): does one fit ``fact.answer``?"""
    client = addresses[fact.host] if fact.host else None
    who = fact.host or "a lab host"
    asked = f"{fact.type}? {fact.name}"
    seen: list[str] = []
    for c in convs:
        if c.protocol != "dns" or (client is not None and c.client.ip != client):
            continue
        answers = {e.payload.id: e.payload for e in c.events if isinstance(e.payload, DnsAnswer)}
        for e in c.events:
            if not isinstance(e.payload, DnsQuery):
                continue
            if not any(q.type == fact.type and q.name.lower() == fact.name for q in e.payload.questions):
                seen += [f"{c.client.host}: {q}" for q in e.payload.questions]
                continue
            answer = answers.get(e.payload.id)
            if answer is not None and _answer_fits(fact, answer, addresses):
                return f"{fact.host or c.client.host} asked {asked} and got {answer.summary}"
            if answer is None and fact.answer is None:
                return f"{fact.host or c.client.host} asked {asked} (no answer captured)"
            seen.append(f"{c.client.host}: {asked} -> {answer.summary if answer else 'no answer captured'}")
    wanted = f"{who} to ask {asked}" + (f" and get {fact.answer}" if fact.answer else "")
    raise StepFailed(wanted, "its DNS queries: " + ("; ".join(dict.fromkeys(seen)) or "none"))


def _relayed(fact: m.Relayed, convs: Sequence[Conversation], addresses: Mapping[str, str]) -> str:
    """One message to ``fact.to`` handed over along ``fact.via`` on the wire: for each pair of hosts
    in turn an SMTP transfer of it (the same Message-ID) from the first to the second, answered
    250, each after the one before."""
    to = fact.to.lower()
    transfers = sorted(((c, msg) for c in convs if c.protocol == "smtp" for msg in c.messages
                        if to in (r.lower() for r in msg.recipients)
                        and (fact.subject is None or fact.subject.lower() in (msg.subject or "").lower())),
                       key=lambda t: t[1].time)
    route = " -> ".join(fact.via)
    ips = [addresses[h] for h in fact.via]
    for mid in dict.fromkeys(msg.message_id for _, msg in transfers):
        since = 0.0
        for a, b in zip(ips, ips[1:], strict=False):
            hop = next((msg for c, msg in transfers if msg.message_id == mid and c.client.ip == a
                        and c.server.ip == b and msg.reply_code == 250 and msg.time >= since), None)
            if hop is None:
                break
            since = hop.time
        else:
            return f"the message {mid} to {fact.to} went {route}"
    seen = [f"{c.client.host} -> {c.server.host} ({msg.reply_code or 'no reply'})" for c, msg in transfers]
    raise StepFailed(f"a message to {fact.to} handed over {route}, each hop answered 250",
                     "its SMTP hand-overs: " + (", ".join(seen) or "none"))


def _pop3_counts(conv: Conversation) -> tuple[str | None, set[str], set[str]]:
    """Who logged in to a POP3 session (USER), and which messages got ``+OK`` to RETR and to DELE."""
    user: str | None = None
    done: dict[str, set[str]] = {"RETR": set(), "DELE": set()}
    asked: CommandLine | None = None
    for e in conv.events:
        if isinstance(e.payload, Credentials) and e.payload.user:
            user = e.payload.user
        elif isinstance(e.payload, CommandLine):
            asked = e.payload
        elif isinstance(e.payload, Pop3Status) and asked is not None:
            if asked.verb in done and e.payload.status == "+OK":
                done[asked.verb].add(asked.argument.strip())
            asked = None
    return user, done["RETR"], done["DELE"]


def _pop3_session(fact: m.Pop3Session, convs: Sequence[Conversation]) -> str:
    """A finished session of the user (the connection no longer open) with exactly those counts."""
    wanted = " and ".join(f"{what} {n} message(s)" for what, n in (("retrieved", fact.retr), ("deleted", fact.dele))
                          if n is not None)
    expected = f"a finished POP3 session of {fact.user}" + (f" that {wanted}" if wanted else "")
    seen = []
    for c in convs:
        if c.protocol != "pop3":
            continue
        user, retr, dele = _pop3_counts(c)
        if (user or "").partition("@")[0].lower() != fact.user.lower():
            continue
        state = "still open" if c.state == "open" else "ended"
        seen.append(f"{state}: RETR {', '.join(sorted(retr)) or 'none'}, DELE {', '.join(sorted(dele)) or 'none'}")
        if c.state != "open" and fact.retr in (None, len(retr)) and fact.dele in (None, len(dele)):
            return f"{fact.user}'s POP3 session {seen[-1]}"
    raise StepFailed(expected, f"{fact.user}'s POP3 sessions: {'; '.join(seen)}" if seen
                     else f"no POP3 session of {fact.user}")


def _imap_counts(conv: Conversation) -> tuple[str | None, set[str], int]:
    """Who logged in to an IMAP session (LOGIN, AUTHENTICATE PLAIN), the message numbers whose
    whole text a FETCH response carried, and how many EXPUNGE responses it got."""
    user: str | None = None
    fetched: set[str] = set()
    expunged = 0
    for e in conv.events:
        if isinstance(e.payload, Credentials) and e.payload.user:
            user = e.payload.user
        elif isinstance(e.payload, ImapResponse) and e.payload.tag == "*":
            if e.payload.status == "FETCH" and e.payload.message is not None:
                fetched.add(e.text.split()[1])  # "* 1 FETCH (BODY[] {77}": message 1
            elif e.payload.status == "EXPUNGE":
                expunged += 1
    return user, fetched, expunged


def _imap_session(fact: m.ImapSession, convs: Sequence[Conversation]) -> str:
    """A finished IMAP session of the user (the connection no longer open) with exactly those counts."""
    wanted = " and ".join(f"{what} {n} message(s)" for what, n in (("fetched", fact.fetched),
                                                                    ("expunged", fact.expunged)) if n is not None)
    expected = f"a finished IMAP session of {fact.user}" + (f" that {wanted}" if wanted else "")
    seen = []
    for c in convs:
        if c.protocol != "imap":
            continue
        user, fetched, expunged = _imap_counts(c)
        if (user or "").partition("@")[0].lower() != fact.user.lower():
            continue
        state = "still open" if c.state == "open" else "ended"
        seen.append(f"{state}: fetched {', '.join(sorted(fetched, key=int)) or 'none'}, {expunged} expunged")
        if c.state != "open" and fact.fetched in (None, len(fetched)) and fact.expunged in (None, expunged):
            return f"{fact.user}'s IMAP session {seen[-1]}"
    raise StepFailed(expected, f"{fact.user}'s IMAP sessions: {'; '.join(seen)}" if seen
                     else f"no IMAP session of {fact.user}")


def save_traffic(lab: Lab, folder: Path, *, since: float | None = None, subjects: Sequence[str] = ()) -> list[str]:
    """Write the lab's capture (``capture.pcapng``) and the journey of each sent message (``trace.txt``).

    Called right after the last step, when the newest packets may not be in the files yet: it
    waits out the recorder's block timeout first, and looks again (up to :data:`CAPTURE_LAG`) while a
    sent message is missing from the capture, each look fetching only what the hosts captured
    since the last (:class:`Looks`). A message still missing then is named in ``trace.txt`` with
    what the capture did hold: a report says what it could not show.
    """
    deadline = time.monotonic() + CAPTURE_LAG
    time.sleep(CAPTURE_SETTLE)
    looks = Looks(lab, since)
    if not subjects:
        looks.fetch()  # only the capture to save: nothing to decode
    journeys: list[str] = []
    while subjects:
        convs = looks.look()
        journeys, missing = [], False
        for subject in dict.fromkeys(subjects):
            try:
                journeys.append(timeline(trace(convs, subject=subject, lookups=looks.decoder.neighbour_lookups())))
            except LabctlError as exc:
                journeys.append(str(exc))
                missing = True
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    path = folder / "capture.pcapng"
    written = [f"{path.name} ({looks.save(path)} packets)"]
    if subjects:
        (folder / "trace.txt").write_text("\n\n".join(journeys) + "\n", encoding="utf-8")
        written.append("trace.txt")
    return written
