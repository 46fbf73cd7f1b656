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

from labctl.traffic.model import CLIENT, SERVER, Event, preview

_NAME_DOT = re.compile(r"\.(?=\s|$)")  # the root label's dot at the end of a name in rdata text


def _name(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True) or "."


def _rdata(rdtype: int, text: str) -> str:
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return text
    return _NAME_DOT.sub("", text)


def describe(payload: bytes, time: float, from_client: bool = True) -> Event:
    """One event for one DNS message: ``MX? stevenchoy.example`` or ``MX 10 mail.stevenchoy.example``."""
    try:
        msg = dns.message.from_wire(payload, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, struct.error) as exc:
        kind = "malformed DNS message" if payload else "empty DNS message"
        why = f"<{kind} ({exc.__class__.__name__}): {preview(payload)}>"
        return Event(time, CLIENT if from_client else SERVER, "undecodable", why, info={"octets": len(payload)})
    questions = [f"{dns.rdatatype.to_text(q.rdtype)}? {_name(q.name)}" for q in msg.question]
    info: dict[str, object] = {"id": msg.id, "questions": questions}
    if not msg.flags & dns.flags.QR:
        return Event(time, CLIENT, "query", "; ".join(questions) or "<query without a question>", info=info)
    rcode = msg.rcode()
    answers = [f"{dns.rdatatype.to_text(rrset.rdtype)} {_rdata(rrset.rdtype, rd.to_text())}"
               if rrset.name == msg.question[0].name or not msg.question
               else f"{_name(rrset.name)} {dns.rdatatype.to_text(rrset.rdtype)} {_rdata(rrset.rdtype, rd.to_text())}"
               for rrset in msg.answer for rd in rrset]
    extra = [f"{_name(rrset.name)} {dns.rdatatype.to_text(rrset.rdtype)} {_rdata(rrset.rdtype, rd.to_text())}"
             for rrset in msg.additional for rd in rrset if rrset.rdtype != dns.rdatatype.OPT]
    info.update(rcode=dns.rcode.to_text(rcode), answers=answers, additional=extra)
    if rcode != dns.rcode.NOERROR:
        text = f"{dns.rcode.to_text(rcode)} ({'; '.join(questions)})"
    elif not answers:
        text = f"no {', '.join(q.split('?')[0] for q in questions)} record (NOERROR, empty answer)"
    else:
        text = "; ".join(answers)
    if msg.flags & dns.flags.TC:
        text += "   (truncated: ask again over TCP)"
    if extra:
        text += f"   [additional: {'; '.join(extra)}]"
    return Event(time, SERVER, "answer", text, info=info)


def tcp_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The messages of a DNS-over-TCP stream: (offset, message), each after its 2-octet length."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        length = struct.unpack_from(">H", data, pos)[0]
        out.append((pos, data[pos + 2:pos + 2 + length]))
        pos += 2 + length
    return out
