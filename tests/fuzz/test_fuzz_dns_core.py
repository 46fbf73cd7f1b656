"""Fuzzing the DNS answering core in process: the same packets as test_fuzz_dns.py, no sockets.

Without a round trip per case, this reaches depths the socket tests cannot in the same time
(``MAILLAB_FUZZ_EXAMPLES=100000``). For every packet, over UDP and TCP: no exception, nothing
but a whole reply with the query's ID (or nothing, when there is no header to answer or it is a
response), never a SERVFAIL for a bug of ours; and the server's :class:`Answerer`, with its replies
made at zone load and learned, gives byte for byte what :func:`respond` gives, asked twice.
"""

from __future__ import annotations

from hypothesis import given

from services.dns.answer import respond
from services.dns.cache import Answerer
from tests.fuzz.harness import FUZZ, count
from tests.fuzz.test_fuzz_dns import packet
from tests.unit.test_dns_answer import ZONES, check_reply

ANSWERER = Answerer(ZONES)


@FUZZ
@given(packet=packet)
def test_the_core_answers_any_packet_properly(packet: bytes) -> None:
    count("dns core")
    check_reply(packet)
    for transport in ("udp", "tcp"):
        fresh = respond(packet, ZONES, transport=transport)
        assert ANSWERER.respond(packet, transport=transport) == fresh
        assert ANSWERER.respond(packet, transport=transport) == fresh
