"""SMTP as it crosses the wire: limits, reply lines, and where the data after DATA ends.

Pure, with no dependency beyond the standard library and :mod:`services.smtp.policy`: the
servers (:mod:`services.smtp.server`, on aiosmtpd) and the traffic decoder that labctl runs on
the user's machine (:mod:`labctl.traffic.smtp`, which must not need aiosmtpd) read SMTP with
this one module, so the decoder ends a message exactly where our servers end it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.smtp.policy import Reply

CRLF = b"\r\n"

# -- limits ------------------------------------------------------------------------------------
COMMAND_LINE_LIMIT = 512  # RFC 5321 §4.5.3.1.4: a command line, CRLF included
TEXT_LINE_LIMIT = 1000  # RFC 5321 §4.5.3.1.6: a line of the message, CRLF included
# On the wire a text line may carry one octet more: the dot added by transparency (§4.5.2).
WIRE_LINE_LIMIT = TEXT_LINE_LIMIT + 1
MESSAGE_SIZE_LIMIT = 10 * 1024 * 1024  # advertised with SIZE (RFC 1870); ample for lab attachments

# -- the end of the data ----------------------------------------------------------------------------
# RFC 5321 §4.1.1.4: the mail data ends with a line holding only a period, i.e. "<CRLF>.<CRLF>",
# where the first CRLF may be the one that ended the DATA command itself (an empty message).
DATA_END = CRLF + b"." + CRLF

DATA_GO_AHEAD_CODE = 354  # RFC 5321 §4.2.1: start mail input
AUTH_CONTINUE_CODE = 334  # RFC 4954 §4: the server wants the next line of the SASL exchange
TLS_GO_AHEAD_CODE = 220  # RFC 3207 §4: after STARTTLS's 220 the connection is TLS, not SMTP

LINE_TOO_LONG = Reply(500, "5.5.2", f"Line too long (RFC 5321 4.5.3.1.6: {TEXT_LINE_LIMIT} octets)")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")  # RFC 1870 §6.1
BARE_NEWLINE = Reply(554, "5.6.0", "Bare CR or LF in the message; lines must end with CRLF (RFC 5321 2.3.8)")


def find_data_end(stream: bytes, start: int) -> int:
    """Where the data that begins at ``stream[start]`` ends, or -1 if its end is not there yet.

    ``start`` is just after the CRLF of the DATA command (or of the 354 the client waited for).
    The value is the offset of the terminating line ``.<CRLF>`` (the data is
    ``stream[start:end]``, its last CRLF included; the terminator takes 3 more octets). This is
    :class:`DataReader`'s rule, read all at once: a line ``.<CRLF>`` right after a CRLF, never
    after a bare LF (the SMTP smuggling fix, CVE-2024-27305). The unit tests check that they
    agree on any input.
    """
    if stream.startswith(b".\r\n", start):
        return start  # the empty message: DATA's own CRLF came just before
    at = stream.find(DATA_END, start)
    return -1 if at < 0 else at + 2


_EOL = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def stuff(data: bytes) -> bytes:
    """The message in its wire form after DATA: CRLF only, never a bare CR or LF (the smuggling
    vector, RFC 5321 §2.3.8), dot-stuffed (§4.5.2), ending with CRLF, then the end-of-data line."""
    body = _LEADING_DOT.sub(b"..", _EOL.sub(b"\r\n", data))
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def unstuff(data: bytes) -> bytes:
    """The message from its wire form: a leading dot removed from every line (RFC 5321 §4.5.2)."""
    if b"\n." not in data and not data.startswith(b"."):
        return data
    lines = data.split(b"\n")
    return b"\n".join(line[1:] if line.startswith(b".") else line for line in lines)


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


