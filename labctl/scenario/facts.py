"""Facts about what crossed the wire, read from the lab's always-on capture.

A scenario states them in words a student knows ("the MTA asked for the MX of stevenchoy.example",
"a connection to the primary MX was refused", "PASS crossed the wire in clear"); this module
checks them against the conversations that :mod:`labctl.traffic` decodes from the packets that
:mod:`labctl.capture` exported. Only the few attributes in :class:`ConversationLike` are used,
so the checks are plain functions of decoded traffic, testable without a lab.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from labctl.capture import Capture, CaptureTail
from labctl.errors import LabctlError
from labctl.lab import Lab
from labctl.scenario import model as m
from labctl.scenario.steps import Context, StepFailed
from labctl.traffic.decode import decode_captures
from labctl.traffic.journey import timeline, trace
from labctl.traffic.pcap import write_merged_pcapng


class EndpointLike(Protocol):
    @property
    def ip(self) -> str: ...
    @property
    def port(self) -> int: ...


class EventLike(Protocol):
    @property
    def kind(self) -> str: ...  # "query", "command", "auth", "refused", ...
    @property
    def text(self) -> str: ...
    @property
    def secrets(self) -> tuple[str, ...]: ...  # credentials in the text, readable by anyone
    @property
    def info(self) -> Mapping[str, Any]: ...  # for a DNS query: {"questions": ["MX? example", ...]}


class ConversationLike(Protocol):
    """One TCP connection or DNS flow, as :class:`labctl.traffic.model.Conversation` has it."""

    @property
    def protocol(self) -> str: ...  # "smtp", "pop3", "dns", ...
    @property
    def transport(self) -> str: ...
    @property
    def client(self) -> EndpointLike: ...
    @property
    def server(self) -> EndpointLike: ...
    @property
    def state(self) -> str: ...  # "refused", "unanswered", "reset", "closed", "open"
    @property
    def events(self) -> Sequence[EventLike]: ...


CAPTURE_LAG = 5.0  # seconds a fact may take to show in the capture files
# tcpdump asks libpcap for a 1 s timeout, so a captured packet is in the file at most about this
# long after it crossed the wire (on a machine that is not starved of CPU).
CAPTURE_SETTLE = 1.2
POLL = 0.5

def conversations(lab: Lab, since: float | None = None) -> Sequence[ConversationLike]:
    """The lab's traffic so far, decoded."""
    names = {h.address: h.fqdn for h in lab.status()}
    found, _ = decode_captures(Capture(lab).pcap_bytes(since=since), names)
    return found


def check(ctx: Context, exp: m.TrafficExpect) -> str:
    """Every fact of ``exp``, looking again for a few seconds: the capture lags the wire a little
    (tcpdump gets packets from the kernel in blocks, up to about a second late)."""
    addresses = {h.name: str(h.address) for h in ctx.topology.hosts}
    deadline = ctx.clock() + CAPTURE_LAG
    while True:
        convs = conversations(ctx.lab)
        try:
            return "; ".join(check_fact(fact, convs, addresses) for fact in exp.facts)
        except StepFailed:
            if ctx.clock() >= deadline:
                raise
        ctx.sleep(POLL)


def check_fact(fact: m.Fact, convs: Sequence[ConversationLike], addresses: Mapping[str, str]) -> str:
    """What was seen for ``fact``; StepFailed when the traffic does not show it."""
    if isinstance(fact, m.MxQueried):
        client = addresses[fact.host]
        wanted = f"MX? {fact.domain}"
        asked = [q for c in convs if c.protocol == "dns" and c.client.ip == client
                 for e in c.events if e.kind == "query" for q in e.info.get("questions", ())]
        if wanted.lower() in (q.lower() for q in asked):
            return f"{fact.host} asked {wanted}"
        raise StepFailed(f"{fact.host} to query the MX of {fact.domain}",
                         f"its DNS queries: {', '.join(asked) or 'none'}")
    if isinstance(fact, m.ConnectionRefused):
        server = addresses[fact.host]
        tries = [c for c in convs if c.transport == "tcp" and c.server.ip == server and c.server.port == fact.port]
        if any(c.state == "refused" for c in tries):
            return f"a connection to {fact.host}:{fact.port} was refused"
        raise StepFailed(f"a refused connection to {fact.host}:{fact.port}",
                         f"connections to it: {', '.join(c.state for c in tries) or 'none'}")
    if isinstance(fact, m.Cleartext):
        lines = [e for c in convs if c.protocol == fact.proto for e in c.events
                 if e.kind in ("command", "auth") and e.text.upper().startswith(fact.command)]
        clear = [e for e in lines if e.secrets or e.kind == "command"]
        if clear:
            return f"{fact.command} crossed the wire in clear: {clear[0].text!r}"
        raise StepFailed(f"{fact.proto.upper()} {fact.command} readable on the wire",
                         f"{len(lines)} such line(s), none in clear" if lines else f"no {fact.command} seen")
    src, dst = addresses[fact.source], addresses[fact.target]
    sessions = [c for c in convs if c.transport == "tcp" and c.client.ip == src and c.server.ip == dst
                and c.server.port == fact.port]
    if any(c.state not in ("refused", "unanswered") for c in sessions):
        return f"{fact.source} talked to {fact.target}:{fact.port}"
    raise StepFailed(f"a connection from {fact.source} to {fact.target}:{fact.port}",
                     f"{', '.join(c.state for c in sessions)}" if sessions else "none")


def save_traffic(lab: Lab, folder: Path, *, since: float | None = None, subjects: Sequence[str] = ()) -> list[str]:
    """Write the lab's capture (``capture.pcapng``) and the journey of each sent message (``trace.txt``).

    Called right after the last step, when the newest packets may not be in the files yet: it
    waits out the recorder's block timeout first, and looks again (up to :data:`CAPTURE_LAG`) while a
    sent message is missing from the capture, each look fetching only what the hosts captured
    since the last (:class:`~labctl.capture.CaptureTail`). A message still missing then is named
    in ``trace.txt`` with what the capture did hold: a report says what it could not show.
    """
    deadline = time.monotonic() + CAPTURE_LAG
    time.sleep(CAPTURE_SETTLE)
    names = {h.address: h.fqdn for h in lab.status()}
    tail = CaptureTail(lab)
    sources: dict[str, list[bytes]] = {}
    while True:
        for host, pieces in tail.poll().items():
            sources.setdefault(host, []).extend(pieces)
        buf = io.BytesIO()
        count = write_merged_pcapng(sources, buf, since=since)
        journeys: list[str] = []
        missing = False
        if subjects:
            convs, _ = decode_captures(buf.getvalue(), names)
            for subject in dict.fromkeys(subjects):
                try:
                    journeys.append(timeline(trace(convs, subject=subject)))
                except LabctlError as exc:
                    journeys.append(str(exc))
                    missing = True
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    path = folder / "capture.pcapng"
    path.write_bytes(buf.getvalue())
    written = [f"{path.name} ({count} packets)"]
    if subjects:
        (folder / "trace.txt").write_text("\n\n".join(journeys) + "\n", encoding="utf-8")
        written.append("trace.txt")
    return written
