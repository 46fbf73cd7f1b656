"""Answers remembered per question: the lab's zones change only when they are replaced.

A reply depends on nothing but the query's octets after its ID (flags, question, EDNS options),
the transport (UDP truncates) and the zones. So a repeated question is answered with the stored
reply under the new ID, without parsing or looking anything up: about a tenth of the cost of
:func:`services.dns.answer.respond`, which is what the server can do per second.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from services.dns.answer import HEADER_LEN, Reply, respond
from services.dns.zones import Zones

CACHE_ENTRIES = 4096  # distinct questions kept; least recently asked go first
CACHED_RCODES = ("NOERROR", "NXDOMAIN", "REFUSED")  # answers to well-formed questions


class Answerer:
    """:func:`respond` over one set of zones, with the replies to well-formed questions cached.

    Replace the whole object when the zones change: its cache belongs to them.
    """

    def __init__(self, zones: Zones, entries: int = CACHE_ENTRIES) -> None:
        self.zones = zones
        self._entries = entries
        self._replies: OrderedDict[tuple[str, bytes], Reply] = OrderedDict()

    def respond(self, query: bytes, *, transport: Literal["udp", "tcp"]) -> Reply:
        if len(query) < HEADER_LEN:
            return respond(query, self.zones, transport=transport)
        key = (transport, query[2:])
        hit = self._replies.get(key)
        if hit is not None and hit.wire is not None:
            self._replies.move_to_end(key)
            # Built directly: dataclasses.replace inspects the fields on every call, a cost that
            # shows at thousands of queries a second.
            return Reply(query[:2] + hit.wire[2:], hit.qname, hit.qtype, hit.rcode)
        reply = respond(query, self.zones, transport=transport)
        # Malformed queries are not kept: random garbage must not push the real questions out.
        if reply.wire is not None and reply.bug is None and reply.rcode in CACHED_RCODES and not reply.note:
            self._replies[key] = reply
            if len(self._replies) > self._entries:
                self._replies.popitem(last=False)
        return reply
