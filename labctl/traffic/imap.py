"""IMAP dialogues from the two reassembled streams of a connection (RFC 3501, RFC 7888 LITERAL+).

IMAP is not one answer per command as SMTP and POP3 are: a command's tag comes back on its final
(tagged) response, and untagged ``*`` responses (EXISTS, FETCH, CAPABILITY...) may come at any
time. So each stream is read on its own, in order, into commands and responses, each a line
that may go on after a literal ``{n}`` (or ``{n+}``) of exactly ``n`` octets (RFC 3501 §4.3), and
the events are put in capture-time order. A literal carrying a whole message (``BODY[]``,
``BODY.PEEK[]``, ``RFC822`` in a FETCH response, or an APPEND's message) is summarised as a
message; other literals are shown when short and printable, else as their size.

LOGIN's password and AUTHENTICATE's SASL lines travel in clear text and are marked so. After the
tagged OK to STARTTLS (RFC 3501 §6.2.1) the rest is TLS: the ``tls`` event, and no more lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from labctl.traffic.dialogue import DialogueDecoder, LineReader, plain, sasl_response
from labctl.traffic.model import CLIENT, NOTE, SERVER, Event, MailMessage, printable
from labctl.traffic.payload import CommandLine, Credentials, ImapResponse, MessageSummary, TlsStart
from labctl.traffic.tcp import StreamView

LITERAL = re.compile(rb"\{(\d{1,10})(\+?)\}$")  # at the end of a line: n octets follow its CRLF
# The FETCH item whose value a literal is: a whole message, or a part of one (RFC 3501 §7.4.2).
WHOLE_MESSAGE = re.compile(rb"(?:BODY(?:\.PEEK)?\[\]|RFC822)(?:<0>)?\s*$", re.IGNORECASE)
TAG = re.compile(rb"^[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|~]+$")  # RFC 3501 §9 tag: ASTRING-CHAR but "+"... near enough
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
SHOWN_LITERAL = 200  # a printable literal up to this size is shown; longer ones as their size
STATUSES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


@dataclass
class _Unit:
    """A command or a response: its line segments and the literals between them."""

    start: int
    time: float
    segments: list[bytes] = field(default_factory=list)
    literals: list[bytes] = field(default_factory=list)
    complete: bool = True
    missing: int = 0

    @property
    def head(self) -> bytes:
        return self.segments[0] if self.segments else b""


def _read_unit(reader: LineReader) -> _Unit | None:
    """The next command or response, its literals read exactly; None at the end of the stream."""
    line = reader.next()
    if line is None:
        return None
    unit = _Unit(line.start, line.time, [line.text], complete=line.complete, missing=line.missing)
    while unit.complete and (m := LITERAL.search(unit.segments[-1])) is not None:
        size = int(m.group(1))
        literal = reader.take(size)
        unit.literals.append(literal)
        if len(literal) < size:
            unit.complete = False
            break
        rest = reader.next()
        if rest is None:
            unit.complete = False
            break
        unit.segments.append(rest.text)
        unit.complete, unit.missing = rest.complete, unit.missing + rest.missing
    return unit


def _tokens(unit: _Unit) -> list[str]:
    """The words of a command, each literal standing as one word (for LOGIN's arguments)."""
    words: list[str] = []
    for i, segment in enumerate(unit.segments):
        text = printable(segment)
        found = TOKEN.findall(text)
        if i < len(unit.literals) and found and LITERAL.search(segment):
            found[-1] = unit.literals[i].decode("utf-8", "backslashreplace")
        words += found
    return words


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] == '"':
        return re.sub(r"\\(.)", r"\1", word[1:-1])
    return word


class ImapDecoder(DialogueDecoder):
    PROTOCOL = "IMAP"
    ANSWER = "an IMAP response"

    def __init__(self, to_server: StreamView, to_client: StreamView, *, midway: bool, show_bodies: bool) -> None:
        super().__init__(to_server, to_client, midway=midway, show_bodies=show_bodies)
        self._broken = False
        self._starttls: str | None = None  # the tag of a STARTTLS the client sent
        self._tls_at = 0  # where the client's TLS begins, after that STARTTLS
        self._fetches: list[tuple[float, str]] = []  # (time, text) of each FETCH command, for its messages

    @property
    def broken(self) -> bool:
        return self._broken

    # -- the hooks --------------------------------------------------------------------------------

    def resync(self) -> None:
        self.client.skip_partial()
        self.server.skip_partial()

    def greeting(self) -> None:
        first = self.server.data[self.server.pos:self.server.pos + 16]
        if first and not any(first.upper().startswith(g[:len(first)]) for g in (b"* OK", b"* PREAUTH", b"* BYE")):
            self.decodable = False

    def commands(self) -> None:
        sasl = False  # inside AUTHENTICATE: client lines are SASL responses until the tagged reply
        while (unit := _read_unit(self.client)) is not None:
            head = unit.head
            if sasl and b" " not in head.strip():
                self._sasl(unit)
                continue
            sasl = False
            tag, _, rest = printable(head).partition(" ")
            if not self.events and not TAG.match(tag.encode("utf-8", "replace")):
                self.decodable = False
                self.client.pos = unit.start
                return
            verb, _, arg = rest.partition(" ")
            verb = verb.upper()
            if tag.upper() == "DONE" and not rest:  # the end of IDLE (RFC 2177)
                verb, arg = "DONE", ""
            elif verb == "UID":
                sub, _, arg2 = arg.partition(" ")
                verb, arg = f"UID {sub.upper()}", arg2
            text = self._text(unit, message_literals=verb == "APPEND")
            if verb == "LOGIN":
                words = _tokens(unit)[2:]
                user = _unquote(words[0]) if words else None
                password = _unquote(words[1]) if len(words) > 1 else None
                secrets = tuple(s for s in (password, words[1] if len(words) > 1 else None) if s)
                self._event(unit, CLIENT, "auth", text + ("   (a password in clear text)" if password else ""),
                            secrets, Credentials(user=user, secret=password))
            elif verb == "AUTHENTICATE":
                words = arg.split()
                mechanism = words[0].upper() if words else None
                if len(words) > 1 and words[1] != "=":  # SASL-IR (RFC 4959): the response on the line
                    marked = plain(words[1], mechanism)
                    if marked is not None:
                        self._event(unit, CLIENT, "auth", text + marked.note, marked.secrets, marked.credentials)
                        continue
                self._event(unit, CLIENT, "auth", text, payload=Credentials(mechanism=mechanism))
                sasl = True
            else:
                self._event(unit, CLIENT, "command", text, payload=CommandLine(verb, arg))
                if verb in ("FETCH", "UID FETCH"):
                    self._fetches.append((unit.time, f"{verb} {arg}".strip()))
                if verb == "STARTTLS":
                    self._starttls = tag
                    self._tls_at = self.client.pos
                    self.client.pos = len(self.client.data)  # what follows is TLS
                    return

    def unclaimed(self) -> None:
        server = self.server
        while (unit := _read_unit(server)) is not None:
            head = unit.head
            tag, _, rest = printable(head).partition(" ")
            if tag == "+":
                status = "+"
            elif tag == "*":
                first, _, more = rest.partition(" ")
                status = first.upper() if first.upper() in STATUSES or not first.isdigit() else (
                    more.partition(" ")[0].upper())
            elif TAG.match(tag.encode("utf-8", "replace")) and rest.partition(" ")[0].upper() in STATUSES:
                status = rest.partition(" ")[0].upper()
            else:
                server.pos = unit.start
                self._broken = True
                return
            summary = None
            if tag == "*" and status == "FETCH":
                summary = self._fetched(unit)
            text = self._text(unit, message_literals=False)
            self._event(unit, SERVER, "reply", text, payload=ImapResponse(tag, status, summary))
            if tag == self._starttls and status == "OK":
                self.events.append(Event(unit.time, NOTE, "tls", "<TLS from here on>",
                                         payload=TlsStart(self._tls_at, server.pos)))
                server.pos = len(server.data)
                return

    # -- pieces -------------------------------------------------------------------------------------

    def _event(self, unit: _Unit, direction: str, kind: str, text: str, secrets: tuple[str, ...] = (),
               payload: CommandLine | Credentials | ImapResponse | None = None) -> None:
        self.events.append(Event(unit.time, direction, kind, text, secrets, payload, complete=unit.complete))
        self.gap(unit.time, unit.missing)

    def _sasl(self, unit: _Unit) -> None:
        raw = printable(unit.head)
        marked = sasl_response(raw)
        if marked is None:
            self._event(unit, CLIENT, "auth", raw)
        else:  # a bare base64 line's user-or-password is unknown: no credentials in the JSON, as POP3
            self._event(unit, CLIENT, "auth", raw + marked.note, marked.secrets,
                        marked.credentials if marked.credentials != Credentials() else None)

    def _text(self, unit: _Unit, *, message_literals: bool) -> str:
        """The unit as on the wire, each literal shown, summarised, or (a message) as its summary."""
        parts = [printable(unit.segments[0])]
        for i, literal in enumerate(unit.literals):
            whole = message_literals or bool(WHOLE_MESSAGE.search(LITERAL.sub(b"", unit.segments[i]).rstrip()))
            complete = i + 1 < len(unit.segments) or unit.complete
            if whole:
                _summary, shown = self.message(literal, complete)
            elif len(literal) <= SHOWN_LITERAL and literal.decode("utf-8", "replace").isprintable():
                shown = printable(literal)
            else:
                shown = printable(literal[:SHOWN_LITERAL].split(b"\r\n")[0]) + f" ... <literal, {len(literal)} octets>"
                if b"\r\n" in literal and len(literal) <= 4 * SHOWN_LITERAL:
                    shown = "\n".join(printable(x) for x in literal.rstrip(b"\r\n").split(b"\r\n"))
            parts.append(shown)
            if i + 1 < len(unit.segments):
                parts.append(printable(unit.segments[i + 1]))
        return "\n".join(p for p in parts if p != "")

    def _fetched(self, unit: _Unit) -> MessageSummary | None:
        """A FETCH response carrying a whole message: recorded as a message retrieved, like POP3 RETR."""
        found = None
        for i, literal in enumerate(unit.literals):
            if WHOLE_MESSAGE.search(LITERAL.sub(b"", unit.segments[i]).rstrip()):
                complete = i + 1 < len(unit.segments) or unit.complete
                summary, _shown = self.message(literal, complete)
                command = next((text for t, text in reversed(self._fetches) if t <= unit.time), "FETCH")
                self.messages.append(MailMessage(
                    time=unit.time, message_id=summary.message_id, subject=summary.subject, lines=summary.lines,
                    octets=summary.octets, complete=complete, command=command))
                found = summary
        return found


def decode(to_server: StreamView, to_client: StreamView, *, midway: bool = False,
           show_bodies: bool = False, resumed: bool = False) -> tuple[list[Event], list[MailMessage], bool]:
    """The events of an IMAP connection, the messages it fetched, and whether it was IMAP at all."""
    decoder = ImapDecoder(to_server, to_client, midway=midway, show_bodies=show_bodies)
    decoder.resumed = resumed
    return decoder.decode()
