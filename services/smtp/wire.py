"""SMTP as it crosses the wire: limits, replies, and the message after DATA read a line at a time.

Pure, standard library only (with :mod:`services.textwire`, the CRLF and dot framing SMTP
shares with POP3): the servers (:mod:`services.smtp.server`, on aiosmtpd), the MTA's client
(:mod:`services.smtp.client`) and the traffic decoder that labctl runs on the user's machine
(:mod:`labctl.traffic.smtp`, which must not need aiosmtpd) read SMTP with this one module, so
the decoder ends a message exactly where our servers end it, and every side has the one
:class:`Reply`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.textwire import CRLF

# -- limits ------------------------------------------------------------------------------------
COMMAND_LINE_LIMIT = 512  # RFC 5321 §4.5.3.1.4: a command line, CRLF included
TEXT_LINE_LIMIT = 1000  # RFC 5321 §4.5.3.1.6: a line of the message, CRLF included
# On the wire a text line may carry one octet more: the dot added by transparency (§4.5.2).
WIRE_LINE_LIMIT = TEXT_LINE_LIMIT + 1
MESSAGE_SIZE_LIMIT = 10 * 1024 * 1024  # advertised with SIZE (RFC 1870); ample for lab attachments

# -- replies ------------------------------------------------------------------------------------

# RFC 3463 §2: class.subject.detail, the class the reply code's first digit (RFC 2034 §4).
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: code (RFC 5321 §4.2), enhanced status (RFC 3463; "" where there is none:
    the greeting, HELO, EHLO and 354, RFC 2034 §3) and text, the lines of a multi-line reply
    joined by LF."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        """The reply on one line, for a log or a diagnostic: ``550 5.1.1 No such user``."""
        return " ".join(f"{self.code} {self.status} {self.text}".split())

    def render(self) -> str:
        """The reply as sent, its lines joined by CRLF (none after the last): every line but the
        last has a hyphen after the code (RFC 5321 §4.2.1), every line the status (RFC 2034 §4)."""
        head = f"{self.code} {self.status} " if self.status else f"{self.code} "
        if "\n" not in self.text:
            return (head + self.text).rstrip(" ")
        lines = self.text.split("\n")
        more = head.replace(" ", "-", 1)
        return "\r\n".join([*(more + line for line in lines[:-1]), head + lines[-1]])

    @classmethod
    def parse(cls, code: int, lines: Sequence[str]) -> Reply:
        """The reply whose lines (each after the code and its separator) are ``lines``.

        The status is the first line's, if of the code's class (RFC 3463 §3.1), and comes out of
        every line that repeats it (RFC 2034 §4 puts it on each); a line with another keeps its own.
        """
        first = _ENHANCED.match(lines[0].lstrip()) if lines else None
        if first is None or first.group(1) != str(code // 100):
            return cls(code, "", "\n".join(lines))
        status = first.group(0).rstrip()
        if len(lines) == 1:  # most replies: the decoder parses every one it reads
            return cls(code, status, lines[0].lstrip()[first.end():])
        rest = []
        for line in (raw.lstrip() for raw in lines):
            m = _ENHANCED.match(line)
            rest.append(line[m.end():] if m is not None and m.group(0).rstrip() == status else line)
        return cls(code, status, "\n".join(rest))

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def dsn_status(self) -> str:
        """The status a delivery report gives (RFC 3464 §2.3.4): the enhanced code, its numbers
        without leading zeros, or else the bare class (RFC 3463 §3.1; 4 for anything but 2 and 5)."""
        m = _ENHANCED.match(self.status)
        if m is not None:
            return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
        return {2: "2.0.0", 5: "5.0.0"}.get(self.code // 100, "4.0.0")


DATA_GO_AHEAD_CODE = 354  # RFC 5321 §4.2.1: start mail input
AUTH_CONTINUE_CODE = 334  # RFC 4954 §4: the server wants the next line of the SASL exchange
TLS_GO_AHEAD_CODE = 220  # RFC 3207 §4: after STARTTLS's 220 the connection is TLS, not SMTP

LINE_TOO_LONG = Reply(500, "5.5.2", f"Line too long (RFC 5321 4.5.3.1.6: {TEXT_LINE_LIMIT} octets)")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")  # RFC 1870 §6.1
BARE_NEWLINE = Reply(554, "5.6.0", "Bare CR or LF in the message; lines must end with CRLF (RFC 5321 2.3.8)")


# -- reply lines -------------------------------------------------------------------------------

_REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])([ -]?)(.*)", re.DOTALL)


@dataclass(frozen=True)
class ReplyLine:
    """One line of a reply (RFC 5321 §4.2): ``250-...`` continues, ``250 ...`` ends the reply."""

    code: int
    last: bool
    text: str


def parse_reply_line(line: bytes) -> ReplyLine | None:
    """A reply line without its CRLF, or None if it is not one (RFC 5321 §4.2: Reply-line)."""
    m = _REPLY_LINE.fullmatch(line)
    if m is None:
        return None
    return ReplyLine(int(m.group(1)), m.group(2) != b"-", m.group(3).decode("utf-8", "replace"))


# -- the message after DATA, a line at a time (the server reads it so) -----------------


class DataReader:
    """The text after DATA, fed a line at a time; a pure core with no socket.

    ``feed`` takes what the stream reader gives: a line ending in LF, or a fragment of an
    over-long line. The data ends only at a line ``.<CRLF>`` that follows a CRLF (RFC 5321
    §4.1.1.4), so ``<LF>.<LF>`` and ``<LF>.<CRLF>`` are text, never an end: the SMTP smuggling
    attack hides a second message behind them for a server that ends there. A bare CR or LF
    makes the whole message refused (§2.3.8), after its real end.
    """

    def __init__(self, size_limit: int) -> None:
        self._size_limit = size_limit
        self._lines: list[bytes] = []
        self._line = bytearray()  # the line being assembled from fragments
        self._after_crlf = True  # the DATA command's own CRLF comes before the first line
        self._size = 0
        self._error: Reply | None = None

    def feed(self, piece: bytes) -> bool:
        """Take the next piece; True once it was the end-of-data line."""
        if not self._line and self._after_crlf and piece == b".\r\n":
            return True
        # RFC 1870 counts the message; the transparency dots counted here err on the safe side.
        self._size += len(piece)
        if self._size > self._size_limit:
            self._fail(MESSAGE_TOO_BIG)
        if not self._line and piece.endswith(b"\n"):
            line = piece  # a whole line at once, the usual case: no copy through the buffer
        else:
            self._line += piece
            if not piece.endswith(b"\n"):
                if len(self._line) > WIRE_LINE_LIMIT:
                    self._fail(LINE_TOO_LONG)
                    del self._line[:-1]  # bounded memory; the last octet may be the CR of a CRLF
                return False
            line = bytes(self._line)
            self._line.clear()
        self._after_crlf = line.endswith(CRLF)
        text = line[1:] if line.startswith(b".") else line  # §4.5.2: the client's transparency dot
        if len(text) > TEXT_LINE_LIMIT:
            self._fail(LINE_TOO_LONG)
        elif not self._after_crlf or b"\r" in line[:-2]:
            self._fail(BARE_NEWLINE)
        if self._error is None:
            self._lines.append(text)
        return False

    def _fail(self, reply: Reply) -> None:
        if self._error is None:
            self._error = reply
            self._lines.clear()  # a refused message is not kept in memory while the rest arrives

    def outcome(self) -> bytes | Reply:
        """The message (dots unstuffed, CRLF line ends), or the reply refusing it."""
        return self._error if self._error is not None else b"".join(self._lines)


