"""What the decoders produce: conversations made of timed events, and the messages they carried.

Plain dataclasses with a stable JSON form (:meth:`Conversation.to_json`, documented in
:mod:`labctl.traffic.render`): the CLI prints them, :mod:`labctl.traffic.journey` and
:mod:`labctl.scenario.facts` read them, each event's details through its typed
:attr:`Event.payload` (:mod:`labctl.traffic.payload`).
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labctl.traffic import payload as p

# Event.direction
CLIENT = "C"  # client to server
SERVER = "S"  # server to client
NOTE = "-"  # something about the connection, not a line on the wire

# Event.kind
KINDS = (
    "connect",  # the connection opened (with how: SYN seen, or joined mid-way)
    "refused",  # RST in answer to SYN: nothing listening
    "unanswered",  # SYNs with no answer: the host is down or unreachable
    "command",  # a client command line
    "reply",  # a server reply (SMTP: all lines of a multi-line reply; POP3: status line and body)
    "message",  # a mail message crossing (SMTP DATA/BDAT, POP3 RETR/TOP)
    "auth",  # a client line of a login exchange; ``secrets`` holds what travelled in clear text
    "query",  # a DNS query
    "answer",  # a DNS response
    "tls",  # the connection's TLS: STARTTLS/STLS accepted, or an implicit-TLS port (what it was: Conversation.tls)
    "record",  # a TLS record as an outsider sees it (--no-decrypt, no keys), or one that did not open
    "gap",  # octets the capture missed
    "undecodable",  # bytes that are not the protocol expected on that port
    "reset",  # RST after the connection opened
    "close",  # FIN
    "data",  # octets of a protocol we do not decode (a summary)
)

SECRET_MASK = "********"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    name: str | None = None  # the lab host at that address, if known

    def label(self) -> str:
        where = f"{self.ip}:{self.port}" if ":" not in self.ip else f"[{self.ip}]:{self.port}"
        return f"{self.name} ({where})" if self.name else where

    @property
    def host(self) -> str:
        return self.name or self.ip

    def to_json(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port, "name": self.name}


@dataclass(frozen=True)
class Event:
    time: float  # seconds since the epoch, when its first octet was captured
    direction: str  # CLIENT, SERVER or NOTE
    kind: str  # one of KINDS
    text: str  # as on the wire for commands and replies (several lines for a multi-line reply)
    secrets: tuple[str, ...] = ()  # substrings of text that are credentials sent in clear text
    payload: p.Payload | None = None  # what it carried, typed (see labctl.traffic.payload)
    # False: more of the stream may still change it (a line without its end yet, a multi-line reply
    # or a message not yet ended, a count of octets still growing); ``--follow`` waits for it.
    complete: bool = True
    # Read from inside TLS with the lab's key log (labctl.traffic.tls): an outsider saw only records.
    decrypted: bool = False

    @property
    def info(self) -> Mapping[str, Any]:
        """The payload as the JSON's ``info``: kind-specific details (see :func:`payload.info`)."""
        return p.info(self.payload)

    def shown(self, hide_secrets: bool) -> str:
        text = self.text
        if hide_secrets:
            for secret in sorted(self.secrets, key=len, reverse=True):
                if secret:
                    text = text.replace(secret, SECRET_MASK)
        return text

    def to_json(self, hide_secrets: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"time": round(self.time, 6), "direction": self.direction, "kind": self.kind,
                               "text": self.shown(hide_secrets)}
        if self.secrets:
            out["clear_text_secret"] = True
        if not self.complete:
            out["partial"] = True
        if self.decrypted:
            out["decrypted"] = True
        info = p.info(self.payload)
        if info:
            if hide_secrets:
                info = {k: (SECRET_MASK if k in ("password", "secret") else v) for k, v in info.items()}
            out["info"] = info
        return out


@dataclass(frozen=True)
class MailMessage:
    """A message seen crossing the wire (SMTP DATA/BDAT, or POP3 RETR/TOP)."""

    time: float  # its first octet
    message_id: str | None  # the Message-ID header, angle brackets included
    subject: str | None
    lines: int
    octets: int  # the message without the transparency dots and the final "."
    complete: bool  # its end was captured
    sender: str | None = None  # SMTP: MAIL FROM's address
    recipients: tuple[str, ...] = ()  # SMTP: RCPT TO's addresses that got a 2xx
    reply_code: int | None = None  # SMTP: the reply to the end of the data (250: accepted, stored)
    reply_text: str | None = None
    reply_time: float | None = None
    command: str | None = None  # POP3: "RETR 1"

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class TlsSummary:
    """What a TLS session on a connection was, as far as the capture and the key log tell."""

    started: str  # "starttls" (STARTTLS/STLS in the dialogue) or "implicit" (465, 993, 995)
    version: str | None = None  # "TLS 1.3", "TLS 1.2"; None until the ServerHello was seen
    cipher: str | None = None  # IANA name, "TLS_AES_256_GCM_SHA384"
    server_name: str | None = None  # the ClientHello's SNI
    certificate: str | None = None  # the server certificate's subject, "CN=mail.stevenchoy.example"
    decrypted: bool = False  # the key log had this session's secrets and its records opened
    problem: str | None = None  # why its records could not be read, if they could not

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Conversation:
    """One TCP connection, or one UDP flow (a DNS client's port talking to the server)."""

    protocol: str  # "smtp", "pop3", "dns", or "tcp"/"udp" for a port we do not decode
    transport: str  # "tcp" or "udp"
    client: Endpoint
    server: Endpoint
    start: float
    end: float
    events: list[Event] = field(default_factory=list)
    messages: list[MailMessage] = field(default_factory=list)
    vantages: tuple[str, ...] = ()  # the capture interfaces (hosts) it was seen on
    joined_midway: bool = False
    decodable: bool = True  # False: not the protocol expected on that port (see the events)
    state: str = "closed"  # "refused", "unanswered", "reset", "closed", "open"
    tls: TlsSummary | None = None  # the connection went into TLS (STARTTLS, STLS, or an implicit-TLS port)

    def involves(self, host: str) -> bool:
        return host in (self.client.ip, self.server.ip, self.client.name, self.server.name) or any(
            e.name is not None and e.name.split(".")[0] == host for e in (self.client, self.server))

    def to_json(self, hide_secrets: bool = False) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "transport": self.transport,
            "client": self.client.to_json(),
            "server": self.server.to_json(),
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "state": self.state,
            "joined_midway": self.joined_midway,
            "decodable": self.decodable,
            "vantages": list(self.vantages),
            "events": [e.to_json(hide_secrets) for e in self.events],
            "messages": [m.to_json() for m in self.messages],
            **({"tls": self.tls.to_json()} if self.tls is not None else {}),
        }


def preview(data: bytes, limit: int = 48) -> str:
    """Hex and printable ASCII of the first ``limit`` octets, for bytes we cannot decode."""
    head = data[:limit]
    ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in head)
    more = f" ... ({len(data)} octets)" if len(data) > limit else f" ({len(data)} octets)"
    return f"{binascii.hexlify(head, ' ').decode()}  |{ascii_}|{more}"


def printable(line: bytes) -> str:
    """A wire line as text: UTF-8 where it is, control characters shown as escapes."""
    text = line.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)
