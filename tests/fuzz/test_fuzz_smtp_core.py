"""Fuzzing the SMTP server session's pure core in process: command scripts, no sockets.

Without a round trip per command this reaches depths the socket tests cannot in the same time
(``MAILLAB_FUZZ_EXAMPLES=100000``). Every script, with and without AUTH offered: no exception,
every reply well-formed (each line a code 200-599, the same code on every line of a reply), and a
session answers nothing once it has said ``221`` or ``421``.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from services.smtp.wire import parse_reply_line
from tests.fuzz.harness import FUZZ, count
from tests.unit.test_smtp_session import VERBS, say, session

_VERB = st.sampled_from(sorted(VERBS) + ["DATA", "BDAT", "XYZZY", "", "mail", "Rcpt"])
_ARG = st.one_of(
    st.sampled_from(["", "FROM:<andy@ouhk.example>", "TO:<betty@stevenchoy.example>", "FROM:<>",
                     "TO:<nobody@stevenchoy.example>", "client.example", "PLAIN", "LOGIN", "FROM:<a@b> SIZE=99999",
                     "TO:<@relay:betty@stevenchoy.example>", "FROM:<\"x y\"@ouhk.example> BODY=8BITMIME"]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=80),
)
_LINE = st.builds(lambda verb, arg: f"{verb} {arg}" if arg else verb, _VERB, _ARG)


@FUZZ
@given(script=st.lists(_LINE, max_size=30), auth=st.booleans())
def test_the_session_core_answers_any_script_properly(script: list[str], auth: bool) -> None:
    count("smtp core")
    s = session(auth=auth)
    ended = False
    for line in script:
        out = say(s, line)
        if ended:
            assert out == "", (line, out)
            continue
        lines = [parse_reply_line(x.encode("utf-8", "surrogateescape")) for x in out.split("\r\n")]
        assert lines and all(r is not None and 200 <= r.code <= 599 for r in lines), (line, out)
        assert len({r.code for r in lines if r is not None}) == 1, (line, out)
        ended = s.closed
