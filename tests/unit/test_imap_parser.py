"""IMAP's command grammar: literals across any read boundary, limits drained, tags echoed."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from services.imap.parser import Atom, Command, Continue, Event, Group, Line, Malformed, Parser, String, Token


def events(parser: Parser, *chunks: bytes) -> list[Event]:
    out: list[Event] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


def test_atoms_strings_lists_and_bracketed_fetch_items() -> None:
    [command] = events(Parser(), b'A001 fetch 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.64>) "a \\"q\\""\r\n')
    assert command == Command("A001", "FETCH", (
        Atom("1:*"), Group((Atom("FLAGS"), Atom("BODY.PEEK[HEADER.FIELDS (From To)]<0.64>"))), String(b'a "q"')))


def test_a_synchronizing_literal_asks_for_a_continuation_first() -> None:
    parser = Parser()
    assert events(parser, b"a LOGIN {5}\r\n") == [Continue()]
    assert events(parser, b"betty {3}\r\n") == [Continue()]
    assert events(parser, b"p w\r\n") == [
        Command("a", "LOGIN", (String(b"betty", literal=True), String(b"p w", literal=True)))]


def test_a_non_synchronizing_literal_needs_no_continuation() -> None:
    [command] = events(Parser(), b"t1 APPEND INBOX (\\Seen) {8+}\r\nab\r\ncd\r\n\r\n")
    assert command == Command("t1", "APPEND", (Atom("INBOX"), Group((Atom("\\Seen"),)), String(b"ab\r\ncd\r\n", True)))


def test_an_over_long_line_is_drained_then_refused_with_its_tag() -> None:
    parser = Parser(max_line=100)
    got = events(parser, b"x7 NOOP " + b"a" * 150, b"b" * 5000, b"\r\nx8 NOOP\r\n")
    assert got == [Malformed("x7", "line too long (at most 100 octets)", True), Command("x8", "NOOP", ())]
    assert len(parser._buffer) == 0


def test_a_literal_past_the_limit_is_refused_before_or_while_it_arrives() -> None:
    parser = Parser(max_literal=10)
    assert events(parser, b"a APPEND INBOX {11}\r\n") == [Malformed("a", "literal too big (at most 10 octets)", True)]
    got = events(parser, b"b APPEND INBOX {20+}\r\n", b"x" * 20, b"\r\nc NOOP\r\n")
    assert got == [Malformed("b", "literal too big (at most 10 octets)", True), Command("c", "NOOP", ())]


def test_raw_lines_for_authenticate_and_idle() -> None:
    parser = Parser()
    parser.want_line()
    assert events(parser, b"DONE\r\nz NOOP\r\n") == [Line(b"DONE"), Command("z", "NOOP", ())]


def test_bad_grammar_is_malformed_never_an_exception() -> None:
    got = events(Parser(), b"+bad NOOP\r\na (\r\nb \"open\r\nc\r\nd NO\x00OP\r\n")
    assert [type(e) for e in got] == [Malformed] * 5
    assert [e.tag for e in got if isinstance(e, Malformed)] == [None, "a", "b", None, "d"]


# -- hypothesis: any command, cut at any boundary, parses the same ---------------------------------

atom_text = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789:*.\\", min_size=1, max_size=8)
octets = st.binary(max_size=40)
token: st.SearchStrategy[Token] = st.recursive(
    st.one_of(atom_text.map(Atom), octets.map(lambda b: String(b, literal=True)),
              st.text("abc XYZ\"\\", max_size=10).map(lambda t: String(t.encode()))),
    lambda inner: st.lists(inner, max_size=3).map(lambda items: Group(tuple(items))), max_leaves=8)


def encode(tok: Token, sync: bool) -> bytes:
    if isinstance(tok, Atom):
        return tok.text.encode()
    if isinstance(tok, Group):
        return b"(" + b" ".join(encode(t, sync) for t in tok.items) + b")"
    if tok.literal:
        return b"{%d%s}\r\n" % (len(tok.data), b"" if sync else b"+") + tok.data
    return b'"' + tok.data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal_count(tok: Token) -> int:
    """How many literals the token is sent as (each synchronizing one gets a continuation)."""
    if isinstance(tok, Group):
        return sum(literal_count(t) for t in tok.items)
    return int(isinstance(tok, String) and tok.literal)


@given(tokens=st.lists(token, max_size=5), sync=st.booleans(), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_split_reads_give_the_same_command(tokens: list[Token], sync: bool, cuts: list[int]) -> None:
    wire = b"tag.1 CMD" + b"".join(b" " + encode(t, sync) for t in tokens) + b"\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    got = events(Parser(), *chunks)
    literals = sum(literal_count(t) for t in tokens)  # not a count of "}\r\n": a literal may hold one
    assert got[-1] == Command("tag.1", "CMD", tuple(tokens))
    assert got[:-1] == ([Continue()] * literals if sync else [])


@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_any_bytes_give_events_and_bounded_buffers(data: bytes, cuts: list[int]) -> None:
    parser = Parser(max_line=64, max_literal=32)
    points = sorted({c % (len(data) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        events(parser, data[a:b])
        assert len(parser._buffer) < 64 + 600
    for event in events(parser, b"\r\n"):
        if isinstance(event, Command):
            assert event.tag and event.name
