"""Answering one DNS query from the lab's zones: bytes in, bytes out, no I/O.

:func:`answer` is the whole server's behaviour; ``server.py`` only moves datagrams and TCP frames
to and from it. :func:`respond` returns the same bytes with what the log line needs (question,
rcode, why) and, when the fault is ours, the traceback for the shell to log.

The policy, in the order it is applied:

=================================================  ==============================================
the query                                          the reply
=================================================  ==============================================
shorter than the 12-octet header, or QR=1          nothing (no header to answer; never answer a
                                                   response, or two servers could loop)
opcode other than QUERY                            NOTIMP (RFC 1035 §4.1.1)
does not parse (bad name, trailing junk, ...)      FORMERR, header only, id and RD echoed
EDNS version above 0                               BADVERS with an OPT record (RFC 6891 §6.1.3)
QDCOUNT other than 1                               FORMERR (RFC 9619)
class other than IN                                REFUSED: no zone of that class here
QTYPE OPT/TSIG/TKEY (only in the additional data)  FORMERR (RFC 6895 §3.1)
QTYPE AXFR/IXFR                                    REFUSED: zone transfers are not offered
QTYPE MAILA/MAILB                                  NOTIMP (obsolete, RFC 883)
name outside every lab zone                        REFUSED, RD echoed, RA clear: the lab resolves
                                                   nothing on the Internet
name in a lab zone                                 an authoritative answer (AA=1): the records;
                                                   NXDOMAIN or NODATA with the SOA in authority
                                                   (RFC 2308 §2); CNAMEs followed through the lab
                                                   zones (RFC 1034 §4.3.2); A/AAAA of MX and NS
                                                   targets in the additional section
our own bug                                        SERVFAIL, and the traceback in Reply.bug
=================================================  ==============================================

QTYPE ANY gets every rrset at the name rather than RFC 8482's minimal answer: the lab is sealed, so
there is no one to amplify traffic at, and ``dig ANY`` showing a whole node is worth seeing.

The records of an rrset go out in the zone file's order, every time (dnspython would shuffle them;
NSD does not by default either): a reply is then a function of the query, so it can be made once
and kept (``cache.py``). Clients that spread load shuffle for themselves, as the relay does among
MX hosts of equal preference.

A reply too big for the transport first loses its additional section (optional data, RFC 2181 §9),
then, if still too big, its answer and authority sections, with TC=1 so the client retries over TCP
(RFC 1035 §4.2.1, RFC 7766 §5).
"""

from __future__ import annotations

import struct
import traceback
from typing import Literal, NamedTuple

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset

from services.dns.zones import Zone, Zones

T = dns.rdatatype.RdataType
Rcode = dns.rcode.Rcode

HEADER_LEN = 12  # RFC 1035 §4.1.1: six 16-bit fields
UDP_CLASSIC_MAX = 512  # RFC 1035 §4.2.1: a UDP message without EDNS
EDNS_PAYLOAD_MIN = 512  # RFC 6891 §6.2.5: a smaller advertised size is treated as 512
# RFC 6891 §6.2.5 suggests 4096 as a starting point; larger datagrams fragment, and past this size
# TCP is the better path anyway. Also what we advertise as our own receive size.
EDNS_PAYLOAD_MAX = 4096
TCP_MESSAGE_MAX = 65535  # RFC 1035 §4.2.2: the two-octet length prefix
EDNS_VERSION = 0  # RFC 6891 §6.1.3: the only version; a higher one gets BADVERS
# RFC 1034 §3.6.2 discourages chains at all; a bound keeps a loop among the zones finite.
CNAME_CHAIN_MAX = 8

# QTYPEs that do not ask for records at a name (RFC 6895 §3.1), and what each gets.
META_QTYPES: dict[dns.rdatatype.RdataType, tuple[Rcode, str]] = {
    T.OPT: (Rcode.FORMERR, "OPT is not a question"),
    T.TSIG: (Rcode.FORMERR, "TSIG is not a question"),
    T.TKEY: (Rcode.FORMERR, "TKEY is not a question"),
    T.AXFR: (Rcode.REFUSED, "zone transfers are not offered"),
    T.IXFR: (Rcode.REFUSED, "zone transfers are not offered"),
    T.MAILA: (Rcode.NOTIMP, "MAILA is obsolete"),
    T.MAILB: (Rcode.NOTIMP, "MAILB is obsolete"),
}
# The note of a REFUSED for a name in no lab zone: a well-formed question like any other (cache.py keeps it).
OUTSIDE_NOTE = "outside the lab zones"
# What the additional section carries for each MX exchange and NS target (RFC 1035 §3.3.9, §3.3.11).
ADDRESS_TYPES = (T.A, T.AAAA)

_QR = int(dns.flags.QR)
_RD = int(dns.flags.RD)
_OPCODE_MASK = 0x7800  # RFC 1035 §4.1.1: bits 1-4 of the second header octet pair


class Reply(NamedTuple):
    """What to send back (None: nothing) and what the log line says about it.

    A tuple rather than a frozen dataclass: one is made per query, and a frozen dataclass's
    ``__init__`` (a guarded setattr per field) costs several times as much at thousands a second.
    """

    wire: bytes | None
    qname: str = "-"
    qtype: str = "-"
    rcode: str = "-"  # "NOERROR", "NXDOMAIN", ... or "dropped"
    note: str = ""  # why, when it is not a plain answer ("truncated", "malformed: ...")
    bug: str | None = None  # our traceback, for the shell to log: the peer never sees it


def answer(query: bytes, zones: Zones, *, transport: Literal["udp", "tcp"]) -> bytes | None:
    """The reply to one DNS message from a client, or None to send nothing. Never raises."""
    return respond(query, zones, transport=transport).wire


def respond(query: bytes, zones: Zones, *, transport: Literal["udp", "tcp"]) -> Reply:
    """:func:`answer`, with what the log line needs."""
    if len(query) < HEADER_LEN:
        return Reply(None, rcode="dropped", note=f"{len(query)} octets, shorter than a DNS header")
    qid, flags = struct.unpack_from("!HH", query)
    if flags & _QR:
        return Reply(None, rcode="dropped", note="a response, not a query")
    try:
        msg = dns.message.from_wire(query)
    except dns.message.UnknownTSIGKey:
        return _header_reply(qid, flags, Rcode.NOTAUTH, "signed with a key we do not have")
    except Exception as exc:  # noqa: BLE001 - whatever dnspython objects to, the peer sent it
        if flags & _OPCODE_MASK:
            return _header_reply(qid, flags, Rcode.NOTIMP, "opcode not implemented")
        return _header_reply(qid, flags, Rcode.FORMERR, f"malformed: {_describe(exc)}")
    try:
        return _respond(msg, zones, transport)
    except Exception:  # noqa: BLE001 - our bug: the client gets SERVFAIL, the log the traceback
        return _servfail(msg, qid, flags, traceback.format_exc())


def _respond(msg: dns.message.Message, zones: Zones, transport: Literal["udp", "tcp"]) -> Reply:
    response = dns.message.make_response(msg, our_payload=EDNS_PAYLOAD_MAX)  # RD copied, RA clear
    if msg.opcode() != dns.opcode.QUERY:
        return _finish(response, Rcode.NOTIMP, transport, msg, note="opcode not implemented")
    if msg.edns > EDNS_VERSION:
        return _finish(response, Rcode.BADVERS, transport, msg, note=f"EDNS version {msg.edns}")
    if len(msg.question) != 1:
        response.question = []
        return _finish(response, Rcode.FORMERR, transport, msg, note=f"{len(msg.question)} questions")
    question = msg.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return _finish(response, Rcode.REFUSED, transport, msg,
                       note=f"class {dns.rdataclass.to_text(question.rdclass)}")
    if question.rdtype in META_QTYPES:
        rcode, why = META_QTYPES[question.rdtype]
        return _finish(response, rcode, transport, msg, note=why)
    zone = zones.find(question.name)
    if zone is None:
        return _finish(response, Rcode.REFUSED, transport, msg, note=OUTSIDE_NOTE)
    response.flags |= dns.flags.AA
    rcode = _resolve(response, zones, zone, question.name, question.rdtype)
    return _finish(response, rcode, transport, msg)


# -- the authoritative answer ----------------------------------------------------------------------


def _resolve(response: dns.message.Message, zones: Zones, zone: Zone, qname: dns.name.Name,
             qtype: dns.rdatatype.RdataType) -> Rcode:
    """Fill the sections for ``qname``/``qtype`` (RFC 1034 §4.3.2, steps 3a-3c) and return the rcode."""
    name = qname
    seen = {name}
    for _ in range(CNAME_CHAIN_MAX + 1):
        node = zone.node(name)
        if node is None:
            # RFC 6604 §3: after a CNAME the rcode is that of the last name in the chain.
            _add(response.authority, zone.origin, zone.negative_soa)
            return Rcode.NOERROR if zone.exists(name) else Rcode.NXDOMAIN
        if qtype == T.ANY:
            for rdataset in node:
                _add(response.answer, name, rdataset)
                _add_addresses(response, zones, rdataset)
            return Rcode.NOERROR
        found = node.get_rdataset(dns.rdataclass.IN, qtype)
        if found is not None:
            _add(response.answer, name, found)
            _add_addresses(response, zones, found)
            return Rcode.NOERROR
        cname = node.get_rdataset(dns.rdataclass.IN, T.CNAME)
        if cname is None:
            _add(response.authority, zone.origin, zone.negative_soa)  # NODATA, RFC 2308 §2.2
            return Rcode.NOERROR
        _add(response.answer, name, cname)
        name = cname[0].target
        next_zone = zones.find(name)
        if next_zone is None or name in seen:
            # Outside the lab (a resolver would carry on from here, we do not), or a loop.
            return Rcode.NOERROR
        seen.add(name)
        zone = next_zone
    return Rcode.NOERROR  # a chain longer than CNAME_CHAIN_MAX: the client has as much as we follow


def _add_addresses(response: dns.message.Message, zones: Zones, rdataset: dns.rdataset.Rdataset) -> None:
    """The A/AAAA of MX exchanges and NS targets, so the client need not ask (RFC 1034 §3.6, §4.3.2)."""
    targets: list[dns.name.Name]
    if rdataset.rdtype == T.MX:
        # A null MX ("0 .", RFC 7505) names no host.
        targets = [rd.exchange for rd in rdataset if rd.exchange != dns.name.root]
    elif rdataset.rdtype == T.NS:
        targets = [rd.target for rd in rdataset]
    else:
        return
    for target in targets:
        zone = zones.find(target)
        if zone is None:
            continue
        for rdtype in ADDRESS_TYPES:
            found = zone.rdataset(target, rdtype)
            if found is not None and not _has(response.answer, target, rdtype):
                _add(response.additional, target, found)


def _has(section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> bool:
    return any(r.name == name and r.rdtype == rdtype for r in section)


def _add(section: list[dns.rrset.RRset], name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> None:
    if not _has(section, name, rdataset.rdtype):
        section.append(dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)))


# -- rendering -------------------------------------------------------------------------------------


def _size_limit(msg: dns.message.Message, transport: Literal["udp", "tcp"]) -> int:
    if transport == "tcp":
        return TCP_MESSAGE_MAX
    if msg.edns < 0:
        return UDP_CLASSIC_MAX
    return max(EDNS_PAYLOAD_MIN, min(msg.payload, EDNS_PAYLOAD_MAX))


def _finish(response: dns.message.Message, rcode: Rcode, transport: Literal["udp", "tcp"],
            query: dns.message.Message, note: str = "") -> Reply:
    response.set_rcode(rcode)
    limit = _size_limit(query, transport)
    try:
        wire = _render(response, limit)
    except dns.exception.TooBig:
        response.additional = []  # optional data: dropping it needs no TC (RFC 2181 §9)
        try:
            wire = _render(response, limit)
        except dns.exception.TooBig:
            response.answer = []
            response.authority = []
            response.flags |= dns.flags.TC
            wire = _render(response, limit)
            note = f"truncated to {limit} octets" + (f", {note}" if note else "")
    qname, qtype = _question(query)
    return Reply(wire, qname, qtype, dns.rcode.to_text(rcode), note)


def _render(response: dns.message.Message, limit: int) -> bytes:
    """The reply's wire form, each rrset's records in zone order (see the module's docstring)."""
    # dnspython's annotation of **kw is wrong (each value typed as a dict); the value is a bool.
    return response.to_wire(max_size=limit, want_shuffle=False)  # type: ignore[arg-type]


def _question(msg: dns.message.Message) -> tuple[str, str]:
    if not msg.question:
        return "-", "-"
    q = msg.question[0]
    return q.name.to_text(), dns.rdatatype.to_text(q.rdtype)


def _header_reply(qid: int, flags: int, rcode: Rcode, note: str) -> Reply:
    """A reply of the bare header: for a query whose body could not be read at all."""
    return Reply(_header_only(qid, flags, rcode), rcode=dns.rcode.to_text(rcode), note=note)


def _header_only(qid: int, flags: int, rcode: Rcode) -> bytes:
    reply_flags = _QR | (flags & _OPCODE_MASK) | (flags & _RD) | (int(rcode) & 0xF)
    return struct.pack("!HHHHHH", qid, reply_flags, 0, 0, 0, 0)


def _servfail(msg: dns.message.Message, qid: int, flags: int, trace: str) -> Reply:
    qname, qtype = "-", "-"
    try:
        qname, qtype = _question(msg)
        response = dns.message.make_response(msg, our_payload=EDNS_PAYLOAD_MAX)
        response.set_rcode(Rcode.SERVFAIL)
        wire = response.to_wire(max_size=_size_limit(msg, "udp"))
    except Exception:  # noqa: BLE001 - the fault may be in building replies itself: send the header
        wire = _header_only(qid, flags, Rcode.SERVFAIL)
    return Reply(wire, qname, qtype, "SERVFAIL", "internal error", bug=trace)


def _describe(exc: Exception) -> str:
    text = str(exc)
    # dnspython's messages are often just the class's docstring; the class name says as much.
    return type(exc).__name__ if not text or text == (type(exc).__doc__ or "").strip() else text
