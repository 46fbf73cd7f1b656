"""Neighbour lookups (ARP, RFC 826) in a capture: how a host that is switched off shows on the wire.

Before a host sends the first packet to a neighbour on its network it asks "who has 10.89.0.110?"
and waits for the answer. A neighbour that is powered off never answers: Linux asks three times,
a second apart, then gives the waiting connection "No route to host" (EHOSTUNREACH) without a
single SYN on the wire. So an unanswered lookup is the only trace the attempt leaves, and
:func:`lookups` turns the ARP messages of a capture into lookups, answered or not.

A broadcast request is captured by every host on the network: the requests of a lookup are the
most that any one capture saw (the asker's own sees them all), never one per host that heard it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from labctl.traffic.packet import ARP_REPLY, ARP_REQUEST, Arp

# Linux asks again every second (``retrans_time_ms``) for ``mcast_solicit`` (3) requests, then fails
# the connection; a retry asks anew. Requests further apart than this are a new lookup: merged, a
# later lookup's answer (the host back on) would make the earlier unanswered ones look answered.
LOOKUP_GAP = 1.5


@dataclass(frozen=True)
class NeighbourLookup:
    """``asker`` asked for the hardware address of ``target``, ``requests`` times from ``start``."""

    asker: str  # IPv4 addresses
    target: str
    start: float  # seconds since the epoch
    end: float  # the last request
    requests: int
    answered: bool
    asker_host: str = ""  # the lab's names for the two, where known (else their addresses)
    target_host: str = ""


@dataclass
class _Open:
    start_ns: int
    last_ns: int
    seen: dict[str, int]  # requests per capture interface
    answered: bool = False


def lookups(messages: Iterable[Arp], names: Mapping[str, str] | None = None) -> list[NeighbourLookup]:
    """The lookups in these ARP messages (in capture order), in order of their first request;
    ``names`` maps addresses to the lab's host names."""
    names = names or {}
    done: list[tuple[str, str, _Open]] = []
    current: dict[tuple[str, str], _Open] = {}
    for a in messages:
        if a.op == ARP_REQUEST and a.sender != a.target:  # sender == target: a gratuitous announcement
            key = (a.sender, a.target)
            found = current.get(key)
            if found is None or found.answered or a.ts_ns - found.last_ns > LOOKUP_GAP * 1e9:
                found = _Open(a.ts_ns, a.ts_ns, {})
                current[key] = found
                done.append((*key, found))
            found.seen[a.vantage] = found.seen.get(a.vantage, 0) + 1
            found.last_ns = a.ts_ns
        elif a.op == ARP_REPLY:
            waiting = current.get((a.target, a.sender))
            if waiting is not None:
                waiting.answered = True
    return [NeighbourLookup(asker, target, o.start_ns / 1e9, o.last_ns / 1e9, max(o.seen.values()), o.answered,
                            names.get(asker, asker), names.get(target, target))
            for asker, target, o in done]
