"""POP3 dialogues from the two reassembled streams of a connection (RFC 1939, 2449, 5034).

Each command takes the next response (RFC 2449 §6.6: pipelined commands are answered in
order). Whether a ``+OK`` goes on with lines ended by ``.`` is decided by
:func:`services.pop3.core.multiline_answer`, the table our POP3 server answers by, and the end of
those lines is the same ``<CRLF>.<CRLF>`` that ends SMTP data (RFC 1939 §3), found with
:func:`services.textwire.find_data_end`. RETR and TOP bodies are summarised as messages; other
multi-line answers (LIST, UIDL, CAPA) are shown, dot-stuffing removed. USER/PASS and the SASL
lines of AUTH travel in clear text and are marked so.
"""

from __future__ import annotations

import base64
import binascii

from labctl.traffic.lines import Line, LineReader
from labctl.traffic.message import summarise
from labctl.traffic.model import CLIENT, NOTE, SERVER, Event, MailMessage, preview, printable
from labctl.traffic.tcp import StreamView
from services.pop3.core import multiline_answer
from services.textwire import find_data_end, unstuff

SHOWN_LINES = 20  # of a LIST/UIDL/CAPA answer; longer ones are cut with a count
MESSAGE_COMMANDS = frozenset({"RETR", "TOP"})


def _status(text: bytes) -> str | None:
    """"+OK", "-ERR", "+" (a SASL continuation, RFC 5034 §4), or None if not a POP3 response."""
    for status in (b"+OK", b"-ERR"):
        if text.startswith(status) and (len(text) == len(status) or text[len(status)] == 0x20):
            return status.decode()
    if text == b"+" or text.startswith(b"+ "):
        return "+"
    return None


class Pop3Decoder:
    def __init__(self, to_server: StreamView, to_client: StreamView, *, midway: bool, show_bodies: bool) -> None:
        self.client = LineReader(to_server)
        self.server = LineReader(to_client)
        self.midway = midway
        self.show_bodies = show_bodies
        self.events: list[Event] = []
        self.messages: list[MailMessage] = []
        self.decodable = True
        self.broken = False

    def decode(self) -> tuple[list[Event], list[MailMessage], bool]:
        if self.midway:
            self.client.skip_partial()
            self._skip_to_status()
        else:
            greeting = self._response("", [])
            if greeting is None:
                self.decodable = False
        if self.decodable:
            self._commands()
        while not self.broken and self._response("", []) is not None:
            pass
        if self.broken:
            self.decodable = self.decodable and bool(self.events)
            self._undecodable(self.server, SERVER, "not a POP3 response")
        if not self.decodable:
            self._undecodable(self.client, CLIENT, "not POP3")
        self.events.sort(key=lambda e: e.time)
        return self.events, self.messages, self.decodable

    def _skip_to_status(self) -> None:
        server = self.server
        while (line := server.next()) is not None:
            if _status(line.text) is not None:
                server.pos = line.start
                return

    def _undecodable(self, reader: LineReader, direction: str, why: str) -> None:
        rest = reader.data[reader.pos:]
        if rest:
            self.events.append(Event(reader.time(reader.pos), direction, "undecodable", f"<{why}: {preview(rest)}>",
                                     info={"octets": len(rest)}, complete=False))
        reader.pos = len(reader.data)

    def _commands(self) -> None:
        first = True
        while (line := self.client.next()) is not None:
            verb_b = line.text.split(b" ", 1)[0]
            if first and not (verb_b.isalpha() and verb_b.isascii() and 0 < len(verb_b) <= 8):
                self.decodable = False
                self.client.pos = line.start
                return
            first = False
            text = printable(line.text)
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            args = arg.split()
            whole = line.complete
            if verb == "PASS":
                self.events.append(Event(line.time, CLIENT, "auth", text + "   (a password in clear text)",
                                         (arg,) if arg else (), {"password": arg}, complete=whole))
            elif verb == "USER":
                self.events.append(Event(line.time, CLIENT, "auth", text, (), {"user": arg}, complete=whole))
            elif verb == "AUTH":
                self.events.append(Event(line.time, CLIENT, "auth", text, (), {"mechanism": arg}, complete=whole))
            else:
                self.events.append(Event(line.time, CLIENT, "command", text, complete=whole))
            self._gap(line)
            status = self._response(verb, args)
            while status == "+":  # SASL: the next client line answers the challenge
                answer = self.client.next()
                if answer is None:
                    return
                self._sasl(answer)
                status = self._response(verb, args)
            if verb == "STLS" and status == "+OK":
                self.events.append(Event(self.events[-1].time, NOTE, "tls", "<TLS from here on>"))
                self.client.pos, self.server.pos = len(self.client.data), len(self.server.data)
                return

    def _sasl(self, line: Line) -> None:
        raw = printable(line.text)
        try:
            decoded = base64.b64decode(raw, validate=True).decode("utf-8", "backslashreplace")
        except (binascii.Error, ValueError):
            decoded = None
        secrets: tuple[str, ...] = ()
        note = ""
        if decoded is not None and decoded.count("\0") == 2:
            _, user, password = decoded.split("\0")
            secrets, note = (raw, password), f'   (base64 of user "{user}", password "{password}": clear text)'
        elif decoded is not None and raw != "*":
            secrets, note = (raw, decoded), f'   (base64 of "{decoded}": clear text)'
        self.events.append(Event(line.time, CLIENT, "auth", raw + note, secrets, complete=line.complete))

    def _gap(self, line: Line) -> None:
        if line.missing:
            self.events.append(Event(line.time, NOTE, "gap", f"<{line.missing} octets missing from the capture>"))

    def _response(self, verb: str, args: list[str]) -> str | None:
        """Read the response to ``verb``; its status, or None at the end or on garbage."""
        server = self.server
        line = server.next()
        if line is None:
            return None
        status = _status(line.text)
        if status is None:
            server.pos = line.start
            self.broken = True
            return None
        text = printable(line.text)
        if status != "+OK" or not multiline_answer(verb, args):
            self.events.append(Event(line.time, SERVER, "reply", text, info={"status": status},
                                     complete=line.complete))
            self._gap(line)
            return status
        start = server.pos
        end = find_data_end(server.data, start)  # RFC 1939 §3: the same CRLF.CRLF as SMTP data
        complete = end >= 0
        stop = end if complete else len(server.data)
        body = unstuff(server.data[start:stop])
        server.pos = end + 3 if complete else stop
        missing = server.view.gap_in(line.start, server.pos)
        if verb in MESSAGE_COMMANDS:
            summary = summarise(body)
            shown = summary.text(complete)
            if self.show_bodies:
                shown += "\n" + body.decode("utf-8", "backslashreplace").rstrip("\r\n")
            info = {"status": status, "message_id": summary.message_id, "subject": summary.subject,
                    "lines": summary.lines, "octets": summary.octets}
            self.events.append(Event(line.time, SERVER, "reply", text + "\n" + shown, info=info, complete=complete))
            self.messages.append(MailMessage(
                time=line.time, message_id=summary.message_id, subject=summary.subject, lines=summary.lines,
                octets=summary.octets, complete=complete, command=" ".join([verb, *args])))
        else:
            lines = [printable(x) for x in body.split(b"\r\n")[:-1]] if body else []
            if len(lines) > SHOWN_LINES:
                lines = [*lines[:SHOWN_LINES], f"... ({len(lines) - SHOWN_LINES} more lines)"]
            self.events.append(Event(line.time, SERVER, "reply", "\n".join([text, *lines, "." if complete else ""]),
                                     info={"status": status}, complete=complete))
        if missing:
            self.events.append(Event(line.time, NOTE, "gap", f"<{missing} octets missing from the capture>"))
        return status


def decode(to_server: StreamView, to_client: StreamView, *, midway: bool = False,
           show_bodies: bool = False) -> tuple[list[Event], list[MailMessage], bool]:
    """The events of a POP3 connection, the messages it retrieved, and whether it was POP3 at all."""
    return Pop3Decoder(to_server, to_client, midway=midway, show_bodies=show_bodies).decode()
