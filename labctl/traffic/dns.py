"""DNS queries and answers, one line each, read with dnspython (RFC 1035; TCP framing RFC 7766)."""

from __future__ import annotations

import re
import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from labctl.traffic.model import CLIENT, SERVER, Event, preview
from labctl.traffic.payload import DnsAnswer, DnsQuery, Question, Record, Undecoded

_NAME_DOT = re.compile(r"\.(?=\s|$)")  # the root label's dot at the end of a name in rdata text


def _name(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True) or "."


def _rdata(rdtype: int, text: str) -> str:
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return text
    return _NAME_DOT.sub("", text)


def _records(rrsets: list[dns.rrset.RRset]) -> tuple[Record, ...]:
    return tuple(Record(_name(rrset.name), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl,
                        _rdata(rrset.rdtype, rd.to_text()),
                        _name(rd.exchange) if rrset.rdtype == dns.rdatatype.MX else None)
                 for rrset in rrsets if rrset.rdtype != dns.rdatatype.OPT for rd in rrset)


def describe(payload: bytes, time: float, from_client: bool = True) -> Event:
    """One event for one DNS message: ``MX? stevenchoy.example`` or ``MX 10 mail.stevenchoy.example``."""
    try:
        msg = dns.message.from_wire(payload, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, struct.error) as exc:
        kind = "malformed DNS message" if payload else "empty DNS message"
        why = f"<{kind} ({exc.__class__.__name__}): {preview(payload)}>"
        return Event(time, CLIENT if from_client else SERVER, "undecodable", why, payload=Undecoded(len(payload)))
    questions = tuple(Question(_name(q.name), dns.rdatatype.to_text(q.rdtype)) for q in msg.question)
    if not msg.flags & dns.flags.QR:
        query = DnsQuery(msg.id, msg.flags, questions)
        return Event(time, CLIENT, "query", "; ".join(map(str, questions)) or "<query without a question>",
                     payload=query)
    answer = DnsAnswer(msg.id, msg.flags, questions, dns.rcode.to_text(msg.rcode()), _records(msg.answer),
                       _records(msg.additional))
    text = answer.summary
    if answer.additional:
        text += f"   [additional: {'; '.join(r.text() for r in answer.additional)}]"
    return Event(time, SERVER, "answer", text, payload=answer)


def tcp_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The messages of a DNS-over-TCP stream: (offset, message), each after its 2-octet length."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        length = struct.unpack_from(">H", data, pos)[0]
        out.append((pos, data[pos + 2:pos + 2 + length]))
        pos += 2 + length
    return out
