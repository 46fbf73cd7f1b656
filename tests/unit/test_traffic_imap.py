"""IMAP dialogues: tagged and untagged responses, literals both ways, clear-text passwords, STARTTLS."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.traffic import render
from labctl.traffic.model import Conversation
from labctl.traffic.payload import Credentials, ImapResponse
from tests.unit.decoding import only_conversation
from tests.unit.packets import BETTY, MAIL, NAMES, Packet, Tcp, pcap

MESSAGE = (b"From: andy@ouhk.example\r\nSubject: Lunch\r\nMessage-ID: <lunch.1@ouhk.example>\r\n\r\n"
           b"Hi Betty,\r\nAndy\r\n")


def decode(packets: list[Packet], **kw: bool) -> Conversation:
    return only_conversation(pcap(packets), NAMES, **kw)


def _activity_3() -> Tcp:
    t = Tcp(BETTY, 40110, MAIL, 143).handshake()
    t.s(b"* OK [CAPABILITY IMAP4rev1] mail.stevenchoy.example IMAP4rev1 server ready\r\n")
    t.c(b"a1 LOGIN betty betty-secret\r\n").s(b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
    t.c(b"a2 SELECT INBOX\r\n").s(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1700000000] UIDs valid\r\n"
                                  b"a2 OK [READ-WRITE] SELECT completed\r\n")
    t.c(b"a3 FETCH 1 BODY[]\r\n")
    answer = b"* 1 FETCH (FLAGS (\\Seen) BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE + b")\r\na3 OK FETCH completed\r\n"
    t.s(answer[:30]).s(answer[30:70]).s(answer[70:])  # the literal split across segments
    t.c(b"a4 LOGOUT\r\n").s(b"* BYE logging out\r\na4 OK LOGOUT completed\r\n").close()
    return t


def test_activity_3_reads_as_typed() -> None:
    conv = decode(_activity_3().packets)
    assert conv.protocol == "imap" and conv.decodable
    lines = render.text([conv]).splitlines()
    assert lines[0] == "betty (10.89.0.20:40110) -> mail.stevenchoy.example (10.89.0.110:143)  IMAP"
    assert "C: a1 LOGIN betty betty-secret   (a password in clear text)" in lines
    assert "C: a3 FETCH 1 BODY[]" in lines
    assert "S: a3 OK FETCH completed" in lines
    assert any("<message, " in line for line in lines)
    [message] = conv.messages
    assert message.message_id == "<lunch.1@ouhk.example>" and message.subject == "Lunch"
    assert message.command == "FETCH 1 BODY[]" and message.complete and message.octets == len(MESSAGE)
    login = next(e for e in conv.events if e.kind == "auth")
    assert login.payload == Credentials(user="betty", secret="betty-secret")
    assert "betty-secret" not in login.shown(hide_secrets=True)
    tagged = [e.payload for e in conv.events if isinstance(e.payload, ImapResponse) and e.payload.tag == "a2"]
    assert tagged == [ImapResponse("a2", "OK")]


def test_a_quoted_password_and_a_literal_one_are_both_secrets() -> None:
    t = Tcp(BETTY, 40111, MAIL, 143).handshake()
    t.s(b"* OK ready\r\n")
    t.c(b'a1 LOGIN "betty" "bet ty"\r\n').s(b"a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
    t.c(b"a2 LOGIN betty {12}\r\n").s(b"+ go ahead\r\n").c(b"betty-secret\r\n").s(b"a2 OK Logged in\r\n").close()
    conv = decode(t.packets)
    auths = [e for e in conv.events if e.kind == "auth"]
    assert [a.payload for a in auths] == [Credentials(user="betty", secret="bet ty"),
                                          Credentials(user="betty", secret="betty-secret")]
    assert all("bet ty" not in a.shown(True) and "betty-secret" not in a.shown(True) for a in auths)


def test_authenticate_plain_shows_what_the_base64_hides() -> None:
    t = Tcp(BETTY, 40112, MAIL, 143).handshake()
    t.s(b"* OK ready\r\n")
    t.c(b"a1 AUTHENTICATE PLAIN\r\n").s(b"+ \r\n")
    t.c(b"AGJldHR5AGJldHR5LXNlY3JldA==\r\n").s(b"a1 OK Logged in\r\n").close()
    conv = decode(t.packets)
    sasl = [e for e in conv.events if e.kind == "auth"][-1]
    assert 'password "betty-secret"' in sasl.text and "betty-secret" not in sasl.shown(True)


def test_starttls_ends_the_clear_text() -> None:
    t = Tcp(BETTY, 40113, MAIL, 143).handshake()
    t.s(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    t.c(b"a1 STARTTLS\r\n").s(b"a1 OK Begin TLS negotiation now\r\n")
    t.c(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(40)).s(b"\x16\x03\x03\x00\x7a" + bytes(30)).close()
    conv = decode(t.packets)
    assert conv.decodable
    assert [e.kind for e in conv.events if e.kind in ("tls", "undecodable")] == ["tls"]


def test_idle_and_done() -> None:
    t = Tcp(BETTY, 40114, MAIL, 143).handshake()
    t.s(b"* OK ready\r\n").c(b"a1 IDLE\r\n").s(b"+ idling\r\n").s(b"* 2 EXISTS\r\n")
    t.c(b"DONE\r\n").s(b"a1 OK IDLE terminated\r\n").close()
    conv = decode(t.packets)
    assert [e.text for e in conv.events if e.kind in ("command", "reply")] == [
        "* OK ready", "a1 IDLE", "+ idling", "* 2 EXISTS", "DONE", "a1 OK IDLE terminated"]


def test_not_imap_on_143_is_shown_as_such() -> None:
    t = Tcp(BETTY, 40115, MAIL, 143).handshake()
    t.s(b"SSH-2.0-OpenSSH_9.2\r\n").c(b"SSH-2.0-client\r\n").close()
    conv = decode(t.packets)
    assert not conv.decodable


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_bytes_decode_without_a_crash(to_server: bytes, to_client: bytes) -> None:
    t = Tcp(BETTY, 40116, MAIL, 143).handshake()
    if to_client:
        t.s(b"* OK ready\r\n" + to_client)
    if to_server:
        t.c(to_server)
    decode(t.close().packets)
