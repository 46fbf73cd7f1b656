"""``labctl traffic --follow``: what is new since the last look, from a decoder fed more and more.

The live lab's shell feeds new frames to one :class:`~labctl.traffic.decode.TrafficDecoder` as
the capture grows, then asks a :class:`Follower` for what to print. A conversation's dialogue is
re-decoded when it changed (see :mod:`labctl.traffic.decode`), so its last event may still change
while the connection is open: a message summarised as "end not captured" becomes complete, a
multi-line reply gains its lines. The follower therefore holds back the last event of an open
conversation until something comes after it or the connection closes, and prints every event once.
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


def key(conv: Conversation) -> ConversationKey:
    return (conv.transport, conv.client.ip, conv.client.port, conv.server.ip, conv.server.port, conv.start)


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
        self._latest[k[:5]] = k
        return k

    def poll(self, conversations: Sequence[Conversation], *,
             final: bool = False) -> list[tuple[Conversation, list[Event]]]:
        """The events not shown before, per conversation (new conversations included, in start order).

        ``final``: the capture ended; nothing is held back.
        """
        out = []
        for conv in conversations:
            k = self._key(conv)
            done = self.shown.get(k, 0)
            still_growing = not final and conv.state == "open" and conv.transport == "tcp"
            settled = len(conv.events) - 1 if still_growing else len(conv.events)
            if settled > done:
                out.append((conv, conv.events[done:settled]))
                self.shown[k] = settled
        return out
