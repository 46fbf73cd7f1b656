"""Trace headers: the ``Received:`` line every hop prepends and the final ``Return-Path:``.

RFC 5321 §4.4: a server receiving a message prepends a Received header saying from whom, by
whom, with which protocol, under which id, for whom and when; the server making the final
delivery also prepends the envelope sender as ``Return-Path``. Together they are how a student
reads a message's route from the mailbox: one Received per hop, newest on top.

Both are added in front of the message; nothing already in it is changed.
"""

from __future__ import annotations

import ipaddress
from email.utils import formatdate

from services.config import LabConfig
from services.smtp import policy

CRLF = b"\r\n"
FOLD = b"\r\n\t"  # RFC 5322 §2.2.3: a header field continues on a line that starts with white space
SOFTWARE = "maillab"  # the comment after the "by" host, like sendmail's "(8.11.1/8.11.1)"


def protocol(*, esmtp: bool, authenticated: bool, tls: bool = False) -> str:
    """The WITH clause (RFC 5321 §4.4; ESMTPA, ESMTPS and ESMTPSA from RFC 3848): what the client
    greeted with, and whether it authenticated and ran under TLS. RFC 3848 names no TLS variant
    of plain SMTP: a HELO under TLS stays "SMTP" (AUTH needs EHLO, so there is no SMTPA either)."""
    if not esmtp and not authenticated:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def address_literal(ip: str) -> str:
    """``[10.89.0.10]`` or ``[IPv6:fd00::1]`` (RFC 5321 §4.1.3)."""
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError:
        return "[0.0.0.0]"  # not a socket address; never reached with a real peer
    return f"[IPv6:{ip}]" if version == 6 else f"[{ip}]"


def reverse_name(cfg: LabConfig, ip: str) -> str | None:
    """The lab name of the host at ``ip``: what a PTR lookup in the lab zones answers."""
    for host in cfg.hosts:
        if host.address == ip:
            return host.fqdn
    return None


def date(when: float) -> str:
    """An RFC 5322 §3.3 date-time in local time: ``Fri, 30 Sep 2005 17:43:23 +0800``."""
    return formatdate(when, localtime=True)


def received(
    *,
    helo: str | None,
    peer_ip: str,
    peer_name: str | None,
    by: str,
    with_protocol: str,
    queue_id: str,
    recipients: tuple[str, ...],
    when: float,
    tls: str | None = None,
) -> bytes:
    """One Received header field, folded, CRLF-terminated.

    ``from`` is the name the client gave in HELO/EHLO, or its address literal when it gave none
    or nothing that is a domain (§4.4 wants a Domain there); the comment holds the name its
    address has in the lab and the address itself (TCP-info, §4.4). ``for`` names the recipient
    only when there is exactly one: listing several would tell each of them about the others.
    ``tls``: the session's TLS in words, a comment of its own line as Postfix writes it
    (``(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))``).
    """
    literal = address_literal(peer_ip)
    client = helo if helo and (policy.is_domain(helo) or policy.is_address_literal(helo)) else literal
    tcp_info = f"{peer_name} {literal}" if peer_name else literal
    lines = [f"Received: from {client} ({tcp_info})"]
    if tls:
        lines.append(f"({tls})")
    lines.append(f"by {by} ({SOFTWARE}) with {with_protocol} id {queue_id}")
    stamp = f"; {date(when)}"
    if len(recipients) == 1 and policy.parse_mailbox(recipients[0]) is not None:
        lines.append(f"for <{recipients[0]}>{stamp}")
    else:
        lines[-1] += stamp
    return FOLD.join(line.encode("ascii") for line in lines) + CRLF


def return_path(sender: str) -> bytes:
    """``Return-Path: <sender>`` (RFC 5321 §4.4); ``<>`` for a bounce's null sender."""
    return f"Return-Path: <{sender}>".encode("ascii", "replace") + CRLF


def prepend(message: bytes, *fields: bytes) -> bytes:
    """``fields`` in front of ``message``, which is otherwise left byte for byte as it was."""
    return b"".join(fields) + message
