"""Text on the wire as SMTP, POP3 and IMAP frame it: CRLF lines, dot-stuffing, the end of the data.

SMTP's DATA (RFC 5321 §4.5.2, §4.1.1.4) and POP3's multi-line answers (RFC 1939 §3) are the
same framing: lines ended by CRLF, a leading dot doubled, and a line holding only a dot at the
end; IMAP sends a stored message as a literal of its CRLF form (:func:`crlf_form`). The lab's
servers (:mod:`services.smtp`, :mod:`services.pop3`, :mod:`services.imap`), the Maildir store
(:mod:`services.mailstore`, which names a message by its size on the wire) and labctl's two
traffic decoders (:mod:`labctl.traffic.smtp`, :mod:`labctl.traffic.pop3`) all read and write it
with this one module. Pure, standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CRLF = b"\r\n"

# RFC 5321 §4.1.1.4 (and RFC 1939 §3): the data ends with a line holding only a period, i.e.
# "<CRLF>.<CRLF>", where the first CRLF may be the one that ended the command itself (an empty
# message, or an empty multi-line answer).
DATA_END = CRLF + b"." + CRLF


def find_data_end(stream: bytes, start: int) -> int:
    """Where the data that begins at ``stream[start]`` ends, or -1 if its end is not there yet.

    ``start`` is just after the CRLF of the line before the data (SMTP's DATA command or its 354,
    POP3's ``+OK``). The value is the offset of the terminating line ``.<CRLF>`` (the data is
    ``stream[start:end]``, its last CRLF included; the terminator takes 3 more octets). This is
    :class:`services.smtp.wire.DataReader`'s rule, read all at once: a line ``.<CRLF>`` right
    after a CRLF, never after a bare LF (the SMTP smuggling fix, CVE-2024-27305). The unit tests
    check that they agree on any input.
    """
    if stream.startswith(b".\r\n", start):
        return start  # the empty message: the CRLF of the line before came just before
    at = stream.find(DATA_END, start)
    return -1 if at < 0 else at + 2


# -- a message as SMTP sends it: line ends made CRLF ------------------------------------------------

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
    """The text from its wire form: a leading dot removed from every line (RFC 5321 §4.5.2,
    RFC 1939 §3)."""
    if b"\n." not in data and not data.startswith(b"."):
        return data
    lines = data.split(b"\n")
    return b"\n".join(line[1:] if line.startswith(b".") else line for line in lines)


# -- a stored message as POP3 sends it: its lines as they are, counted exactly ----------------------


def wire_lines(message: bytes) -> list[bytes]:
    """The lines of a stored message as POP3 sends them, without terminators.

    Stored line ends may be LF (Maildir) or CRLF; on the wire every line ends in CRLF (RFC 1939
    §3), and a last line without a line end gets one. A bare CR inside a line stays, unlike
    :func:`stuff`: these lines must add up to :func:`wire_size`, the size STAT and LIST announced.
    """
    lines = message.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def pop3_form(message: bytes) -> bytes:
    """:func:`wire_lines` in one piece, each line with its CRLF: what RETR sends before
    dot-stuffing, made with two replaces instead of a Python step per line (a third of the time
    for a 10 kB message). A last line without a line end gets a CRLF, and loses a CR it ends in,
    as there."""
    text = crlf_form(message)
    if message and not message.endswith(b"\n"):
        text = (text[:-1] if text.endswith(b"\r") else text) + CRLF
    return text


def stuff_text(text: bytes) -> bytes:
    """:func:`stuff_lines` of CRLF text in one piece (``text`` as :func:`pop3_form` makes it):
    every line that begins with a dot gets another (RFC 1939 §3), then the line holding a dot."""
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\n.", b"\n..") + b".\r\n"


def wire_size(message: bytes) -> int:
    """The exact octet count of ``message`` in CRLF form (RFC 1939 §10: what STAT, LIST and RETR
    report; the Maildir store writes it into a message's name)."""
    return sum(len(line) + 2 for line in wire_lines(message))


def crlf_form(message: bytes) -> bytes:
    """The stored message as IMAP sends it, in one piece: every line end a CRLF, nothing added.

    Unlike POP3's :func:`wire_lines`, a last line without a line end stays so: an APPENDed
    message comes back octet for octet, as Dovecot serves it from the same Maildir.
    ``len(crlf_form(m)) == crlf_size(m)``: the literal of a FETCH BODY[] is exactly RFC822.SIZE.
    """
    return message.replace(CRLF, b"\n").replace(b"\n", CRLF)


def crlf_size(message: bytes) -> int:
    """``len(crlf_form(message))`` without building it: Dovecot's "virtual size" (its ``,W=``)."""
    return len(message) + message.count(b"\n") - message.count(CRLF)


def stuff_lines(lines: Sequence[bytes]) -> bytes:
    """Lines as multi-line text: dot-stuffed, CRLF-terminated, ended by "." (RFC 1939 §3)."""
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + CRLF for line in stuffed) + b".\r\n"
