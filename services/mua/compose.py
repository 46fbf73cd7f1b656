"""Writing a message: an RFC 5322 header and a MIME tree, built with the stdlib ``email`` package.

Pure: the date and the Message-ID come in from the caller, so the same draft always gives the same
headers (the MIME boundary is the only random part, and nothing depends on it).
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses

from services.mua.errors import MuaError

# RFC 2046 §4.5.1: "arbitrary binary data", what a receiver should save rather than display.
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# mimetypes reports a compressed file (report.tar.gz) as its inner type plus an encoding; what is
# on the wire is the compressed file, so its type is the compressor's.
COMPRESSED_TYPES = {
    "gzip": "application/gzip",  # RFC 6713
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}

LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"

# policy.SMTP folds header lines at 78 characters (RFC 5322 §2.1.1's SHOULD), writes CRLF line
# endings, and encodes non-ASCII header text as RFC 2047 encoded-words (utf8=False: we do not
# ask the server for SMTPUTF8). cte_type="7bit": without it the email package sends short
# non-ASCII text as 8bit, which needs 8BITMIME (RFC 6152); quoted-printable or base64 go anywhere.
WIRE_POLICY = policy.SMTP.clone(cte_type="7bit")


class ComposeError(MuaError):
    """The draft cannot become a valid message (a bad address, a line break in the subject)."""


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    content_type: str = ""  # empty: guessed from the filename


@dataclass(frozen=True)
class Draft:
    sender: str  # "andy@ouhk.example" or "Andy Lau <andy@ouhk.example>"
    to: tuple[str, ...]
    subject: str
    body: str
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()  # envelope only: never written into the header
    attachments: tuple[Attachment, ...] = ()

    @property
    def recipients(self) -> list[str]:
        """The envelope recipients (RCPT TO), in order, without duplicates."""
        seen: dict[str, None] = {}
        for text in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(parse_address(text).addr_spec.lower(), None)
        return list(seen)

    @property
    def envelope_sender(self) -> str:
        return parse_address(self.sender).addr_spec


def _breaks_line(text: str) -> bool:
    # Every character str.splitlines() breaks at; the email package refuses them all in a header.
    return any(ch in text for ch in LINE_BREAKS)


def parse_address(text: str) -> Address:
    """One mailbox, "user@domain" or "Name <user@domain>"; a ComposeError says what is wrong."""
    if _breaks_line(text):
        raise ComposeError(f"address {text!r} contains a line break")
    found = getaddresses([text])
    if len(found) != 1 or not found[0][1]:
        raise ComposeError(f"{text!r} is not one mail address; write user@domain or 'Name <user@domain>'")
    name, spec = found[0]
    if text.strip() != spec and f"<{spec}>" not in text:
        # getaddresses "repairs" what it cannot parse ("a@b c.example" becomes "a@bc.example");
        # a recipient must be written exactly, not guessed.
        raise ComposeError(f"{text!r} is not a mail address; write user@domain or 'Name <user@domain>'")
    if not spec.isascii():
        # A non-ASCII address needs SMTPUTF8 (RFC 6531) end to end; the lab's servers do not offer it.
        raise ComposeError(f"address {spec!r} is not ASCII; this client does not use SMTPUTF8")
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in spec):
        raise ComposeError(f"{text!r} is not a mail address; write user@domain")
    try:
        return Address(display_name=name, addr_spec=spec)
    except (ValueError, IndexError) as exc:
        raise ComposeError(f"{text!r} is not a valid mail address: {exc}") from exc


def guess_content_type(filename: str) -> str:
    """The MIME type to announce for a file, from its name (the content is not sniffed)."""
    ctype, encoding = mimetypes.guess_type(filename, strict=False)
    if encoding is not None:
        return COMPRESSED_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    return ctype or DEFAULT_CONTENT_TYPE


def message_id(sender: str, unique: str) -> str:
    """A Message-ID (RFC 5322 §3.6.4) under the sender's domain, which makes it globally unique
    as long as ``unique`` is unique on this domain's hosts."""
    domain = parse_address(sender).domain
    return f"<{unique}@{domain}>"


def compose(draft: Draft, *, date: datetime, msgid: str) -> EmailMessage:
    """The message for ``draft``: header fields, a text/plain part, attachments in base64.

    ``date`` must carry its time zone: RFC 5322 §3.3 wants the sender's local offset.
    """
    if date.tzinfo is None:
        raise ValueError("compose() needs an aware datetime")
    if _breaks_line(draft.subject):
        raise ComposeError("the subject must be one line (it contains a line break)")
    if not draft.to and not draft.cc and not draft.bcc:
        raise ComposeError("no recipient; give at least one --to")

    msg = EmailMessage(policy=WIRE_POLICY)
    # RFC 5322 §3.6: Date and From are required; §3.6.4 asks for Message-ID.
    msg["Date"] = date
    msg["From"] = parse_address(draft.sender)
    if draft.to:
        msg["To"] = [parse_address(a) for a in draft.to]
    if draft.cc:
        msg["Cc"] = [parse_address(a) for a in draft.cc]
    # The space after "Subject:" is folding white space (RFC 5322 §2.2.3): a leading space is lost.
    msg["Subject"] = draft.subject.strip()
    msg["Message-ID"] = msgid
    msg["MIME-Version"] = "1.0"  # RFC 2045 §4
    # utf-8 always; the email package picks 7bit for ASCII with short lines, otherwise the shorter
    # of quoted-printable and base64, so no line is longer than 78 characters (RFC 2045 §6.7).
    msg.set_content(draft.body, subtype="plain", charset="utf-8")
    for att in draft.attachments:
        maintype, _, subtype = (att.content_type or guess_content_type(att.filename)).partition("/")
        # Bytes always go as base64 (RFC 2045 §6.8): binary survives every relay unchanged.
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=att.filename)
    for part in msg.iter_parts():
        # MIME-Version belongs in the message header only (RFC 2045 §4); the email package
        # copies it into each part it converts.
        del part["MIME-Version"]
    return msg


def to_wire(msg: EmailMessage) -> bytes:
    """The message as SMTP carries it: CRLF line endings, 7-bit clean."""
    return msg.as_bytes(policy=WIRE_POLICY)
