"""``python3 -m services talk --proto smtp|pop3 HOST PORT``: a raw dialogue, as typed into telnet.

The article's two activities are typed by hand: one command line, then wait for the server's
reply, then the next. This tool does exactly that for labctl's scenarios (which cannot reach the
sealed lab from outside): it reads a JSON list of lines to send on standard input, sends each one
with CRLF after reading the previous reply, and prints the whole exchange as JSON:
``[{"sent": null, "reply": "220 ..."}, {"sent": "HELO andy", "reply": "250 ..."}, ...]``.

A line holding several lines (a message typed after DATA, ended by ".") is sent as one block and
gets one reply. Where a reply ends is protocol knowledge: SMTP continues a reply with "250-"
(RFC 5321 §4.2.1); a POP3 ``+OK`` to CAPA, RETR, TOP, and LIST or UIDL without argument runs until
"." (:func:`services.pop3.core.multiline_answer`). When the server closes the connection, the
dialogue stops there. When the list ends without QUIT, the connection is simply closed: a dropped
session, which is what some scenarios want.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import BinaryIO

from services.pop3.core import multiline_answer

DEFAULT_TIMEOUT = 10.0  # seconds for a connection or one reply; the lab answers in milliseconds


def _read_reply(stream: BinaryIO, proto: str, command: str | None) -> tuple[str, bool]:
    """The reply to ``command`` (None: the greeting) and whether the server closed the connection."""
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


def talk(host: str, port: int, proto: str, lines: list[str], timeout: float) -> list[dict[str, object]]:
    transcript: list[dict[str, object]] = []
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return [{"sent": None, "reply": "", "error": f"cannot connect to {host}:{port}: {exc.strerror or exc}"}]
    with sock, sock.makefile("rb") as stream:
        try:
            reply, closed = _read_reply(stream, proto, None)
            transcript.append({"sent": None, "reply": reply, "closed": closed})
            for line in lines:
                if closed:
                    break
                sock.sendall(line.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8") + b"\r\n")
                reply, closed = _read_reply(stream, proto, line)
                transcript.append({"sent": line, "reply": reply, "closed": closed})
        except OSError as exc:  # a timeout or a reset: say where it happened
            transcript.append({"sent": None, "reply": "", "error": str(exc) or type(exc).__name__})
    return transcript


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m services talk", description=__doc__.splitlines()[0])
    parser.add_argument("--proto", choices=("smtp", "pop3"), required=True)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    try:
        lines = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        print(f"talk: standard input is not a JSON list of lines: {exc}", file=sys.stderr)
        return 2
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        print("talk: standard input must be a JSON list of strings", file=sys.stderr)
        return 2
    print(json.dumps(talk(args.host, args.port, args.proto, lines, args.timeout)))
    return 0
