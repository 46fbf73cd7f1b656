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

import base64
import binascii
from dataclasses import dataclass

from labctl.traffic.lines import Line, LineReader
from labctl.traffic.message import summarise
from labctl.traffic.model import CLIENT, NOTE, SERVER, Event, MailMessage, preview, printable
from labctl.traffic.tcp import StreamView
from services.smtp.wire import (
    AUTH_CONTINUE_CODE,
    DATA_GO_AHEAD_CODE,
    TLS_GO_AHEAD_CODE,
    Reply,
    parse_reply_line,
)
from services.textwire import find_data_end, unstuff

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
    try:
        return base64.b64decode(text.strip(), validate=True).decode("utf-8", "backslashreplace")
    except (binascii.Error, ValueError):
        return None


def _address(arg: str) -> str:
    """The address in ``FROM:<a@b> SIZE=1`` or ``TO: a@b``."""
    _, _, rest = arg.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        return rest[1:rest.find(">")] if ">" in rest else rest[1:]
    return rest.split(" ")[0]


class SmtpDecoder:
    """Decode one SMTP connection; :meth:`decode` returns (events, messages, decodable)."""

    def __init__(self, to_server: StreamView, to_client: StreamView, *, midway: bool, show_bodies: bool) -> None:
        self.client = LineReader(to_server)
        self.replies = _Replies(to_client, midway)
        self.midway = midway
        self.show_bodies = show_bodies
        self.events: list[Event] = []
        self.messages: list[MailMessage] = []
        self.decodable = True
        self.sender: str | None = None
        self.recipients: list[str] = []

    # -- output -----------------------------------------------------------------------------------

    def _reply(self, reply: _Heard | None) -> _Heard | None:
        if reply is not None:
            self.events.append(Event(reply.time, SERVER, "reply", reply.text, info={"code": reply.reply.code},
                                     complete=reply.complete))
            if reply.missing:
                self.events.append(Event(reply.time, NOTE, "gap", f"<{reply.missing} octets missing from the capture>"))
        return reply

    def _undecodable(self, view_reader: LineReader, direction: str, at: int, why: str) -> None:
        rest = view_reader.data[at:]
        if rest:
            self.events.append(Event(view_reader.time(at), direction, "undecodable",
                                     f"<{why}: {preview(rest)}>", info={"octets": len(rest)}, complete=False))
        view_reader.pos = len(view_reader.data)

    # -- the dialogue -------------------------------------------------------------------------------

    def decode(self) -> tuple[list[Event], list[MailMessage], bool]:
        client = self.client
        if self.midway:
            self._resync()
        else:
            greeting = self._reply(self.replies.next())
            if greeting is None and self.replies.broken is not None:
                self.decodable = False
        if self.decodable:
            self._commands()
        # Replies nobody's command claimed (the client's stream ended, or was not captured).
        while self.decodable and self._reply(self.replies.next()) is not None:
            pass
        if self.replies.broken is not None:
            broken = self.replies.broken
            self.decodable = self.decodable and bool(self.events)
            self._undecodable(self.replies.reader, SERVER, broken.start, "not an SMTP reply")
        if not self.decodable and not client.at_end:
            self._undecodable(client, CLIENT, client.pos, "not SMTP")
        self.events.sort(key=lambda e: e.time)  # stable: same-time events keep their wire order
        return self.events, self.messages, self.decodable

    def _resync(self) -> None:
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

    def _commands(self) -> None:
        client = self.client
        first = True
        while (line := client.next()) is not None:
            if first and not _is_command(line.text):
                self.decodable = False
                client.pos = line.start
                return
            first = False
            verb, _, arg = printable(line.text).partition(" ")
            verb_u = verb.upper()
            if verb_u == "AUTH":
                self._auth(line, arg)
                continue
            self.events.append(Event(line.time, CLIENT, "command", printable(line.text), complete=line.complete))
            if line.missing:
                self.events.append(Event(line.time, NOTE, "gap", f"<{line.missing} octets missing from the capture>"))
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
        end = find_data_end(client.data, start)
        complete = end >= 0
        stop = end if complete else len(client.data)
        wire = client.data[start:stop]
        client.pos = end + 3 if complete else stop
        # No octet of it captured yet: it begins no earlier than the 354 that let it begin.
        when = client.time(start) if stop > start else go_ahead.time
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
        client = self.client
        message = unstuff(wire) if dotted else wire
        summary = summarise(message)
        text = summary.text(complete)
        missing = client.view.gap_in(start, start + len(wire) + 1)
        if missing:
            text = text[:-1] + f", {missing} octets missing from the capture>"
        if self.show_bodies:
            text += "\n" + message.decode("utf-8", "backslashreplace").rstrip("\r\n")
        info = {"message_id": summary.message_id, "subject": summary.subject,
                "lines": summary.lines, "octets": summary.octets}
        self.events.append(Event(when, CLIENT, "message", text, info=info, complete=complete))
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
        client = self.client
        rest = len(client.data) - client.pos
        server_rest = len(self.replies.reader.data) - self.replies.reader.pos
        self.events.append(Event(client.time(client.pos) if rest else self.events[-1].time, NOTE, "tls",
                                 f"<TLS from here on: {rest} octets to the server, {server_rest} to the client>",
                                 complete=False))  # the counts grow with the connection
        client.pos = len(client.data)
        self.replies.reader.pos = len(self.replies.reader.data)

    def _auth(self, line: Line, arg: str) -> None:
        """AUTH PLAIN/LOGIN with the credentials decoded (RFC 4616, draft-murchison-sasl-login)."""
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        text = printable(line.text)
        secrets: list[str] = []
        info: dict[str, str] = {"mechanism": mech}
        if mech == "PLAIN" and initial:
            secrets, note = _plain(initial, info)
            text += note
        self.events.append(Event(line.time, CLIENT, "auth", text, tuple(secrets), info, complete=line.complete))
        reply = self._reply(self.replies.next())
        step = 0
        while reply is not None and reply.reply.code == AUTH_CONTINUE_CODE:
            answer = self.client.next()
            if answer is None:
                return
            raw = printable(answer.text)
            challenge = _b64(reply.last) or ""
            info = {"mechanism": mech}
            if raw == "*":  # RFC 4954 §4: the client cancels
                secrets, note = [], "   (cancelled)"
            elif mech == "PLAIN":
                secrets, note = _plain(raw, info)
            else:
                decoded = _b64(raw)
                is_password = "pass" in challenge.lower() or (mech == "LOGIN" and step == 1)
                if decoded is None:
                    secrets, note = [], ""
                elif is_password:
                    info["password"] = decoded
                    secrets, note = [raw, decoded], f'   (base64 of "{decoded}": a password in clear text)'
                else:
                    info["user"] = decoded
                    secrets, note = [], f'   (base64 of "{decoded}")'
            self.events.append(Event(answer.time, CLIENT, "auth", raw + note, tuple(secrets), info,
                                     complete=answer.complete))
            step += 1
            reply = self._reply(self.replies.next())


def _plain(b64: str, info: dict[str, str]) -> tuple[list[str], str]:
    decoded = _b64(b64)
    if decoded is None or decoded.count("\0") != 2:
        return [], ""
    _authzid, user, password = decoded.split("\0")
    info.update(user=user, password=password)
    return [b64, password], f'   (base64 of user "{user}", password "{password}": clear text)'


def _is_command(text: bytes) -> bool:
    verb = text.split(b" ", 1)[0]
    return 0 < len(verb) <= MAX_VERB and verb.isalpha() and verb.isascii()


def decode(to_server: StreamView, to_client: StreamView, *, midway: bool = False,
           show_bodies: bool = False) -> tuple[list[Event], list[MailMessage], bool]:
    """The events of an SMTP connection, the messages it carried, and whether it was SMTP at all."""
    return SmtpDecoder(to_server, to_client, midway=midway, show_bodies=show_bodies).decode()
