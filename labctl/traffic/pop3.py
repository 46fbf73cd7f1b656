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

from labctl.traffic.dialogue import DialogueDecoder, Line, is_verb, sasl_response
from labctl.traffic.model import NOTE, SERVER, Event, MailMessage, printable
from labctl.traffic.payload import CommandLine, Credentials, Pop3Status, TlsStart
from labctl.traffic.tcp import StreamView
from services.pop3.core import multiline_answer
from services.textwire import unstuff

SHOWN_LINES = 20  # of a LIST/UIDL/CAPA answer; longer ones are cut with a count
MESSAGE_COMMANDS = frozenset({"RETR", "TOP"})
MAX_VERB = 8  # RFC 1939 §3: keywords are three or four characters; room for extensions' longer ones


def _status(text: bytes) -> str | None:
    """"+OK", "-ERR", "+" (a SASL continuation, RFC 5034 §4), or None if not a POP3 response."""
    for status in (b"+OK", b"-ERR"):
        if text.startswith(status) and (len(text) == len(status) or text[len(status)] == 0x20):
            return status.decode()
    if text == b"+" or text.startswith(b"+ "):
        return "+"
    return None


class Pop3Decoder(DialogueDecoder):
    PROTOCOL = "POP3"
    ANSWER = "a POP3 response"

    def __init__(self, to_server: StreamView, to_client: StreamView, *, midway: bool, show_bodies: bool) -> None:
        super().__init__(to_server, to_client, midway=midway, show_bodies=show_bodies)
        self._broken = False

    # -- the dialogue -------------------------------------------------------------------------------

    def resync(self) -> None:
        self.client.skip_partial()
        server = self.server
        while (line := server.next()) is not None:
            if _status(line.text) is not None:
                server.pos = line.start
                return

    def greeting(self) -> None:
        if self._response("", []) is None:
            self.decodable = False

    def unclaimed(self) -> None:
        while not self._broken and self._response("", []) is not None:
            pass

    @property
    def broken(self) -> bool:
        return self._broken

    def commands(self) -> None:
        first = True
        while (line := self.client.next()) is not None:
            if first and not is_verb(line.text, MAX_VERB):
                self.decodable = False
                self.client.pos = line.start
                return
            first = False
            text = printable(line.text)
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            args = arg.split()
            if verb == "PASS":
                self.line(line, "auth", text + "   (a password in clear text)", (arg,) if arg else (),
                          Credentials(secret=arg))
            elif verb == "USER":
                self.line(line, "auth", text, payload=Credentials(user=arg))
            elif verb == "AUTH":
                self.line(line, "auth", text, payload=Credentials(mechanism=arg))
            else:
                self.line(line, "command", text, payload=CommandLine(verb, arg))
            self.gap(line.time, line.missing)
            status = self._response(verb, args)
            while status == "+":  # SASL: the next client line answers the challenge
                answer = self.client.next()
                if answer is None:
                    return
                self._sasl(answer)
                status = self._response(verb, args)
            if verb == "STLS" and status == "+OK":
                self.events.append(Event(self.events[-1].time, NOTE, "tls", "<TLS from here on>",
                                         payload=TlsStart(self.client.pos, self.server.pos)))
                self.client.pos, self.server.pos = len(self.client.data), len(self.server.data)
                return

    def _sasl(self, line: Line) -> None:
        raw = printable(line.text)
        marked = sasl_response(raw)
        secrets, note = (marked.secrets, marked.note) if marked is not None else ((), "")
        # Which of them is the user and which the password depends on the mechanism's challenges,
        # which this line does not know: the JSON has no credentials for it, the text marks them.
        self.line(line, "auth", raw + note, secrets)

    def _response(self, verb: str, args: list[str]) -> str | None:
        """Read the response to ``verb``; its status, or None at the end or on garbage."""
        server = self.server
        line = server.next()
        if line is None:
            return None
        status = _status(line.text)
        if status is None:
            server.pos = line.start
            self._broken = True
            return None
        text = printable(line.text)
        if status != "+OK" or not multiline_answer(verb, args):
            self.events.append(Event(line.time, SERVER, "reply", text, payload=Pop3Status(status),
                                     complete=line.complete))
            self.gap(line.time, line.missing)
            return status
        wire, complete = server.dotted()  # RFC 1939 §3: the same CRLF.CRLF as SMTP data
        body = unstuff(wire)
        missing = server.view.gap_in(line.start, server.pos)
        if verb in MESSAGE_COMMANDS:
            summary, shown = self.message(body, complete)
            self.events.append(Event(line.time, SERVER, "reply", text + "\n" + shown,
                                     payload=Pop3Status(status, summary), complete=complete))
            self.messages.append(MailMessage(
                time=line.time, message_id=summary.message_id, subject=summary.subject, lines=summary.lines,
                octets=summary.octets, complete=complete, command=" ".join([verb, *args])))
        else:
            lines = [printable(x) for x in body.split(b"\r\n")[:-1]] if body else []
            if len(lines) > SHOWN_LINES:
                lines = [*lines[:SHOWN_LINES], f"... ({len(lines) - SHOWN_LINES} more lines)"]
            self.events.append(Event(line.time, SERVER, "reply", "\n".join([text, *lines, "." if complete else ""]),
                                     payload=Pop3Status(status), complete=complete))
        self.gap(line.time, missing)
        return status


def decode(to_server: StreamView, to_client: StreamView, *, midway: bool = False,
           show_bodies: bool = False, resumed: bool = False) -> tuple[list[Event], list[MailMessage], bool]:
    """The events of a POP3 connection, the messages it retrieved, and whether it was POP3 at all."""
    decoder = Pop3Decoder(to_server, to_client, midway=midway, show_bodies=show_bodies)
    decoder.resumed = resumed
    return decoder.decode()
