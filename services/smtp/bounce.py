"""Bounces: the delivery status notification sent back when a message cannot be delivered.

RFC 3464 defines the format: a ``multipart/report; report-type=delivery-status`` (RFC 6522)
with three parts: words for a person, a ``message/delivery-status`` block of fields for a
program, and the returned message (here only its headers, ``text/rfc822-headers``, which
is enough to recognise it and does not send a large attachment back).

The bounce travels with the null reverse-path ``<>`` (RFC 5321 §4.5.5), so a bounce that
itself fails is dropped instead of bouncing again; the caller enqueues it that way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message, MIMEPart
from email.utils import format_datetime

from services.smtp.spool import RecipientState

MAILER_DAEMON = "MAILER-DAEMON"  # the customary local part of a bounce's From (RFC 5321 §4.5.5)
SUBJECT = "Undelivered Mail Returned to Sender"
DIAGNOSTIC_TYPE = "X-maillab"  # RFC 3464 §2.3.6: an "X-" diagnostic-type for errors that are no SMTP reply

# Each DSN field on one line however long a remote reply makes it (RFC 5322 §2.1.1: 998 octets at
# most): Python's own parser reads a folded Diagnostic-Code back with a leading space.
_POLICY = policy.SMTP.clone(max_line_length=998)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _date(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, UTC))  # RFC 5322 §3.3, "+0000"


def original_headers(message: bytes) -> str:
    """The header section of ``message``, with LF line ends, for ``text/rfc822-headers``."""
    m = _HEADER_END.search(message)
    head = message[: m.start()] if m else message
    # Headers are ASCII (RFC 5322) or UTF-8 (RFC 6532); anything else is damage worth showing.
    text = head.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").rstrip("\n") + "\n"


def _one_line(text: str) -> str:
    """Peer-supplied text on one line: a CR, LF or NEL in a reply must not make a new one."""
    return "".join(c if c.isprintable() else " " for c in text)


def _field(text: str) -> str:
    # DSN fields are US-ASCII (RFC 3464 §2.1.1; UTF-8 needs RFC 6533's message/global-*).
    return _one_line(text).encode("ascii", "backslashreplace").decode("ascii")


def _explain(rcpt: RecipientState) -> str:
    lines = [f"<{rcpt.address}>: {_one_line(rcpt.last_error) or 'delivery failed'}"]
    if rcpt.remote_mta:
        lines.append(f"    MX host tried: {_one_line(rcpt.remote_mta)}")
    if rcpt.diagnostic and rcpt.diagnostic not in rcpt.last_error:
        lines.append(f"    its reply: {_one_line(rcpt.diagnostic)}")
    return "\n".join(lines)


def _human_part(reporting_mta: str, queue_id: str, arrival: float, failed: Sequence[RecipientState]) -> MIMEPart:
    text = (
        f"This is the mail system at host {reporting_mta}.\n"
        "\n"
        "I'm sorry to have to inform you that your message could not be delivered\n"
        "to one or more recipients. The reasons are below; the headers of your\n"
        "message are attached.\n"
        "\n"
        f"The message was queued here on {_date(arrival)} as {queue_id}.\n"
        "\n" + "\n\n".join(_explain(r) for r in failed) + "\n"
    )
    part = MIMEPart(policy=policy.SMTP)
    _set_text(part, text, "plain")
    part["Content-Description"] = "Notification"
    return part


def _set_text(part: MIMEPart, text: str, subtype: str) -> None:
    # 7bit keeps the report readable in a raw dump; remote replies make lines longer than the
    # 78 the policy prefers but far below SMTP's 998 (RFC 5321 §4.5.3.1.6).
    if text.isascii():
        part.set_content(text, subtype=subtype, charset="us-ascii", cte="7bit")
    else:
        part.set_content(text, subtype=subtype, charset="utf-8", cte="quoted-printable")


def _fields(pairs: list[tuple[str, str]]) -> Message:
    block = Message(policy=policy.SMTP)
    for name, value in pairs:
        block[name] = _field(value)
    return block


def _status_part(
    reporting_mta: str, arrival: float, failed: Sequence[RecipientState]
) -> MIMEPart:
    # RFC 3464 §2.2: one per-message block, then one block per recipient.
    blocks: list[Message | str] = [
        _fields([("Reporting-MTA", f"dns; {reporting_mta}"), ("Arrival-Date", _date(arrival))])
    ]
    for r in failed:
        pairs = [
            ("Final-Recipient", f"rfc822; {r.address}"),
            ("Action", "failed"),
            ("Status", r.dsn_status or "5.0.0"),
        ]
        if r.remote_mta:
            pairs.append(("Remote-MTA", f"dns; {r.remote_mta}"))
        if r.diagnostic:
            pairs.append(("Diagnostic-Code", f"smtp; {r.diagnostic}"))
        elif r.attempt_error:
            # RFC 3464 §2.3.6: "smtp" types only an SMTP reply; a refused connection is told in a
            # private type, as Postfix's "X-Postfix; connect to ...: Connection refused".
            pairs.append(("Diagnostic-Code", f"{DIAGNOSTIC_TYPE}; {r.attempt_error}"))
        if r.last_attempt is not None:
            pairs.append(("Last-Attempt-Date", _date(r.last_attempt)))
        blocks.append(_fields(pairs))
    part = MIMEPart(policy=policy.SMTP)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload(blocks)
    return part


def _headers_part(original: bytes) -> MIMEPart:
    part = MIMEPart(policy=policy.SMTP)
    _set_text(part, original_headers(original), "rfc822-headers")
    part["Content-Description"] = "Undelivered Message Headers"
    return part


def build_bounce(
    *,
    original: bytes,
    sender: str,
    failed: Sequence[RecipientState],
    reporting_mta: str,
    queue_id: str,
    arrival: float,
    now: float,
) -> bytes:
    """The DSN telling ``sender`` that ``failed`` recipients of message ``queue_id`` failed.

    ``failed`` holds the recipients' final spool states: ``last_error`` (words), ``dsn_status``,
    ``remote_mta`` and ``diagnostic`` (the remote reply) fill the report. Pure: the same
    arguments give the same bytes.
    """
    if not failed:
        raise ValueError("a bounce needs at least one failed recipient")
    msg = EmailMessage(policy=policy.SMTP)
    msg["Date"] = _date(now)
    msg["From"] = f"Mail Delivery System <{MAILER_DAEMON}@{reporting_mta}>"
    msg["To"] = sender
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = f"<{queue_id}.{int(now)}.bounce@{reporting_mta}>"
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5: no vacation reply to a bounce
    msg["MIME-Version"] = "1.0"
    parts: list[Message | str] = [
        _human_part(reporting_mta, queue_id, arrival, failed),
        _status_part(reporting_mta, arrival, failed),
        _headers_part(original),
    ]
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"
    msg.set_payload(parts)
    # A fixed boundary keeps the function pure; lengthen it until no part contains it.
    boundary = f"{queue_id}.{int(now)}/{reporting_mta}"
    body = b"".join(p.as_bytes(policy=policy.SMTP) for p in parts if isinstance(p, Message))
    while boundary.encode() in body:
        boundary += "="
    msg.set_boundary(boundary)
    return msg.as_bytes(policy=_POLICY)
