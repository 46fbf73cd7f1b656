"""``python3 -m services talk --proto smtp|pop3|imap HOST PORT``: a raw dialogue, as typed into telnet.

The article's activities are typed by hand: one command line, then wait for the server's
reply, then the next. This tool does exactly that for labctl's scenarios (which cannot reach the
sealed lab from outside): it reads a JSON list of lines to send on standard input, sends each one
with CRLF after reading the previous reply, and prints the whole exchange as JSON:
``[{"sent": null, "reply": "220 ..."}, {"sent": "HELO andy", "reply": "250 ..."}, ...]``.
A line may be ``{"send": LINE, "expect": "250", "match": PATTERN}`` (the first one's ``send`` may
be null: what the greeting must be): at the first reply that is not what it must be, the typing
stops, as a person at the keyboard would, so a dialogue that failed sends no message: SMTP says
QUIT (an open transaction is then aborted, RFC 5321 §4.1.1.10), POP3 just closes, so that no DELE
of the failed session takes effect (RFC 1939 §6: only QUIT commits).

A line holding several lines (a message typed after DATA, ended by ".") is sent as one block and
gets one reply. Where a reply ends is protocol knowledge: SMTP continues a reply with "250-"
(RFC 5321 §4.2.1); a POP3 ``+OK`` to CAPA, RETR, TOP, and LIST or UIDL without argument runs until
"." (:func:`services.pop3.core.multiline_answer`); an IMAP reply is every untagged line up to the
one tagged with the command's tag (RFC 3501 §2.2.2), or a ``+`` continuation, with each literal
``{n}`` read as exactly n octets (§4.3), so a message's lines never end a reply early. What
``expect`` is checked against is the reply's status line: the first line for SMTP and POP3, the
tagged line without its tag for IMAP ("OK LOGIN completed"; the greeting "* OK ..." as "OK ...";
a continuation as "+ ..."). When the server closes the connection, the
dialogue stops there. When the list ends without QUIT, the connection is simply closed: a dropped
session, which is what some scenarios want.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from services.pop3.core import multiline_answer

PROTOCOLS = ("smtp", "pop3", "imap")
_LITERAL = re.compile(rb"\{(\d{1,9})\+?\}\r?\n$")  # a line ending in {n}: n octets follow (RFC 3501 §4.3)

DEFAULT_TIMEOUT = 10.0  # seconds for a connection or one reply; the lab answers in milliseconds


@dataclass(frozen=True)
class Line:
    """One thing to type (None: only read the greeting) and what its reply must be."""

    send: str | None
    expect: str | None = None  # how the reply's first line starts: "250", "250 2.1.5", "+OK"
    match: str | None = None  # a pattern (Python re, multi-line) searched in the whole reply


def status_line(reply: str, proto: str = "smtp") -> str:
    """The line of ``reply`` that ``expect`` is about: its first (SMTP, POP3), or for IMAP its last,
    the tagged status, without the tag ("OK FETCH completed"; "+ ..." for a continuation)."""
    if proto != "imap":
        return reply.split("\r\n", 1)[0].rstrip("\r\n")
    lines = [line for line in reply.split("\r\n") if line]
    last = lines[-1] if lines else ""
    return last if last.startswith("+") else last.partition(" ")[2]


def reply_fits(reply: str, expect: str | None, match: str | None, proto: str = "smtp") -> bool:
    """Does ``reply``'s status line start as ``expect`` says, and does the reply hold ``match``?
    (labctl's judge asks the same.)"""
    first = status_line(reply, proto)
    if expect is not None and not first.startswith(expect):
        return False
    return match is None or re.search(match, reply.replace("\r\n", "\n"), re.MULTILINE) is not None


def _read_reply(stream: BinaryIO, proto: str, command: str | None, tag: str | None = None) -> tuple[str, bool]:
    """The reply to ``command`` (None: the greeting) and whether the server closed the connection;
    ``tag``: the IMAP tag whose tagged line ends it."""
    if proto == "imap":
        return _read_imap(stream, None if command is None else tag)
    lines: list[str] = []
    while True:
        raw = stream.readline()
        if not raw:
            return "".join(lines), True
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        if proto == "smtp":
            if line[3:4] != "-":  # "250-..." continues, "250 ..." ends the reply
                return "".join(lines), False
        elif len(lines) == 1:
            words = (command or "").split()
            if not (line.startswith("+OK") and words and multiline_answer(words[0], words[1:])):
                return line, False
        elif line == ".\r\n":
            return "".join(lines), False


def _read_imap(stream: BinaryIO, tag: str | None) -> tuple[str, bool]:
    """Lines up to the one tagged ``tag`` (None: the greeting, one line) or a continuation."""
    out = bytearray()
    while True:
        raw = stream.readline()
        if not raw:
            return out.decode("utf-8", "replace"), True
        out += raw
        while (literal := _LITERAL.search(raw)) is not None:  # the literal, then the line goes on
            data = stream.read(int(literal.group(1)))
            out += data
            raw = stream.readline() if len(data) == int(literal.group(1)) else b""
            if not raw:
                return out.decode("utf-8", "replace"), True
            out += raw
        if tag is None or raw.startswith(b"+") or raw.split(b" ", 1)[0].decode("utf-8", "replace") == tag:
            return out.decode("utf-8", "replace"), False


def talk(host: str, port: int, proto: str, script: Sequence[Line | str], timeout: float) -> list[dict[str, object]]:
    lines = [x if isinstance(x, Line) else Line(x) for x in script]
    transcript: list[dict[str, object]] = []
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return [{"sent": None, "reply": "", "error": f"cannot connect to {host}:{port}: {exc.strerror or exc}"}]
    greeting = lines[0] if lines and lines[0].send is None else Line(None)
    typed = [x for x in lines if x.send is not None]
    with sock, sock.makefile("rb") as stream:
        try:
            reply, closed = _read_reply(stream, proto, None)
            transcript.append({"sent": None, "reply": reply, "closed": closed})
            fits = reply_fits(reply, greeting.expect, greeting.match, proto)
            tag = None
            for line in typed:
                if closed or not fits:
                    break
                words = (line.send or "").split(None, 1)
                # IDLE's DONE (RFC 2177) has no tag: the IDLE's tagged reply ends it.
                tag = tag if not words or words[0].upper() == "DONE" else words[0]
                reply, closed = _say(sock, stream, proto, line.send or "", tag)
                transcript.append({"sent": line.send, "reply": reply, "closed": closed})
                fits = reply_fits(reply, line.expect, line.match, proto)
            last = str(transcript[-1]["sent"] or "").strip().upper()
            if not fits and not closed and proto == "smtp" and last != "QUIT":
                reply, closed = _say(sock, stream, proto, "QUIT")
                transcript.append({"sent": "QUIT", "reply": reply, "closed": closed})
        except OSError as exc:  # a timeout or a reset: say where it happened
            transcript.append({"sent": None, "reply": "", "error": str(exc) or type(exc).__name__})
    return transcript


def _say(sock: socket.socket, stream: BinaryIO, proto: str, line: str, tag: str | None = None) -> tuple[str, bool]:
    sock.sendall(line.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8") + b"\r\n")
    return _read_reply(stream, proto, line, tag)


def _line(item: Any) -> Line:
    if isinstance(item, str):
        return Line(item)
    if isinstance(item, dict) and all(item.get(k) is None or isinstance(item[k], str)
                                      for k in ("send", "expect", "match")):
        return Line(item.get("send"), item.get("expect"), item.get("match"))
    raise ValueError(f"not a line or {{send, expect, match}}: {item!r}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m services talk", description=__doc__.splitlines()[0])
    parser.add_argument("--proto", choices=PROTOCOLS, required=True)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    try:
        lines = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        print(f"talk: standard input is not a JSON list of lines: {exc}", file=sys.stderr)
        return 2
    try:
        if not isinstance(lines, list):
            raise ValueError("not a list")
        typed = [_line(x) for x in lines]
    except ValueError as exc:
        print(f"talk: standard input must be a JSON list of lines or {{send, expect, match}}: {exc}",
              file=sys.stderr)
        return 2
    print(json.dumps(talk(args.host, args.port, args.proto, typed, args.timeout)))
    return 0
