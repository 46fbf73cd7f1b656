"""The little a decoder needs from a mail message: Message-ID, Subject, size (RFC 5322)."""

from __future__ import annotations

from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

from labctl.traffic.payload import MessageSummary

# The header section is all a summary needs; a header larger than this is not looked at further.
HEADER_LIMIT = 64 * 1024


def _decoded(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(make_header(decode_header(value))).strip()  # RFC 2047 encoded words
    except (ValueError, LookupError):
        return value.strip()


def summarise(message: bytes) -> MessageSummary:
    """Message-ID and Subject from the header section, and the message's size in lines and octets."""
    end = message.find(b"\r\n\r\n", 0, HEADER_LIMIT)
    head = message[: end + 2] if end >= 0 else message[:HEADER_LIMIT]
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    mid = headers.get("Message-ID")
    lines = message.count(b"\n") + (0 if not message or message.endswith(b"\n") else 1)
    return MessageSummary(_decoded(mid if mid is None else str(mid)), _decoded(headers.get("Subject")), lines,
                          len(message))
