"""Fuzzing the POP3 server over real sockets, in both states (AUTHORIZATION and TRANSACTION).

Each case logs in or not, throws input at the server (random bytes, over-long lines, NUL and 8-bit
bytes, pipelined bursts of commands with good and bad arguments), half-closes, and reads until the
server closes. Then:

* every line the server sent ends in CRLF and is a status line (``+OK``/``-ERR``), the end of a
  multi-line answer (``.``), a listing line, a capability, or a line of betty's messages: nothing
  else, no traceback;
* nothing was logged as an error and the event loop caught nothing;
* unless the client sent QUIT, not one message was deleted (RFC 1939 §6: only QUIT updates);
* a normal client logs in and finds the mailbox (the lock was released).
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from services.mailstore import Maildir
from services.pop3.core import CAPABILITIES
from tests.fuzz import conftest
from tests.fuzz.harness import BETTY_PASSWORD, FUZZ, MAILBOX, LogWatch, Servers, converse, count

CRLF = b"\r\n"
LOGIN = b"USER betty\r\nPASS " + BETTY_PASSWORD.encode() + CRLF
STATES = {
    "authorization": b"",
    "after USER": b"USER betty\r\n",
    "transaction": LOGIN,
}

VERBS = ["USER", "PASS", "APOP", "AUTH", "STLS", "QUIT", "CAPA", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET",
         "TOP", "UIDL", "LAST", "XTND", "user", "Retr", "list"]
ARGS = [b"", b" ", b"1", b"2", b"3", b"0", b"-1", b"1 0", b"1 1", b"2 999999999", b"1 -5", b"99999999999",
        b"1 2 3", b"betty", b"betty@stevenchoy.example", b"BETTY", b"andy", BETTY_PASSWORD.encode(), b"wrong",
        b"PLAIN", b"betty 0123456789abcdef0123456789abcdef", b"\x00", b"\xff", b"1\x00", b"+1", b"0x1", b"\xd9\xa1"]
LINE_ENDS = [b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"]

funny_byte = st.sampled_from([0, 1, 9, 10, 13, 27, 127, 128, 0xC3, 0xFF])
funny_line = st.lists(st.one_of(st.integers(32, 126), funny_byte), max_size=80).map(bytes)


@st.composite
def command(draw: st.DrawFn) -> bytes:
    verb = draw(st.sampled_from(VERBS)).encode()
    arg = draw(st.one_of(st.sampled_from(ARGS), funny_line))
    return verb + (b" " + arg if arg else b"") + draw(st.sampled_from(LINE_ENDS))


long_line = st.builds(lambda verb, n, c: verb + c * n + CRLF,
                      st.sampled_from([b"", b"USER ", b"PASS ", b"RETR ", b"TOP 1 "]),
                      st.integers(200, 40_000), st.sampled_from([b"a", b"1", b"\x00", b" "]))
burst = st.lists(command(), min_size=1, max_size=40).map(b"".join)
attack = st.one_of(st.binary(max_size=2000), long_line, burst,
                   st.lists(st.one_of(long_line, burst, funny_line), max_size=5).map(b"".join))


def _stuffed(message: bytes) -> set[bytes]:
    return {b"." + line if line.startswith(b".") else line for line in message.split(CRLF)}


MESSAGE_LINES = set().union(*(_stuffed(m) for m in MAILBOX))
CAPA_LINES = {c.encode() for c in CAPABILITIES}
LISTING = re.compile(rb"\d+ [\x21-\x7e]+")  # LIST and UIDL lines: number, then size or unique-id
STATUS = re.compile(rb"(\+OK|-ERR)( [\x20-\x7e]*)?")


def check_wire(wire: bytes) -> None:
    assert b"Traceback" not in wire, wire
    lines = wire.split(CRLF)
    assert lines.pop() == b"", f"output does not end with CRLF: ...{wire[-200:]!r}"
    assert lines and lines[0].startswith(b"+OK "), wire[:200]
    for line in lines:
        ok = (STATUS.fullmatch(line) or line == b"." or LISTING.fullmatch(line)
              or line in CAPA_LINES or line in MESSAGE_LINES)
        assert ok, f"unexpected line from the POP3 server: {line!r}"


@FUZZ
@given(state=st.sampled_from(sorted(STATES)), payload=attack, quit_at_end=st.booleans())
def test_pop3_survives_anything_in_either_state(servers: Servers, watch: LogWatch, state: str, payload: bytes,
                                                quit_at_end: bool) -> None:
    count("pop3 (110)")
    session = STATES[state] + payload + (b"QUIT\r\n" if quit_at_end else b"")
    wire = converse(servers.ports["pop3"], session)
    check_wire(wire)
    assert watch.take() == []
    left = len(Maildir(servers.pop3_mailbox).keys())
    if b"QUIT" not in session.upper():
        assert left == len(MAILBOX), "a message was deleted without QUIT"
    if left != len(MAILBOX):
        servers.refill_pop3()
    conftest.pop3_session(servers)


def test_dele_then_quit_is_the_only_way_to_delete(servers: Servers, watch: LogWatch) -> None:
    """The fuzz's own premise, shown once: DELE then a dropped connection keeps the message; DELE
    then QUIT removes it."""
    dropped = converse(servers.ports["pop3"], LOGIN + b"DELE 1\r\n")
    assert b"+OK message 1 deleted" in dropped
    assert len(Maildir(servers.pop3_mailbox).keys()) == len(MAILBOX)
    converse(servers.ports["pop3"], LOGIN + b"DELE 1\r\nQUIT\r\n")
    assert len(Maildir(servers.pop3_mailbox).keys()) == len(MAILBOX) - 1
    servers.refill_pop3()
    assert watch.take() == []
