"""POP3 dialogues: multi-line answers grouped with their command, dot-stuffing, clear-text passwords."""

from __future__ import annotations

import pytest

from labctl.traffic import render
from labctl.traffic.model import Conversation
from services import textwire
from services.pop3 import core
from tests.unit.decoding import only_conversation
from tests.unit.packets import BETTY, MAIL, NAMES, Packet, Tcp, pcap

MESSAGE = (b"From: andy@ouhk.example\r\nSubject: Lunch\r\nMessage-ID: <lunch.1@ouhk.example>\r\n\r\n"
           b"Hi Betty,\r\n.leading dot\r\n.\r\nAndy\r\n")


def decode(packets: list[Packet], **kw: bool) -> Conversation:
    return only_conversation(pcap(packets), NAMES, **kw)


def _session() -> Tcp:
    t = Tcp(BETTY, 37762, MAIL, 110).handshake()
    t.s(b"+OK mail.stevenchoy.example POP3 server ready\r\n")
    t.c(b"USER betty\r\n").s(b"+OK User accepted\r\n")
    t.c(b"PASS betty-secret\r\n").s(b"+OK Pass accepted\r\n")
    t.c(b"STAT\r\n").s(b"+OK 2 380\r\n")
    t.c(b"LIST\r\n").s(b"+OK 2 messages (380 octets)\r\n1 180\r\n2 200\r\n.\r\n")
    t.c(b"LIST 2\r\n").s(b"+OK 2 200\r\n")
    t.c(b"RETR 1\r\n")
    stuffed = textwire.stuff_lines(textwire.wire_lines(MESSAGE))  # dot-stuffed exactly as our server sends it
    answer = b"+OK 180 octets\r\n" + stuffed
    t.s(answer[:40]).s(answer[40:])  # split across segments
    t.c(b"DELE 1\r\n").s(b"+OK message 1 deleted\r\n")
    t.c(b"RETR 9\r\n").s(b"-ERR no such message, only 2 messages in maildrop\r\n")
    t.c(b"QUIT\r\n").s(b"+OK Bye-bye\r\n").close()
    return t


def test_the_articles_activity_2() -> None:
    conv = decode(_session().packets)
    assert render.text([conv]).splitlines() == [
        "betty (10.89.0.20:37762) -> mail.stevenchoy.example (10.89.0.110:110)  POP3",
        "S: +OK mail.stevenchoy.example POP3 server ready",
        "C: USER betty",
        "S: +OK User accepted",
        "C: PASS betty-secret   (a password in clear text)",
        "S: +OK Pass accepted",
        "C: STAT",
        "S: +OK 2 380",
        "C: LIST",
        "S: +OK 2 messages (380 octets)",
        "   1 180",
        "   2 200",
        "   .",
        "C: LIST 2",
        "S: +OK 2 200",
        "C: RETR 1",
        "S: +OK 180 octets",
        f"   <message, 8 lines, {len(MESSAGE)} octets>",
        "C: DELE 1",
        "S: +OK message 1 deleted",
        "C: RETR 9",
        "S: -ERR no such message, only 2 messages in maildrop",
        "C: QUIT",
        "S: +OK Bye-bye",
    ]
    [msg] = conv.messages
    assert (msg.message_id, msg.subject, msg.command, msg.octets) == ("<lunch.1@ouhk.example>", "Lunch", "RETR 1",
                                                                      len(MESSAGE))


def test_dot_stuffing_is_removed_in_the_shown_body() -> None:
    conv = decode(_session().packets, show_bodies=True)
    retr = next(e for e in conv.events if e.text.startswith("+OK 180 octets"))
    body = retr.text.replace("\r", "").split("\n")
    assert ".leading dot" in body and "." in body  # both were sent with an extra dot


def test_hide_secrets_masks_the_password() -> None:
    conv = decode(_session().packets)
    text = render.text([conv], hide_secrets=True)
    assert "betty-secret" not in text and "PASS ********" in text


def test_pipelined_commands_and_a_cut_multiline_answer() -> None:
    t = Tcp(BETTY, 37762, MAIL, 110).handshake().s(b"+OK ready\r\n")
    t.c(b"CAPA\r\nUIDL\r\nTOP 1 0\r\n")  # RFC 2449 PIPELINING
    t.s(b"+OK Capability list follows\r\nTOP\r\nUIDL\r\n.\r\n+OK\r\n1 abc\r\n.\r\n+OK top follows\r\nSubject: x\r\n")
    conv = decode(t.packets)  # the capture ends inside TOP's answer
    text = render.text([conv]).splitlines()
    assert text[2:5] == ["C: CAPA", "C: UIDL", "C: TOP 1 0"]
    assert "   <message, 1 lines, 12 octets, end not captured>" in text
    assert conv.messages[0].complete is False


def test_not_pop3_on_port_110() -> None:
    t = Tcp(BETTY, 37762, MAIL, 110).handshake().s(b"\x16\x03\x01\x00\xa5garbage").close()
    conv = decode(t.packets)
    assert not conv.decodable and conv.events[-1].kind == "undecodable"


@pytest.mark.parametrize("line,multi", [
    (b"CAPA", True), (b"LIST", True), (b"LIST 1", False), (b"UIDL", True), (b"UIDL 1", False),
    (b"RETR 1", True), (b"TOP 1 2", True), (b"STAT", False), (b"NOOP", False), (b"DELE 1", False),
    (b"RSET", False), (b"QUIT", False),
])
def test_multiline_answer_agrees_with_the_servers_session(line: bytes, multi: bool) -> None:
    class Box:
        def try_lock(self) -> bool:
            return True

        def unlock(self) -> None: ...

        def keys(self) -> list[str]:
            return ["k1"]

        def read(self, key: str) -> bytes:
            return MESSAGE

        def wire_size(self, key: str) -> int | None:
            return None

        def delete(self, key: str) -> None: ...

    class Auth:
        def authenticate(self, user: str, password: str) -> str | None:
            return "betty@stevenchoy.example"

    session = core.Session("mail", Auth(), lambda address: Box())
    session.receive_data(b"USER betty\r\nPASS x\r\n")
    [sent] = [a.data for a in session.receive_data(line + b"\r\n") if isinstance(a, core.Send)]
    verb, *args = line.decode().split()
    assert core.multiline_answer(verb, args) is multi
    assert sent.startswith(b"+OK")
    assert sent.endswith(b"\r\n.\r\n") is multi
