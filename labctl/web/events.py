"""The live part of ``labctl web``: a numbered log of what changed, and its Server-Sent Events.

One :class:`EventLog` per server. Whoever learns something appends to it (the capture follower:
an ``exchange`` each time a conversation gains settled events; the host watcher: ``hosts`` when a
host's state changes; ``problem`` when the capture cannot be read); every SSE client reads it from
the id it last saw. Ids are consecutive from 1, so a client that reconnects with
``Last-Event-ID: N`` (the browser sends it by itself) or ``?since=N`` gets exactly what it missed;
an id above the log's last (the server was restarted) starts it again from the first. While
nothing happens a comment line is sent every :data:`HEARTBEAT` seconds, so proxies and the browser
keep the stream open and a dead client is noticed by the failed write.

Pure (no socket, no thread of its own) apart from the condition variable that wakes the streams.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

HEARTBEAT = 15.0  # seconds of silence before a comment line keeps the stream alive
RETRY_MS = 2000  # how soon the browser reconnects after the stream dropped (SSE "retry:")


@dataclass(frozen=True)
class LogEvent:
    id: int
    type: str  # "exchange", "hosts", "problem", "action"
    data: dict[str, Any]


def sse(event: LogEvent) -> bytes:
    """One event in the text/event-stream format (WHATWG HTML §9.2): id, event type, one data line."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data, separators=(',', ':'))}\n\n".encode()


HEARTBEAT_LINE = b": heartbeat\n\n"


def preamble() -> bytes:
    return f"retry: {RETRY_MS}\n\n".encode()


def parse_last_id(header: str | None, query: str | None) -> int:
    """Where a client resumes: its Last-Event-ID header, else ``?since=``; 0 (everything) if neither."""
    for text in (header, query):
        if text is not None and text.strip().isdigit():
            return int(text.strip())
    return 0


class EventLog:
    def __init__(self) -> None:
        self._events: list[LogEvent] = []
        self._changed = threading.Condition()
        self.closed = False

    def append(self, type_: str, data: dict[str, Any]) -> LogEvent:
        with self._changed:
            event = LogEvent(len(self._events) + 1, type_, data)
            self._events.append(event)
            self._changed.notify_all()
            return event

    @property
    def last_id(self) -> int:
        with self._changed:
            return len(self._events)

    def since(self, last: int) -> list[LogEvent]:
        """The events after id ``last`` (all of them if ``last`` is beyond the log: a restarted server)."""
        with self._changed:
            if last > len(self._events):
                last = 0
            return self._events[last:]

    def wait(self, last: int, timeout: float) -> list[LogEvent]:
        """The events after ``last``, waiting up to ``timeout`` seconds for one; [] on timeout or close."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed or len(self._events) != last, timeout)
        return [] if self.closed else self.since(last)

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def stream(self, last: int, heartbeat: float = HEARTBEAT) -> Iterator[bytes]:
        """The SSE body from after ``last``: the missed events, then each new one, heartbeats between."""
        yield preamble()
        if last > self.last_id:
            last = 0
        while not self.closed:
            events = self.wait(last, heartbeat)
            if not events:
                if not self.closed:
                    yield HEARTBEAT_LINE
                continue
            for event in events:
                yield sse(event)
            last = events[-1].id
