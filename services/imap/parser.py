"""IMAP's command grammar without I/O (RFC 3501 §2.2, §4, §9; non-synchronizing literals RFC 7888).

Modelled on h11's readers: a :class:`Parser` is fed the bytes a client sent, in pieces of any size,
and :meth:`Parser.next_event` returns what they complete: a :class:`Command` (tag, name, argument
tokens), a :class:`Continue` (the client announced a synchronizing literal ``{n}`` and waits for a
``+`` before sending it), a raw :class:`Line` (when the session asked for one: an AUTHENTICATE
response, IDLE's ``DONE``), or a :class:`Malformed` command with the text of its ``BAD``.

Limits are enforced as the bytes arrive: an over-long line is drained, not buffered, and a literal
over the limit is refused before the client sends it (``{n}``), or drained as it arrives (``{n+}``,
which the client sends unasked, RFC 7888 §4); either way the command is answered once, at its end,
with its tag as sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from services.errors import PeerError

# -- limits -----------------------------------------------------------------------------------

# One line of a command (up to a literal or the end), CRLF included. RFC 7162 §4 asks clients to
# keep lines under 8192 octets and servers to take at least that; a UID set of a large mailbox
# can run longer, so 64 KiB.
MAX_LINE = 64 * 1024
# A literal: an APPENDed message. The MX takes messages of 10 MiB (its SIZE); twice that leaves
# room for a message saved to Sent with its attachments re-encoded.
MAX_LITERAL = 20 * 1024 * 1024
# The whole command, literals included: many literals each under the limit must not add up.
MAX_COMMAND = MAX_LITERAL + 4 * MAX_LINE
MAX_LITERAL_DIGITS = 20  # more digits than this is no octet count a client could mean

# RFC 3501 §9: a tag is ASTRING-CHAR except "+": no CTL, SP, "(", ")", "{", "%", "*", '"', "\".
_TAG = re.compile(rb'[\x21-\x7e]+')
_NOT_TAG_CHARS = frozenset(b'(){%*"\\+')
_LITERAL_MARK = re.compile(rb"\{(\d{1,%d})(\+?)\}$" % MAX_LITERAL_DIGITS)
_PLACEHOLDER = 0  # NUL, which a command line may not hold (RFC 3501 §9, CHAR), stands for a literal
_SP = 0x20


# -- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Atom:
    """An atom as sent, case kept: ``NIL``, ``FLAGS``, ``1:*``, ``\\Seen``, ``BODY.PEEK[HEADER]<0.64>``.

    A bracketed part (``[...]``, spaces and parentheses inside) belongs to the atom before it, as
    FETCH's ``BODY[HEADER.FIELDS (From To)]`` needs (RFC 3501 §6.4.5).
    """

    text: str

    def upper(self) -> str:
        return self.text.upper()


@dataclass(frozen=True)
class String:
    """A quoted string or a literal (RFC 3501 §4.3): the octets, unescaped."""

    data: bytes
    literal: bool = False


@dataclass(frozen=True)
class Group:
    """A parenthesized list."""

    items: tuple[Token, ...]


Token = Atom | String | Group


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper-case
    args: tuple[Token, ...]


@dataclass(frozen=True)
class Continue:
    """Send a continuation (``+ ...``): the client waits for it before a ``{n}`` literal (§7.5)."""


@dataclass(frozen=True)
class Line:
    """A line the session asked for with :meth:`Parser.want_line`, without its CRLF."""

    text: bytes


@dataclass(frozen=True)
class Malformed:
    """A command refused by the grammar or a limit; ``tag`` is None if it had no valid one."""

    tag: str | None
    text: str
    too_big: bool = False  # a limit, not a syntax error: answered [TOOBIG] where RFC 9051 allows


Event = Command | Continue | Line | Malformed


class GrammarError(PeerError):
    """A command that does not follow the grammar; ``str()`` is the text for its BAD."""


# -- the parser -------------------------------------------------------------------------------


@dataclass
class _Pending:
    """The command being received: its text so far, literals replaced by placeholders."""

    text: bytearray = field(default_factory=bytearray)
    literals: list[bytes] = field(default_factory=list)
    refusal: Malformed | None = None  # set once the command is refused: the rest is discarded


class Parser:
    """Bytes in, :data:`Event` out, one at a time; see the module's docstring."""

    def __init__(self, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL,
                 max_command: int = MAX_COMMAND) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command
        self._buffer = bytearray()
        self._pending = _Pending()
        self._literal: bytearray | None = None  # receiving a literal
        self._literal_left = 0
        self._draining = False  # discarding the rest of an over-long line
        self._want_line = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def want_line(self) -> None:
        """The next complete line is raw text for the session, not a command (an AUTHENTICATE
        response, RFC 3501 §6.2.2; IDLE's ``DONE``, RFC 2177)."""
        self._want_line = True

    def discard(self) -> int:
        """Forget every byte received and any command in progress (before a TLS handshake: what
        came in clear must not run under TLS); how many bytes were dropped."""
        dropped = len(self._buffer) + len(self._pending.text) + len(self._literal or b"")
        self._buffer.clear()
        self._pending = _Pending()
        self._literal = None
        self._literal_left = 0
        self._draining = self._want_line = False
        return dropped

    @property
    def mid_command(self) -> bool:
        """Whether part of a command has arrived (a connection closed now cuts it off)."""
        return bool(self._pending.text or self._literal is not None or self._buffer)

    def next_event(self) -> Event | None:
        """The next event the bytes fed so far complete, or ``None`` until more arrive."""
        while True:
            if self._literal is not None:
                if not self._take_literal():
                    return None
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if self._draining or len(self._buffer) >= self.max_line:
                    self._start_draining()
                return None
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            event = self._line(line)
            if event is not None:
                return event

    # -- pieces ---------------------------------------------------------------------------------

    def _start_draining(self) -> None:
        if not self._draining:
            self._draining = True
            self._refuse(self._tag_of(bytes(self._pending.text) + bytes(self._buffer[:200])),
                         f"line too long (at most {self.max_line} octets)", too_big=True)
        self._buffer.clear()

    def _take_literal(self) -> bool:
        """Move literal octets from the buffer; True once the literal is complete."""
        assert self._literal is not None
        take = min(self._literal_left, len(self._buffer))
        if self._pending.refusal is None:
            self._literal += self._buffer[:take]
        del self._buffer[:take]
        self._literal_left -= take
        if self._literal_left:
            return False
        if self._pending.refusal is None:
            self._pending.literals.append(bytes(self._literal))
            self._pending.text.append(_PLACEHOLDER)
        self._literal = None
        return True

    def _line(self, line: bytes) -> Event | None:
        drained, self._draining = self._draining, False
        text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if self._want_line and not self._pending.text:
            self._want_line = False
            self._pending = _Pending()  # an over-long line's refusal is this Line's, not the next command's
            if drained or len(line) > self.max_line:
                return Malformed(None, f"line too long (at most {self.max_line} octets)", too_big=True)
            return Line(text)
        if drained:
            return self._finish()  # the rest of an over-long line: the command ends with it
        if len(line) > self.max_line:
            self._refuse(self._tag_of(bytes(self._pending.text) + text[:200]),
                         f"line too long (at most {self.max_line} octets)", too_big=True)
            return self._finish()
        mark = _LITERAL_MARK.search(text)
        if mark:
            text = text[: mark.start()]
        self._append(text)
        if not mark:
            return self._finish()
        size, synchronizing = int(mark.group(1)), not mark.group(2)
        if self._pending.refusal is None:
            if size > self.max_literal or len(self._pending.text) + size > self.max_command:
                self._refuse(self._tag_of(bytes(self._pending.text)),
                             f"literal too big (at most {self.max_literal} octets)", too_big=True)
        if self._pending.refusal is not None and synchronizing:
            # The client waits for "+" and gets the tagged refusal instead: it sends no literal.
            return self._finish()
        self._literal = bytearray()
        self._literal_left = size
        return Continue() if synchronizing else None

    def _append(self, text: bytes) -> None:
        if self._pending.refusal is not None:
            return
        if _PLACEHOLDER in text:
            self._refuse(self._tag_of(bytes(self._pending.text) + text), "NUL is not allowed in a command line")
            return
        self._pending.text += text

    def _refuse(self, tag: str | None, text: str, *, too_big: bool = False) -> None:
        if self._pending.refusal is None:
            self._pending.refusal = Malformed(tag, text, too_big)
            self._pending.literals.clear()

    def _finish(self) -> Event:
        pending, self._pending = self._pending, _Pending()
        if pending.refusal is not None:
            return pending.refusal
        try:
            return parse_command(bytes(pending.text), pending.literals)
        except GrammarError as exc:
            return Malformed(self._tag_of(bytes(pending.text)), str(exc))

    @staticmethod
    def _tag_of(text: bytes) -> str | None:
        tag = text.split(b" ", 1)[0]
        return tag.decode("ascii") if valid_tag(tag) and b" " in text else None


def valid_tag(tag: bytes) -> bool:
    return bool(_TAG.fullmatch(tag)) and not any(c in _NOT_TAG_CHARS for c in tag)


def parse_command(text: bytes, literals: list[bytes]) -> Command:
    """A whole command: ``tag SP name [SP arguments]``, literals standing in for their placeholders."""
    tag, sp, rest = text.partition(b" ")
    if not valid_tag(tag):
        raise GrammarError("missing or invalid tag")
    if not sp or not rest:
        raise GrammarError("missing command")
    tokens = tokenize(rest, literals)
    if not tokens or not isinstance(tokens[0], Atom):
        raise GrammarError("missing command")
    return Command(tag.decode("ascii"), tokens[0].upper(), tokens[1:])


def tokenize(text: bytes, literals: list[bytes]) -> tuple[Token, ...]:
    """The tokens of a command's text (RFC 3501 §9): atoms, strings, literals, lists."""
    stack: list[list[Token]] = [[]]
    pending_literals: Iterator[bytes] = iter(literals)
    pos = 0
    while pos < len(text):
        c = text[pos]
        if c == _SP:
            pos += 1
        elif c == ord("("):
            stack.append([])
            pos += 1
        elif c == ord(")"):
            if len(stack) == 1:
                raise GrammarError("unbalanced ')'")
            items = stack.pop()
            stack[-1].append(Group(tuple(items)))
            pos += 1
        elif c == ord('"'):
            data, pos = _quoted(text, pos + 1)
            stack[-1].append(String(data))
        elif c == _PLACEHOLDER:
            stack[-1].append(String(next(pending_literals), literal=True))
            pos += 1
        else:
            atom, pos = _atom(text, pos)
            stack[-1].append(Atom(atom))
    if len(stack) != 1:
        raise GrammarError("unbalanced '('")
    return tuple(stack[0])


def _quoted(text: bytes, pos: int) -> tuple[bytes, int]:
    """A quoted string's content from ``pos`` (after the opening quote); escapes only ``\\\\`` and ``\\"``."""
    out = bytearray()
    while pos < len(text):
        c = text[pos]
        if c == ord('"'):
            return bytes(out), pos + 1
        if c == ord("\\"):
            if pos + 1 >= len(text) or text[pos + 1] not in b'"\\':
                raise GrammarError("invalid escape in a quoted string")
            out.append(text[pos + 1])
            pos += 2
            continue
        if c == _PLACEHOLDER:
            raise GrammarError("unterminated quoted string")
        out.append(c)
        pos += 1
    raise GrammarError("unterminated quoted string")


def _atom(text: bytes, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] not in b' ()"\x00':
        if text[pos] == ord("["):
            close = text.find(b"]", pos)
            if close < 0 or _PLACEHOLDER in text[pos:close]:
                raise GrammarError("unbalanced '['")
            pos = close
        elif text[pos] < 0x20 or text[pos] >= 0x7F:
            raise GrammarError("invalid character in an atom")
        pos += 1
    return text[start:pos].decode("ascii", "replace"), pos
