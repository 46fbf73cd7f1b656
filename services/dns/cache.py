"""Replies in wire form per question, made for the zones once: a query is answered by a lookup.

The lab's zones change only when they are replaced, and a reply depends on nothing but the query's
octets after its ID (flags, question, EDNS), the transport (UDP truncates) and the zones. So for
a set of zones (the server: a second after it listens, services.dns.server.start),
:class:`Answerer` asks :func:`services.dns.answer.respond` every question they can answer (each
name that exists, every type served and ANY) in the shapes most clients send (RD set; no EDNS, or
EDNS 0 with a 1232-octet payload; UDP) and keeps each reply in wire form.
Other well-formed questions (a name that does not exist, another shape) are kept the first time
they are answered, up to :data:`CACHE_ENTRIES`.

A query whose octets match a kept one, but for its ID and the case of its name, gets the kept reply
with only its own ID and its own question (the case as asked, RFC 1035 §7.1, RFC 4343 §4) copied
in. That this is byte for byte what :func:`respond` gives is what ``tests/unit/test_dns_cache.py``
checks; the argument is in :func:`_key` and :meth:`_Entry.of`. Anything else, and garbage, goes
to :func:`respond`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal, NamedTuple

import dns.message
import dns.name
import dns.rdatatype

from services.dns.answer import HEADER_LEN, OUTSIDE_NOTE, Reply, respond
from services.dns.zones import SUPPORTED_TYPES, Zones

Transport = Literal["udp", "tcp"]

CACHE_ENTRIES = 4096  # questions learned after the zones loaded; least recently asked go first
CACHED_RCODES = ("NOERROR", "NXDOMAIN", "REFUSED")  # answers to well-formed questions
# Notes a kept reply may carry: a name outside the lab (a student's `dig example.com`, a resolver
# pointed at the lab) is asked as often as one inside, and dnspython's answer costs 50-100 us.
CACHED_NOTES = ("", OUTSIDE_NOTE)

# The shapes of query whose replies are made at zone load: RD set (stub resolvers, dnsperf, dig),
# without EDNS (glibc's stub, dnsperf) and with EDNS 0 and a 1232-octet payload (the DNS flag day
# 2020 size: dig's, and today's resolvers'). Over UDP only: TCP carries the rare reply too big for
# UDP. Each shape costs a respond() per name and type at every load (about 0.1 ms each on an idle
# core, a few hundred for a lab); any other shape is learned when first asked.
PRECOMPUTED_PAYLOADS: tuple[int | None, ...] = (None, 1232)
PRECOMPUTED_TYPES = tuple(sorted(SUPPORTED_TYPES)) + (dns.rdatatype.ANY,)

_new_tuple = tuple.__new__
_NAME_END = b"\x00"  # the root label that ends an uncompressed name
_QUESTION_TAIL = 4  # QTYPE and QCLASS after the name (RFC 1035 §4.1.2)


class _Entry(NamedTuple):
    """A kept reply: its octets around the question, and what the log line says about it."""

    head: bytes  # the reply's header after the ID
    tail: bytes  # everything after the question
    question: bytes  # the question as it was asked when kept, to tell a query in another case
    reply: Reply

    @classmethod
    def of(cls, query: bytes, reply: Reply, question_end: int) -> _Entry | None:
        """The entry for ``reply``, or None if it does not carry the question exactly as asked.

        The reply's question is dnspython's rendering of the query's; it is the query's octets
        when the query's name was written plainly (no compression pointer, which a reply never
        copies). A query equal to this one but for the case of letters in the name parses to
        the same name in that case, so its reply has its own octets in the same place; the rest
        is the same octets, since name compression ignores case (RFC 1035 §4.1.4, §2.3.3).
        """
        wire = reply.wire
        if wire is None or wire[HEADER_LEN:question_end] != query[HEADER_LEN:question_end]:
            return None
        return cls(wire[2:HEADER_LEN], wire[question_end:], query[HEADER_LEN:question_end], reply)


# The kept replies by key (case folded), and the same by the query's exact octets after its ID:
# the reply after its ID, and the fields of its Reply after the wire.
_Made = dict[tuple[Transport, bytes], _Entry]
_AsMade = dict[bytes, tuple[bytes, tuple[str, str, str, str, None]]]


class Precomputed(NamedTuple):
    """What :meth:`Answerer.precomputed` makes: the kept replies by key, and by exact octets."""

    made: _Made
    as_made: _AsMade


def _key(query: bytes, transport: Transport) -> tuple[tuple[Transport, bytes], int] | None:
    """What a kept reply is found by, and where the question ends; None if no reply can be kept.

    The key is the query after its ID with the name's octets in lower case. The name is taken to
    end at the first zero octet after the header: if it does not (a compression pointer, a zero
    inside a label), the key is still exact but for letters in those octets, and :meth:`_Entry.of`
    keeps no reply that does not echo them, so a wrong split finds nothing. ``bytes.lower`` changes
    only the octets of ASCII letters, and none of them is a valid label length (at most 63) or a
    pointer into the header (at most 11): two queries with one key differ in letters only.
    """
    end = query.find(_NAME_END, HEADER_LEN) + 1
    question_end = end + _QUESTION_TAIL
    if end == 0 or question_end > len(query):
        return None
    return (transport, query[2:HEADER_LEN] + query[HEADER_LEN:end].lower() + query[end:]), question_end


class Answerer:
    """:func:`respond` over one set of zones, its replies made at load and kept per question.

    Replace the whole object when the zones change: its replies belong to them.
    """

    def __init__(self, zones: Zones, entries: int = CACHE_ENTRIES, *, precompute: bool = True) -> None:
        """``precompute=False``: answer with :func:`respond` until :meth:`adopt` is given
        :meth:`precomputed` (the server makes them on a worker thread once it is listening, so that
        a name server starting beside four other hosts answers at once)."""
        self.zones = zones
        self._entries = entries
        self._made: _Made = {}  # at load; only read afterwards
        # The same replies by the query's octets after its ID exactly as made (the case too):
        # what nearly every query is, found with one slice and one lookup (the reply after its
        # ID, and the fields of its Reply after the wire). UDP only, as those made are.
        self._as_made: _AsMade = {}
        self._learned: OrderedDict[tuple[Transport, bytes], _Entry] = OrderedDict()
        if precompute:
            self.adopt(self.precomputed())

    def precomputed(self) -> Precomputed:
        """The replies to every question of :func:`_common_queries`, made from the zones alone
        (nothing of this object changes: safe on another thread)."""
        made: _Made = {}
        as_made: _AsMade = {}
        for query in _common_queries(self.zones):
            found = _key(query, "udp")
            assert found is not None  # dnspython writes a question plainly
            key, question_end = found
            entry = _Entry.of(query, respond(query, self.zones, transport="udp"), question_end)
            if entry is not None and entry.reply.bug is None:
                made[key] = entry
                wire, qname, qtype, rcode, note, _ = entry.reply
                assert wire is not None  # _Entry.of keeps none without
                as_made[query[2:]] = (wire[2:], (qname, qtype, rcode, note, None))
        return Precomputed(made, as_made)

    def adopt(self, replies: Precomputed) -> None:
        """Answer from ``replies`` (this object's :meth:`precomputed`) from the next query on.
        Each lookup reads one dict attribute once, so it sees the old dict or the new, whole."""
        self._made, self._as_made = replies.made, replies.as_made

    def __len__(self) -> int:
        """How many replies are kept."""
        return len(self._made) + len(self._learned)

    def respond(self, query: bytes, *, transport: Transport) -> Reply:
        if transport == "udp":
            made = self._as_made.get(query[2:])
            if made is not None:
                # What Reply(...) does, without the Python-level __new__ a NamedTuple adds (0.2 us).
                return _new_tuple(Reply, (query[:2] + made[0], *made[1]))
        found = _key(query, transport)
        if found is None:
            return respond(query, self.zones, transport=transport)
        key, question_end = found
        entry = self._made.get(key)
        if entry is None:
            entry = self._learned.get(key)
            if entry is None:
                return self._learn(query, key, question_end, transport)
            self._learned.move_to_end(key)
        question = query[HEADER_LEN:question_end]
        reply = entry.reply
        qname = reply.qname if question == entry.question else _asked(query)
        return Reply(query[:2] + entry.head + question + entry.tail, qname, reply.qtype, reply.rcode, reply.note)

    def _learn(self, query: bytes, key: tuple[Transport, bytes], question_end: int, transport: Transport) -> Reply:
        reply = respond(query, self.zones, transport=transport)
        # Only plain answers are kept: random garbage must not push the real questions out.
        if reply.bug is None and reply.rcode in CACHED_RCODES and reply.note in CACHED_NOTES:
            entry = _Entry.of(query, reply, question_end)
            if entry is not None:
                self._learned[key] = entry
                if len(self._learned) > self._entries:
                    self._learned.popitem(last=False)
        return reply


def _common_queries(zones: Zones) -> Iterator[bytes]:
    """Every question the zones answer, in each shape of :data:`PRECOMPUTED_PAYLOADS`, RD set."""
    for zone in zones:
        for name in sorted(zone.names):
            for rdtype in PRECOMPUTED_TYPES:
                for payload in PRECOMPUTED_PAYLOADS:
                    q = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 0)
                    q.id = 0
                    yield q.to_wire()


def _asked(query: bytes) -> str:
    """The query's name as asked, for the log line (only when its case differs from the kept one)."""
    try:
        return dns.name.from_wire(query, HEADER_LEN)[0].to_text()
    except Exception:  # noqa: BLE001 - it parsed when its reply was made; a log line must not fail
        return "-"
