"""What an event carried, as typed fields: the decoders fill them in, everything else reads them.

An :class:`~labctl.traffic.model.Event` has the text a student reads (as on the wire, with notes)
and one payload of the types below: what a DNS message asked and answered, an SMTP reply's code,
a POP3 status, the credentials of a login line, the size and subject of a message. The journey,
the scenario facts and the renderers read these fields, never the text back.

:func:`info` turns a payload into the ``info`` mapping of the JSON output (documented in
:mod:`labctl.traffic.render`), whose keys are those the JSON has always had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# An SMTP reply's payload is the one reply type the lab's SMTP code has (code, enhanced status, text).
from services.smtp.wire import Reply as Reply

# -- DNS (RFC 1035 §4.1) ---------------------------------------------------------------------------

# The header's TC bit (RFC 1035 §4.1.1), written out: labctl imports this module at start-up, and
# dnspython only when a capture is decoded.
FLAG_TC = 0x0200


@dataclass(frozen=True, slots=True)
class Question:
    name: str  # without the root's final dot ("." for the root itself)
    type: str  # "MX", "A", ... (RFC 3597's "TYPE65534" for one dnspython does not know)

    def __str__(self) -> str:
        return f"{self.type}? {self.name}"


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record of an answer or additional section."""

    name: str  # its owner, without the final dot
    type: str
    ttl: int
    value: str  # the rdata in presentation form, names in it without their final dot
    exchange: str | None = None  # MX: the mail exchanger it names (RFC 1035 §3.3.9)

    def text(self, owner: bool = True) -> str:
        return f"{self.name} {self.type} {self.value}" if owner else f"{self.type} {self.value}"


@dataclass(frozen=True, slots=True)
class DnsQuery:
    id: int
    flags: int  # the header's flags (QR clear)
    questions: tuple[Question, ...]


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    id: int  # the query's id, which pairs them (RFC 1035 §4.1.1)
    flags: int
    questions: tuple[Question, ...]
    rcode: str  # "NOERROR", "NXDOMAIN", ...
    answers: tuple[Record, ...]
    additional: tuple[Record, ...]  # without the EDNS OPT pseudo-record

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    def answer_texts(self) -> list[str]:
        """The answer records, each without its owner when that is the name asked about."""
        asked = self.questions[0].name.lower() if self.questions else None
        return [r.text(owner=asked is not None and r.name.lower() != asked) for r in self.answers]

    @property
    def summary(self) -> str:
        """What it answered, in one line: the records, the empty answer, or the error."""
        asked = "; ".join(str(q) for q in self.questions)
        if self.rcode != "NOERROR":
            text = f"{self.rcode} ({asked})"
        elif not self.answers:
            text = f"no {', '.join(q.type for q in self.questions)} record (NOERROR, empty answer)"
        else:
            text = "; ".join(self.answer_texts())
        if self.truncated:
            text += "   (truncated: ask again over TCP)"
        return text

    @property
    def exchanges(self) -> tuple[str, ...]:
        """The mail exchangers its MX records name, in answer order."""
        return tuple(r.exchange for r in self.answers if r.exchange is not None)


# -- SMTP and POP3 ---------------------------------------------------------------------------------

def reply_line(reply: Reply) -> str:
    """The reply's last line as it crossed: ``451 4.3.0 try again later``."""
    return " ".join(part for part in (str(reply.code), reply.status, reply.text) if part)


@dataclass(frozen=True, slots=True)
class CommandLine:
    """A client command line (SMTP or POP3): its verb upper-cased, the rest as sent."""

    verb: str
    argument: str


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """The little a decoder keeps of a mail message: Message-ID, Subject, size (RFC 5322)."""

    message_id: str | None  # angle brackets included
    subject: str | None
    lines: int
    octets: int  # without the transparency dots and the final "."

    def text(self, complete: bool = True) -> str:
        cut = "" if complete else ", end not captured"
        return f"<message, {self.lines} lines, {self.octets} octets{cut}>"


@dataclass(frozen=True, slots=True)
class Pop3Status:
    """A POP3 response: "+OK", "-ERR", or "+" (a SASL continuation, RFC 5034 §4)."""

    status: str
    message: MessageSummary | None = None  # RETR/TOP: the message that followed the +OK


@dataclass(frozen=True, slots=True)
class ImapResponse:
    """An IMAP response (RFC 3501 §7): tagged ("a1", status OK/NO/BAD), untagged ("*", status OK/NO/
    BAD/BYE/PREAUTH, or the data's name: FETCH, EXISTS, CAPABILITY...), or a continuation ("+")."""

    tag: str
    status: str
    message: MessageSummary | None = None  # a FETCH of BODY[]/RFC822: the message its literal carried


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a login line gave away in clear text (the lab has no TLS: one of its lessons)."""

    mechanism: str | None = None  # the SASL mechanism (SMTP AUTH, POP3 AUTH)
    user: str | None = None
    secret: str | None = None  # a password


@dataclass(frozen=True, slots=True)
class TlsStart:
    """STARTTLS/STLS accepted: the stream offsets where each direction's TLS records begin."""

    client_at: int
    server_at: int


# -- notes -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Undecoded:
    """Octets that were not the protocol the port speaks."""

    octets: int


@dataclass(frozen=True, slots=True)
class Unanswered:
    """A connection attempt nobody answered."""

    syns: int  # SYNs sent, retransmissions included


Payload = (DnsQuery | DnsAnswer | Reply | CommandLine | MessageSummary | Pop3Status | ImapResponse | Credentials
           | TlsStart | Undecoded | Unanswered)


def info(payload: Payload | None) -> dict[str, Any]:
    """The JSON ``info`` of an event with this payload (its keys are part of the JSON's contract)."""
    match payload:
        case DnsQuery():
            return {"id": payload.id, "questions": [str(q) for q in payload.questions]}
        case DnsAnswer():
            return {"id": payload.id, "questions": [str(q) for q in payload.questions], "rcode": payload.rcode,
                    "answers": payload.answer_texts(), "additional": [r.text() for r in payload.additional]}
        case Reply():
            return {"code": payload.code}
        case MessageSummary():
            return _message_info(payload)
        case Pop3Status(status=status, message=None):
            return {"status": status}
        case Pop3Status(status=status, message=MessageSummary() as message):
            return {"status": status, **_message_info(message)}
        case ImapResponse(tag=tag, status=status, message=message):
            return {"tag": tag, "status": status, **(_message_info(message) if message is not None else {})}
        case Credentials():
            found = {"mechanism": payload.mechanism, "user": payload.user, "password": payload.secret}
            return {k: v for k, v in found.items() if v is not None}
        case Undecoded():
            return {"octets": payload.octets}
        case Unanswered():
            return {"syn": payload.syns}
    return {}  # no payload, or a command (its verb and argument are its text)


def _message_info(message: MessageSummary) -> dict[str, Any]:
    return {"message_id": message.message_id, "subject": message.subject, "lines": message.lines,
            "octets": message.octets}
