"""``labctl traffic --follow``: what is new since the last look, from a decoder fed more and more.

The live lab's shell feeds new frames to one :class:`~labctl.traffic.decode.TrafficDecoder` as
the capture grows, then asks a :class:`Follower` for what to print. A printed line cannot be taken
back, so the follower prints an event only once no later frame can change it, and the lines a
follow prints are, conversation by conversation, the lines one decode of the whole capture prints
(``tests/unit/test_traffic_follow.py`` replays captures a few frames at a time to hold it to that).
What can still change, and is therefore held back:

* the last event of an open TCP connection: its dialogue is re-decoded as it grows (see
  :mod:`labctl.traffic.decode`), so a multi-line reply gains lines and a message whose end is not
  captured yet becomes complete;
* a connection whose SYNs have had no answer so far: a SYN-ACK may still come (then the note
  "unanswered" never was), and a retransmitted SYN changes its count. It is printed once the
  capture clock has gone :data:`UNANSWERED_SETTLE` past its last SYN with no answer, so a host
  that is down shows up while the client still retries; a SYN retransmitted after that (Linux
  waits 1, 2, 4, 8 ... s between them) is the one thing a follow can print with a lower count than
  a later full decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from labctl.traffic.model import Conversation, Event

ConversationKey = tuple[str, str, int, str, int, float]
# A connection seen first on one host's capture and then on the other's (whose file reached us
# later) starts a little earlier once both are merged: the same connection, not a new one. A
# client port is not used again for the same server within this long (TIME_WAIT is a minute).
SAME_CONNECTION_WINDOW = 2.0  # seconds
# Linux answers a lost SYN after 1 s, then 2 s, then 4 s (RFC 6298 §2 initial RTO, doubled): three
# seconds of silence after a SYN is a host down or unreachable, not a slow handshake.
UNANSWERED_SETTLE = 3.0  # seconds


def key(conv: Conversation) -> ConversationKey:
    return (conv.transport, conv.client.ip, conv.client.port, conv.server.ip, conv.server.port, conv.start)


def settled(conv: Conversation, now: float | None, final: bool) -> int:
    """How many of ``conv``'s events no later frame can change (see the module's docstring)."""
    if final or conv.transport != "tcp":
        return len(conv.events)
    if conv.state == "open":
        return next((i for i, e in enumerate(conv.events) if not e.complete), len(conv.events))
    if conv.state == "unanswered":
        return len(conv.events) if now is not None and now - conv.end >= UNANSWERED_SETTLE else 0
    return len(conv.events)


@dataclass
class Follower:
    shown: dict[ConversationKey, int] = field(default_factory=dict)  # events printed per conversation
    _latest: dict[tuple[str, str, int, str, int], ConversationKey] = field(default_factory=dict)  # per 5-tuple

    def _key(self, conv: Conversation) -> ConversationKey:
        k = key(conv)
        if k not in self.shown:
            before = self._latest.get(k[:5])
            if before is not None and abs(before[5] - k[5]) < SAME_CONNECTION_WINDOW:
                self.shown[k] = self.shown.pop(before)  # its start moved: what was printed stays printed
            else:
                self.shown[k] = 0  # seen, nothing printed yet (a later look may move its start)
        self._latest[k[:5]] = k
        return k

    def poll(self, conversations: Sequence[Conversation], *, now: float | None = None,
             final: bool = False) -> list[tuple[Conversation, list[Event]]]:
        """The events not shown before, per conversation (new conversations included, in start order).

        ``now``: the capture clock (the newest frame's time, or later when the capture has been
        silent); without it an unanswered connection waits for ``final``. ``final``: the capture
        ended; nothing is held back.
        """
        out = []
        for conv in conversations:
            k = self._key(conv)
            done = self.shown[k]
            ready = settled(conv, now, final)
            if ready > done:
                out.append((conv, conv.events[done:ready]))
                self.shown[k] = ready
        return out
