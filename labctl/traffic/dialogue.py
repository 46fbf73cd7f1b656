"""What the SMTP and POP3 decoders share: reading a dialogue line by line, and its events.

Both protocols are lines of text (RFC 5321 §2.3.8, RFC 1939 §3) in which a client's command takes
the server's next answer, and both end a message with the same ``CRLF.CRLF``
(:func:`services.textwire.find_data_end`). A :class:`DialogueDecoder` reads the two reassembled
streams of one connection with two :class:`LineReader` cursors; the protocol's decoder says what
each line means, through the hooks :meth:`DialogueDecoder.decode` calls in order.

Partial events (``Event.complete`` False, held back by ``labctl traffic --follow``): a line without
its end yet, an answer or message whose end is not captured yet, and any count of octets still
growing (undecodable bytes, TLS) are partial, so a printed line is never taken back.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from dataclasses import dataclass

from labctl.traffic.message import summarise
from labctl.traffic.model import CLIENT, NOTE, SERVER, Event, MailMessage, preview
from labctl.traffic.payload import Credentials, MessageSummary, Payload, Undecoded
from labctl.traffic.tcp import StreamView
from services.textwire import find_data_end

# -- reading a stream line by line ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    start: int  # stream offset of its first octet
    end: int  # stream offset just after its LF (or the stream's end for an unfinished line)
    text: bytes  # without CR LF
    time: float
    complete: bool  # ended by LF
    missing: int  # octets the capture missed within it


class LineReader:
    """A cursor over a :class:`StreamView` for line-based protocols (SMTP, POP3)."""

    def __init__(self, view: StreamView, start: int = 0) -> None:
        self.view = view
        self.data = view.data
        self.pos = start

    def time(self, offset: int) -> float:
        return self.view.time_at(offset) / 1e9

    def next(self) -> Line | None:
        """The next line, or None at the end of the stream."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            return None
        nl = data.find(b"\n", pos)
        complete = nl >= 0
        end = nl + 1 if complete else len(data)
        text = data[pos:nl - 1 if nl > pos and data[nl - 1] == 13 else nl] if complete else data[pos:end]
        self.pos = end
        return Line(pos, end, text, self.time(pos), complete, self.view.gap_in(pos, end))

    def skip_partial(self) -> None:
        """Joined mid-way: drop the rest of the line the capture started in."""
        nl = self.data.find(b"\n", self.pos)
        self.pos = len(self.data) if nl < 0 else nl + 1

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def dotted(self) -> tuple[bytes, bool]:
        """Lines up to the ``CRLF.CRLF`` that ends SMTP data and POP3 multi-line answers (RFC 5321
        §4.5.2, RFC 1939 §3), still dot-stuffed, and whether that end was captured; the cursor moves
        past the end (or to the end of what was captured)."""
        start = self.pos
        end = find_data_end(self.data, start)
        if end < 0:
            self.pos = len(self.data)
            return self.data[start:], False
        self.pos = end + 3
        return self.data[start:end], True


def is_verb(text: bytes, longest: int) -> bool:
    """Does the line start with a command verb, a word of at most ``longest`` ASCII letters?"""
    verb = text.split(b" ", 1)[0]
    return 0 < len(verb) <= longest and verb.isalpha() and verb.isascii()


# -- credentials in clear text ----------------------------------------------------------------------


def from_base64(text: str) -> str | None:
    """SASL's base64 (RFC 4648 §4) decoded, or None if it is not base64."""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "backslashreplace")
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class Marked:
    """A login line read: its secrets (substrings ``--hide-secrets`` masks), a note on what they are."""

    secrets: tuple[str, ...]
    note: str
    credentials: Credentials


def plain(b64: str, mechanism: str | None = None) -> Marked | None:
    """A SASL PLAIN response (RFC 4616 §2: authzid NUL authcid NUL passwd) read out, or None."""
    decoded = from_base64(b64)
    if decoded is None or decoded.count("\0") != 2:
        return None
    _authzid, user, password = decoded.split("\0")
    return Marked((b64, password), f'   (base64 of user "{user}", password "{password}": clear text)',
                  Credentials(mechanism, user, password))


def sasl_response(raw: str) -> Marked | None:
    """A client's SASL line (POP3 AUTH, IMAP AUTHENTICATE) read out: PLAIN's user and password, or
    any other base64 decoded (LOGIN's user, then its password); None for "*" (cancel) or no base64."""
    marked = plain(raw)
    if marked is not None:
        return marked
    if raw != "*" and (decoded := from_base64(raw)) is not None:
        return Marked((raw, decoded), f'   (base64 of "{decoded}": clear text)', Credentials())
    return None


# -- a dialogue -----------------------------------------------------------------------------------


def gap(time: float, missing: int) -> Event:
    return Event(time, NOTE, "gap", f"<{missing} octets missing from the capture>")


class DialogueDecoder(ABC):
    """One connection's dialogue: the client's commands in order, each claiming the server's next answer.

    :meth:`decode` is the reading order both protocols share; a decoder fills in the hooks.
    """

    PROTOCOL = ""  # "SMTP": what the client's undecodable bytes are not
    ANSWER = ""  # "an SMTP reply": what the server's undecodable bytes are not

    def __init__(self, to_server: StreamView, to_client: StreamView, *, midway: bool, show_bodies: bool) -> None:
        self.client = LineReader(to_server)
        self.server = LineReader(to_client)
        self.midway = midway
        self.show_bodies = show_bodies
        self.events: list[Event] = []
        self.messages: list[MailMessage] = []
        self.decodable = True
        # The dialogue resumes inside TLS after STARTTLS/STLS (the plaintext labctl.traffic.tls
        # decrypted): no greeting, the client speaks first (RFC 3207 §4.2, RFC 2595 §4).
        self.resumed = False

    # -- the hooks ------------------------------------------------------------------------------------

    @abstractmethod
    def resync(self) -> None:
        """Joined mid-way: move both cursors to where the dialogue can be read from."""

    @abstractmethod
    def greeting(self) -> None:
        """Read the server's greeting; not decodable if there is none where there should be one."""

    @abstractmethod
    def commands(self) -> None:
        """Read the client's commands, each with its answer."""

    @abstractmethod
    def unclaimed(self) -> None:
        """The answers no command claimed (the client's stream ended, or was not captured)."""

    @property
    @abstractmethod
    def broken(self) -> bool:
        """Did the server's stream go on with something that is not the protocol?"""

    # -- the reading order ----------------------------------------------------------------------------

    def decode(self) -> tuple[list[Event], list[MailMessage], bool]:
        """The events (in time order), the messages carried, and whether it was the protocol at all."""
        if self.resumed:
            pass
        elif self.midway:
            self.resync()
        else:
            self.greeting()
        if self.decodable:
            self.commands()
        self.unclaimed()
        if self.broken:
            self.decodable = self.decodable and bool(self.events)
            self.undecodable(self.server, SERVER, f"not {self.ANSWER}")
        if not self.decodable:
            self.undecodable(self.client, CLIENT, f"not {self.PROTOCOL}")
        self.events.sort(key=lambda e: e.time)  # stable: same-time events keep their wire order
        return self.events, self.messages, self.decodable

    # -- events ---------------------------------------------------------------------------------------

    def line(self, line: Line, kind: str, text: str, secrets: tuple[str, ...] = (),
             payload: Payload | None = None) -> None:
        """A client line; partial while its end is not captured."""
        self.events.append(Event(line.time, CLIENT, kind, text, secrets, payload, complete=line.complete))

    def gap(self, time: float, missing: int) -> None:
        if missing:
            self.events.append(gap(time, missing))

    def undecodable(self, reader: LineReader, direction: str, why: str) -> None:
        """The rest of ``reader``'s stream, shown as octets (partial: more of them may come)."""
        rest = reader.data[reader.pos:]
        if rest:
            self.events.append(Event(reader.time(reader.pos), direction, "undecodable", f"<{why}: {preview(rest)}>",
                                     payload=Undecoded(len(rest)), complete=False))
        reader.pos = len(reader.data)

    def message(self, body: bytes, complete: bool, missing: int = 0) -> tuple[MessageSummary, str]:
        """A message's summary, and the text that shows it (the whole body with ``--bodies``)."""
        summary = summarise(body)
        text = summary.text(complete)
        if missing:
            text = text[:-1] + f", {missing} octets missing from the capture>"
        if self.show_bodies:
            text += "\n" + body.decode("utf-8", "backslashreplace").rstrip("\r\n")
        return summary, text
