"""Fuzzing the IMAP server over real sockets, in each state (not authenticated, authenticated, selected).

Each case logs in and selects or not, throws input at the server (random bytes, over-long lines,
literals of every kind with wrong counts, NUL and 8-bit bytes, pipelined bursts of commands with good
and bad arguments), half-closes, and reads until the server closes. Then:

* every line the server sent ends in CRLF and is an untagged response, a continuation or a tagged
  status with the tag the client sent, literals skipped by their exact octet count: no traceback,
  no Python text;
* nothing was logged as an error and the event loop caught nothing;
* a normal client logs in and selects INBOX.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import conftest
from tests.fuzz.harness import BETTY_PASSWORD, FUZZ, LogWatch, Servers, converse, count

CRLF = b"\r\n"
LOGIN = b'a0 LOGIN betty "' + BETTY_PASSWORD.encode() + b'"\r\n'
STATES = {
    "not authenticated": b"",
    "authenticated": LOGIN,
    "selected": LOGIN + b"a1 SELECT INBOX\r\n",
    "examined": LOGIN + b"a1 EXAMINE INBOX\r\n",
}

VERBS = ["CAPABILITY", "NOOP", "LOGOUT", "LOGIN", "AUTHENTICATE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME",
         "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "CHECK", "CLOSE", "EXPUNGE", "SEARCH",
         "FETCH", "STORE", "COPY", "MOVE", "UID", "IDLE", "UNSELECT", "NAMESPACE", "ID", "ENABLE", "STARTTLS",
         "fetch", "Uid", "XYZZY"]
ARGS = [b"", b"1", b"1:*", b"*", b"0", b"2:1", b"4294967296", b"1,2,3", b"INBOX", b"Sent", b".hidden", b"../x",
        b"a..b", b'""', b'"unterminated', b"(", b")", b"()", b"(FLAGS UID)", b"BODY[]", b"BODY.PEEK[1.2.MIME]<0.5>",
        b"BODY[HEADER.FIELDS (From To)]", b"BODY[HEADER.FIELDS.NOT ()]", b"(ENVELOPE BODYSTRUCTURE RFC822.SIZE)",
        b"ALL", b"FULL", b"+FLAGS (\\Seen)", b"FLAGS.SILENT (\\Deleted \\Bogus)", b"-FLAGS \\Flagged",
        b"FETCH 1:* FLAGS", b"STORE 1 +FLAGS (\\Deleted)", b"MOVE 1 Trash", b"EXPUNGE 1:*", b"SEARCH OR 1 NOT 2",
        b"SEARCH CHARSET KOI8 ALL", b'"" *', b'"" %', b"INBOX (MESSAGES UIDNEXT)", b"INBOX {3}", b"INBOX {3+}\r\nabc",
        b"PLAIN", b"PLAIN AGJldHR5AHdyb25n", b"PLAIN =", b"NIL", b'("name" "x")', b"UTF8=ACCEPT", b"betty wrong",
        b"\x00", b"\xff", b"{99999999999}", b"{5+}"]
LINE_ENDS = [b"\r\n", b"\r\n", b"\n", b"\r", b""]
TAGS = [b"a", b"A1", b"t.2", b"x]y", b"+", b"*", b"", b"(", b"\xff"]

funny_byte = st.sampled_from([0, 1, 9, 10, 13, 27, 34, 40, 41, 92, 123, 125, 127, 128, 0xFF])
funny_line = st.lists(st.one_of(st.integers(32, 126), funny_byte), max_size=80).map(bytes)


@st.composite
def command(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(TAGS))
    verb = draw(st.sampled_from(VERBS)).encode()
    arg = draw(st.one_of(st.sampled_from(ARGS), funny_line))
    return tag + b" " + verb + (b" " + arg if arg else b"") + draw(st.sampled_from(LINE_ENDS))


@st.composite
def literal(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(max_size=60))
    claimed = draw(st.sampled_from([len(data), len(data), max(len(data) - 1, 0), len(data) + 3]))
    plus = draw(st.sampled_from([b"", b"+"]))
    return b"p APPEND INBOX {%d%s}\r\n" % (claimed, plus) + data + CRLF


long_line = st.builds(lambda head, n, c: head + c * n + CRLF,
                      st.sampled_from([b"", b"a LOGIN ", b"b FETCH 1 ", b"c SEARCH TEXT "]),
                      st.integers(200, 80_000), st.sampled_from([b"a", b"1", b"\x00", b" ", b"("]))
burst = st.lists(st.one_of(command(), literal()), min_size=1, max_size=30).map(b"".join)
attack = st.one_of(st.binary(max_size=2000), long_line, burst,
                   st.lists(st.one_of(long_line, burst, funny_line), max_size=4).map(b"".join))

UNTAGGED = re.compile(rb"\* [\x20-\x7e]*")
CONTINUATION = re.compile(rb"\+( [\x20-\x7e]*)?")
TAGGED = re.compile(rb"[\x21-\x7e]+ (OK|NO|BAD) [\x20-\x7e]*")
LITERAL_AT_END = re.compile(rb"\{(\d+)\}$")


def check_wire(wire: bytes) -> None:
    """Every line a response, literals skipped by their count (RFC 3501 §7)."""
    assert b"Traceback" not in wire, wire[-300:]
    assert wire.startswith(b"* OK [CAPABILITY "), wire[:200]
    pos = 0
    line = b""
    while pos < len(wire):
        end = wire.find(CRLF, pos)
        assert end >= 0, f"output does not end with CRLF: ...{wire[-200:]!r}"
        piece = wire[pos:end]
        pos = end + 2
        line += piece
        m = LITERAL_AT_END.search(piece)
        if m:  # the line goes on after the literal's octets
            size = int(m.group(1))
            assert pos + size <= len(wire), "a literal is cut short"
            pos += size
            line += b"<literal>"
            continue
        assert UNTAGGED.fullmatch(line) or CONTINUATION.fullmatch(line) or TAGGED.fullmatch(line), (
            f"unexpected line from the IMAP server: {line[:200]!r}")
        assert b"Error" not in line and b"Exception" not in line, line
        line = b""
    assert not line


@FUZZ
@given(state=st.sampled_from(sorted(STATES)), payload=attack, logout=st.booleans())
def test_imap_survives_anything_in_any_state(servers: Servers, watch: LogWatch, state: str, payload: bytes,
                                             logout: bool) -> None:
    count("imap (143)")
    session = STATES[state] + payload + (b"\r\nz LOGOUT\r\n" if logout else b"")
    wire = converse(servers.ports["imap"], session)
    check_wire(wire)
    assert watch.take() == []
    servers.refill_imap()
    conftest.imap_session(servers)
