"""SMTP dialogues from the two reassembled streams of a connection (RFC 5321, 2920, 3030, 4954).

The client's commands are read in order and each takes the next reply from the server's stream,
which is how SMTP pairs them, pipelined or not (RFC 2920 §3.1: replies in command order). The
pairing decides how the client's bytes go on: after a ``354`` to DATA they are the message,
ended where :func:`services.textwire.find_data_end` says our servers end it; after BDAT n, n
octets of message (RFC 3030); after a ``334`` the next line belongs to AUTH (RFC 4954); after
a ``220`` to STARTTLS the rest is TLS.

Every AUTH exchange is decoded back to the user name and password it carries: in the lab they
cross in clear text (no TLS), which is one of its lessons, and :attr:`Event.secrets` lets
``--hide-secrets`` mask them.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.traffic.dialogue import DialogueDecoder, Line, LineReader, from_base64, is_verb, plain
from labctl.traffic.model import CLIENT, NOTE, SERVER, Event, MailMessage, printable
from labctl.traffic.payload import CommandLine, Credentials, TlsStart
from labctl.traffic.tcp import StreamView
from services.smtp.wire import (
    AUTH_CONTINUE_CODE,
    DATA_GO_AHEAD_CODE,
    TLS_GO_AHEAD_CODE,
    Reply,
    parse_reply_line,
)
from services.textwire import unstuff

# A command verb is a word of letters (RFC 5321 §4.1.1); anything else opening the client's
# stream means it is not speaking SMTP.
MAX_VERB = 10
# The verbs a client sends (RFC 5321 §4.1, 3030, 3207, 4954): after joining mid-way, the first
# line that starts with one is where the commands resume; lines before a lone "." are a message.
VERBS = frozenset({b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"VRFY", b"EXPN", b"HELP",
                   b"NOOP", b"QUIT", b"AUTH", b"STARTTLS"})


@dataclass(frozen=True)
class _Heard:
    """A reply as captured: what it says, when its first line came, its lines as they crossed."""

    reply: Reply
    time: float
    lines: list[str]  # printable, code and separator included
    missing: int
    complete: bool = False  # its last line (code and space) was read, up to its LF

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def last(self) -> str:
        return self.lines[-1][4:] if self.lines else ""

    @property
    def last_reply(self) -> Reply:
        """The reply as its last line says it (the event's payload: what a trace quotes)."""
        return self.reply if len(self.lines) <= 1 else Reply.parse(self.reply.code, [self.last])


def _heard(time: float, code: int, lines: list[str], missing: int, complete: bool = False) -> _Heard:
    return _Heard(Reply.parse(code, [line[4:] for line in lines]), time, lines, missing, complete)


class _Replies:
    """The server's replies, parsed one at a time as the client's commands claim them."""

    def __init__(self, view: StreamView, midway: bool) -> None:
        self.reader = LineReader(view)
        first = self.reader.next()
        self.reader.pos = 0
        if midway and first is not None and parse_reply_line(first.text) is None:
            self.reader.skip_partial()  # the capture began inside a reply line
        self.broken: Line | None = None  # the first line that was not a reply line

    def next(self) -> _Heard | None:
        if self.broken is not None:
            return None
        lines: list[str] = []
        first: Line | None = None
        missing = 0
        while (line := self.reader.next()) is not None:
            parsed = parse_reply_line(line.text)
            if parsed is None:
                self.broken = line
                self.reader.pos = line.start
                return _heard(first.time, int(lines[0][:3]), lines, missing) if first else None
            first = first or line
            missing += line.missing
            lines.append(printable(line.text))
            if parsed.last:
                return _heard(first.time, parsed.code, lines, missing, line.complete)
        return _heard(first.time, int(lines[0][:3]), lines, missing) if first else None


def _b64(text: str) -> str | None:
    return from_base64(text.strip())


def _address(arg: str) -> str:
    """The address in ``FROM:<a@b> SIZE=1`` or ``TO: a@b``."""
    _, _, rest = arg.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        return rest[1:rest.find(">")] if ">" in rest else rest[1:]
    return rest.split(" ")[0]


class SmtpDecoder(DialogueDecoder):
    """Decode one SMTP connection; :meth:`decode` returns (events, messages, decodable)."""

    PROTOCOL = "SMTP"
    ANSWER = "an SMTP reply"

    def __init__(self, to_server: StreamView, to_client: StreamView, *, midway: bool, show_bodies: bool) -> None:
        super().__init__(to_server, to_client, midway=midway, show_bodies=show_bodies)
        self.replies = _Replies(to_client, midway)
        self.server = self.replies.reader
        self.sender: str | None = None
        self.recipients: list[str] = []

    def _reply(self, reply: _Heard | None) -> _Heard | None:
        if reply is not None:
            self.events.append(Event(reply.time, SERVER, "reply", reply.text,
                                     payload=reply.last_reply, complete=reply.complete))
            self.gap(reply.time, reply.missing)
        return reply

    # -- the dialogue -------------------------------------------------------------------------------

    def greeting(self) -> None:
        if self._reply(self.replies.next()) is None and self.replies.broken is not None:
            self.decodable = False

    def unclaimed(self) -> None:
        while self.decodable and self._reply(self.replies.next()) is not None:
            pass

    @property
    def broken(self) -> bool:
        return self.replies.broken is not None

    def resync(self) -> None:
        """Joined mid-way: skip to a line boundary; client lines before a "." may be a message's tail."""
        client = self.client
        first = client.next()
        client.pos = 0
        if first is not None and first.text.split(b" ", 1)[0].upper() in VERBS:
            return  # the capture began at a command
        start = client.pos
        probe = LineReader(client.view, start)
        looks_like_body = False
        while (line := probe.next()) is not None:
            if line.text == b".":
                looks_like_body = True
                break
            if line.text.split(b" ", 1)[0].upper() in VERBS:
                break
        if looks_like_body and probe.pos > start:
            body = client.data[start:probe.pos - 3] if probe.pos - start >= 3 else b""
            lines = body.count(b"\n")
            self.events.append(Event(client.time(start), CLIENT, "message",
                                     f"<end of a message, {lines} lines (the capture began inside it)>"))
            client.pos = probe.pos
            self._reply(self.replies.next())  # its reply (250 after the data)

    def commands(self) -> None:
        client = self.client
        first = True
        while (line := client.next()) is not None:
            if first and not is_verb(line.text, MAX_VERB):
                self.decodable = False
                client.pos = line.start
                return
            first = False
            text = printable(line.text)
            verb, _, arg = text.partition(" ")
            verb_u = verb.upper()
            if verb_u == "AUTH":
                self._auth(line, arg)
                continue
            self.line(line, "command", text, payload=CommandLine(verb_u, arg))
            self.gap(line.time, line.missing)
            if verb_u == "BDAT":
                self._bdat(line, arg)
                continue
            reply = self._reply(self.replies.next())
            if verb_u == "MAIL" and reply is not None and reply.reply.code < 300:
                self.sender, self.recipients = _address(arg), []
            elif verb_u == "RCPT" and reply is not None and reply.reply.code < 300:
                self.recipients.append(_address(arg))
            elif verb_u in ("RSET", "HELO", "EHLO"):
                self.sender, self.recipients = None, []
            elif verb_u == "DATA" and reply is not None and reply.reply.code == DATA_GO_AHEAD_CODE:
                self._data(reply)
            elif verb_u == "STARTTLS" and reply is not None and reply.reply.code == TLS_GO_AHEAD_CODE:
                self._tls()
                return

    def _data(self, go_ahead: _Heard) -> None:
        client = self.client
        start = client.pos
        wire, complete = client.dotted()
        # No octet of it captured yet: it begins no earlier than the 354 that let it begin.
        when = client.time(start) if wire else go_ahead.time
        self._message(start, wire, complete, dotted=True, when=when)

    def _bdat(self, line: Line, arg: str) -> None:
        """BDAT n [LAST]: exactly n octets follow, no dot-stuffing (RFC 3030 §2)."""
        size_text, _, last = arg.partition(" ")
        client = self.client
        if not size_text.isdigit():
            self._reply(self.replies.next())
            return
        start = client.pos
        chunk = client.take(int(size_text))
        reply = self._reply(self.replies.next())
        done = last.strip().upper() == "LAST"
        self._message(start, chunk, len(chunk) == int(size_text), dotted=False, reply=reply, last=done,
                      when=client.time(start) if chunk else line.time)

    def _message(self, start: int, wire: bytes, complete: bool, *, dotted: bool, when: float,
                 reply: _Heard | None = None, last: bool = True) -> None:
        message = unstuff(wire) if dotted else wire
        summary, text = self.message(message, complete, self.client.view.gap_in(start, start + len(wire) + 1))
        self.events.append(Event(when, CLIENT, "message", text, payload=summary, complete=complete))
        if dotted and complete:
            reply = self._reply(self.replies.next())
        if last:
            self.messages.append(MailMessage(
                time=when, message_id=summary.message_id, subject=summary.subject, lines=summary.lines,
                octets=summary.octets, complete=complete, sender=self.sender, recipients=tuple(self.recipients),
                reply_code=reply.reply.code if reply else None, reply_text=reply.last if reply else None,
                reply_time=reply.time if reply else None))
            self.sender, self.recipients = None, []

    def _tls(self) -> None:
        client, server = self.client, self.server
        rest = len(client.data) - client.pos
        server_rest = len(server.data) - server.pos
        self.events.append(Event(client.time(client.pos) if rest else self.events[-1].time, NOTE, "tls",
                                 f"<TLS from here on: {rest} octets to the server, {server_rest} to the client>",
                                 payload=TlsStart(client.pos, server.pos),
                                 complete=False))  # the counts grow with the connection
        client.pos = len(client.data)
        server.pos = len(server.data)

    def _auth(self, line: Line, arg: str) -> None:
        """AUTH PLAIN/LOGIN with the credentials decoded (RFC 4616, draft-murchison-sasl-login)."""
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        text = printable(line.text)
        marked = plain(initial, mech) if mech == "PLAIN" and initial else None
        if marked is not None:
            self.line(line, "auth", text + marked.note, marked.secrets, marked.credentials)
        else:
            self.line(line, "auth", text, payload=Credentials(mech))
        reply = self._reply(self.replies.next())
        step = 0
        while reply is not None and reply.reply.code == AUTH_CONTINUE_CODE:
            answer = self.client.next()
            if answer is None:
                return
            raw = printable(answer.text)
            challenge = _b64(reply.last) or ""
            secrets: tuple[str, ...] = ()
            note = ""
            credentials = Credentials(mech)
            if raw == "*":  # RFC 4954 §4: the client cancels
                note = "   (cancelled)"
            elif mech == "PLAIN":
                marked = plain(raw, mech)
                if marked is not None:
                    secrets, note, credentials = marked.secrets, marked.note, marked.credentials
            elif (decoded := _b64(raw)) is not None:
                if "pass" in challenge.lower() or (mech == "LOGIN" and step == 1):
                    secrets, note = (raw, decoded), f'   (base64 of "{decoded}": a password in clear text)'
                    credentials = Credentials(mech, secret=decoded)
                else:
                    note, credentials = f'   (base64 of "{decoded}")', Credentials(mech, user=decoded)
            self.line(answer, "auth", raw + note, secrets, credentials)
            step += 1
            reply = self._reply(self.replies.next())


def decode(to_server: StreamView, to_client: StreamView, *, midway: bool = False,
           show_bodies: bool = False, resumed: bool = False) -> tuple[list[Event], list[MailMessage], bool]:
    """The events of an SMTP connection, the messages it carried, and whether it was SMTP at all."""
    decoder = SmtpDecoder(to_server, to_client, midway=midway, show_bodies=show_bodies)
    decoder.resumed = resumed
    return decoder.decode()
