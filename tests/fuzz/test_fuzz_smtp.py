"""Fuzzing the SMTP servers (the MX's and the MTA's port 25, the MTA's submission port with AUTH).

Each case reaches a state (just connected, after HELO/EHLO, after MAIL, after RCPT, inside DATA),
throws input at the server (random bytes, over-long lines, NUL and 8-bit bytes, pipelined bursts of
commands valid and not), half-closes and reads everything until the server closes. Then:

* every octet the server sent is a well-formed reply line (code, separator, printable text, CRLF),
  and no traceback reached the wire;
* no server logged an error or a traceback (a bug of ours), and the event loop caught nothing;
* a message was stored (MX) or queued (MTA) exactly as many times as the server said
  ``Message accepted``: nothing acknowledged is lost, nothing unacknowledged is delivered;
* the server still serves a normal client.

The smuggling test hides a whole second transaction behind each of the line endings a broken
server takes for the end of the data (``<LF>.<LF>``, ``<CR>.<CR>``, ``<LF>.<CRLF>``,
``<CRLF>.<LF>``, ...): the data must end only at ``<CRLF>.<CRLF>``, and there must never be a
second message.
"""

from __future__ import annotations

import base64

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz import conftest
from tests.fuzz.harness import (
    ANDY,
    ANDY_PASSWORD,
    FUZZ,
    LogWatch,
    Servers,
    converse,
    count,
    smtp_replies,
)

CRLF = b"\r\n"
EHLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<andy@ouhk.example>\r\n"
RCPT = b"RCPT TO:<betty@stevenchoy.example>\r\n"
AUTH = b"AUTH PLAIN " + base64.b64encode(f"\0{ANDY}\0{ANDY_PASSWORD}".encode()) + CRLF

# How far into a session each case gets before the attack; "data" is right after the 354.
STATES: dict[str, bytes] = {
    "connected": b"",
    "helo": b"HELO client.example\r\n",
    "ehlo": EHLO,
    "mail": EHLO + MAIL,
    "rcpt": EHLO + MAIL + RCPT,
    "data": EHLO + MAIL + RCPT + b"DATA\r\n",
}

VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "AUTH",
         "STARTTLS", "BDAT", "TURN", "ETRN", "SEND", "SOML", "SAML", "XCLIENT", "mail from:", "rcpt to:", "Data"]
ARGS = [
    b"", b" ", b"client.example", b"FROM:<andy@ouhk.example>", b"FROM:<>", b"FROM: andy@ouhk.example",
    b"FROM:<andy@ouhk.example> SIZE=99999999999999999999", b"FROM:<andy@ouhk.example> BODY=8BITMIME",
    b"FROM:<andy@ouhk.example> SMTPUTF8", b"FROM:<andy@ouhk.example> NOPE=1", b"FROM:<@a,@b:andy@ouhk.example>",
    b"TO:<betty@stevenchoy.example>", b"TO:<victim@elsewhere.example>", b"TO:<nobody@stevenchoy.example>",
    b"TO:<betty@stevenchoy.example", b"TO:<postmaster>", b"TO:<\"a b\"@stevenchoy.example>",
    b"TO:<betty@[10.89.0.110]>", b"TO:<betty%stevenchoy.example@ouhk.example>", b"PLAIN", b"LOGIN",
    b"PLAIN =", b"PLAIN AGJldHR5AGJhZA==", b"CRAM-MD5", b"PLAIN !!!notbase64", b"betty", b"HELP",
    b"\x00", b"\xff\xfe", b"caf\xc3\xa9@ouhk.example", b"TO:<betty@stevenchoy.example>\rRCPT TO:<x@y.example>",
]
LINE_ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"]

octets = st.binary(max_size=2000)
funny_byte = st.sampled_from([0, 1, 8, 9, 10, 13, 27, 127, 128, 0xC3, 0xA9, 0xFF])
funny_line = st.lists(st.one_of(st.integers(32, 126), funny_byte), max_size=120).map(bytes)


@st.composite
def command(draw: st.DrawFn) -> bytes:
    verb = draw(st.sampled_from(VERBS)).encode()
    arg = draw(st.one_of(st.sampled_from(ARGS), funny_line))
    sep = b" " if arg and not verb.endswith(b":") else b""
    return verb + sep + arg + draw(st.sampled_from(LINE_ENDS))


long_line = st.builds(
    lambda prefix, n, c, end: prefix + c * n + end,
    st.sampled_from([b"", b"EHLO ", b"MAIL FROM:<", b"RCPT TO:<", b"NOOP ", b"AUTH PLAIN "]),
    st.integers(400, 70_000),
    st.sampled_from([b"a", b"\x00", b"\xff", b".", b" "]),
    st.sampled_from([b"\r\n", b"", b">\r\n", b"\n"]),
)
burst = st.lists(command(), min_size=1, max_size=40).map(b"".join)
attack = st.one_of(octets, funny_line.map(lambda b: b + CRLF), long_line, burst,
                   st.lists(st.one_of(long_line, burst, funny_line), max_size=5).map(b"".join))
# Inside DATA: the attack, then sometimes a proper end and more commands, sometimes nothing more.
endings = st.sampled_from([b"", b"\r\n.\r\n", b"\r\n.\r\nQUIT\r\n", b"\r\n.\r\n" + MAIL + RCPT + b"DATA\r\n"])


def accepted(replies: list[tuple[int, list[str]]]) -> int:
    return sum(1 for code, text in replies if code == 250 and text[-1].endswith("Message accepted for delivery"))


def check(servers: Servers, watch: LogWatch, port: int, stored_before: int, stored_after: int,
          wire: bytes) -> list[tuple[int, list[str]]]:
    replies = smtp_replies(wire)
    assert replies and replies[0][0] == 220, wire[:200]
    assert watch.take() == []
    # 250 means stored; no 250, nothing stored.
    assert stored_after - stored_before == accepted(replies), replies
    conftest.smtp_session(port)
    return replies


@FUZZ
@given(target=st.sampled_from(["mx", "mta"]), state=st.sampled_from(sorted(STATES)), payload=attack,
       ending=endings)
def test_port_25_survives_anything_in_any_state(servers: Servers, watch: LogWatch, target: str, state: str,
                                                payload: bytes, ending: bytes) -> None:
    count(f"smtp {target} (25)")
    port = servers.ports[target]
    stored = servers.mx_stored if target == "mx" else servers.mta_queued
    before = stored()
    wire = converse(port, STATES[state] + payload + (ending if state == "data" else b""))
    check(servers, watch, port, before, stored(), wire)


@FUZZ
@given(state=st.sampled_from(sorted(STATES)), authenticated=st.booleans(), payload=attack, ending=endings)
# Found at 20,000 cases: an answer to AUTH's 334 longer than a line was a traceback and a 451.
@example(state="ehlo", authenticated=False, payload=b"AUTH PLAIN\n" + b"\x00" * 2000, ending=b"")
def test_submission_survives_anything_in_any_state(servers: Servers, watch: LogWatch, state: str,
                                                   authenticated: bool, payload: bytes, ending: bytes) -> None:
    count("smtp submission (587)")
    port = servers.ports["submission"]
    prefix = STATES[state]
    if authenticated and prefix.startswith(EHLO):
        prefix = EHLO + AUTH + prefix[len(EHLO):]
    before = servers.mta_queued()
    wire = converse(port, prefix + payload + (ending if state == "data" else b""))
    check(servers, watch, port, before, servers.mta_queued(), wire)


# Line ends a broken server reads as the end of the data; all of them must stay text.
SMUGGLERS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
             b"\r\n.\x00\r\n", b"\r\n.\r\r\n", b"\r\n\x00.\r\n"]
SMUGGLED = b"MAIL FROM:<mallory@ouhk.example>\r\nRCPT TO:<betty@stevenchoy.example>\r\nDATA\r\n" \
           b"From: andy@ouhk.example\r\nSubject: smuggled\r\n\r\nsecond message\r\n"
# Message lines as a client sends them: dot-stuffed (RFC 5321 4.5.2), so "." alone is never one.
text_line = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(
    lambda s: ("." + s if s.startswith(".") else s).encode())


@FUZZ
@given(
    before=st.lists(text_line, max_size=4),
    smuggler=st.sampled_from(SMUGGLERS),
    after=st.lists(text_line, max_size=3),
    pipelined=st.booleans(),
    on_submission=st.booleans(),
)
def test_smuggling_never_ends_data_nor_makes_a_second_message(
    servers: Servers, watch: LogWatch, before: list[bytes], smuggler: bytes, after: list[bytes],
    pipelined: bool, on_submission: bool,
) -> None:
    count("smtp smuggling")
    port = servers.ports["submission" if on_submission else "mx"]
    stored = servers.mta_queued if on_submission else servers.mx_stored
    prefix = EHLO + (AUTH if on_submission else b"") + MAIL + RCPT + b"DATA\r\n"
    body = b"Subject: first\r\n\r\n" + CRLF.join(before) + smuggler + SMUGGLED + CRLF.join(after)
    # The real end; then, pipelined or not, a QUIT.
    session = prefix + body + b"\r\n.\r\n" + (b"QUIT\r\n" if pipelined else b"")
    n_before = stored()
    wire = converse(port, session)
    replies = check(servers, watch, port, n_before, stored(), wire)
    after_354 = [code for code, _ in replies[[c for c, _ in replies].index(354) + 1:]]
    # One answer to the one message, then (maybe) 221: the smuggled MAIL/RCPT/DATA were text.
    assert after_354[0] in (250, 554), replies
    assert after_354[1:] in ([], [221]), replies
    assert stored() - n_before <= 1
    if after_354[0] == 250 and not on_submission:
        newest = servers.mx_mailbox.read(servers.mx_mailbox.keys()[-1])
        assert b"Subject: first" in newest and b"second message" in newest  # one message, both parts


def test_the_vocabulary_reaches_every_reply_family(servers: Servers, watch: LogWatch) -> None:
    """The strategies are only worth their cases if they get past the greeting: a sanity check that
    a known-good burst from them is answered 2xx/3xx and a bad one 5xx, on the same servers."""
    good = EHLO + MAIL + RCPT + b"DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    codes = [code for code, _ in smtp_replies(converse(servers.ports["mx"], good))]
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    bad = b"".join(c + b" " + a + CRLF for c, a in [(b"MAIL", b"TO:<x>"), (b"RCPT", b"FROM:<x>"), (b"XYZZY", b"")])
    codes = [code for code, _ in smtp_replies(converse(servers.ports["mx"], bad))]
    assert codes[0] == 220 and all(500 <= c < 600 for c in codes[1:]) and len(codes) == 4
    assert watch.take() == []
