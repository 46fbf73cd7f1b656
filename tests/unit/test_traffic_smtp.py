"""SMTP dialogues from synthetic captures; the decoder ends DATA where our server does."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.traffic import render
from labctl.traffic.decode import TrafficDecoder
from labctl.traffic.model import Conversation
from services.smtp.wire import DataReader
from services.textwire import find_data_end
from tests.unit.packets import ANDY, NAMES, SMTP, Packet, Tcp, pcap

MESSAGE = (b"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: Lunch\r\n"
           b"Message-ID: <lunch.1@ouhk.example>\r\n\r\nHi Betty,\r\n..a line with a dot\r\nAndy\r\n")
STUFFED = MESSAGE.replace(b"\r\n..a", b"\r\n...a")  # as the client sends it (RFC 5321 §4.5.2)


def decode(packets: list[Packet], **kw: bool) -> list[Conversation]:
    d = TrafficDecoder(NAMES, **kw)
    d.feed_capture(pcap(packets))
    d.tcp.finish()
    return d.conversations()


def lines(conv: Conversation, hide: bool = False) -> list[str]:
    return render.text([conv], hide_secrets=hide).splitlines()


def _session(pipelined: bool = False) -> Tcp:
    t = Tcp(ANDY, 41234, SMTP, 25).handshake()
    t.s(b"220 smtp.ouhk.example ESMTP ready\r\n")
    t.c(b"EHLO andy.ouhk.example\r\n")
    t.s(b"250-smtp.ouhk.example Hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    if pipelined:  # RFC 2920: MAIL, RCPT and DATA in one segment, the replies in one too
        t.c(b"MAIL FROM:<andy@ouhk.example>\r\nRCPT TO:<betty@stevenchoy.example>\r\nRCPT TO:<nobody@x.example>\r\n"
            b"DATA\r\n")
        t.s(b"250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n550 5.7.1 Relaying denied\r\n354 go ahead\r\n")
    else:
        t.c(b"MAIL FROM:<andy@ouhk.example>\r\n").s(b"250 2.1.0 Sender ok\r\n")
        t.c(b"RCPT TO:<betty@stevenchoy.example>\r\n").s(b"250 2.1.5 Recipient ok\r\n")
        t.c(b"DATA\r\n").s(b"354 Enter mail\r\n")
    t.c(STUFFED[:60]).c(STUFFED[60:] + b".\r\n")
    t.s(b"250 2.0.0 4F2A Message accepted for delivery\r\n")
    t.c(b"QUIT\r\n").s(b"221 2.0.0 Bye\r\n").close()
    return t


def test_a_session_reads_like_the_article() -> None:
    [conv] = decode(_session().packets)
    assert lines(conv) == [
        "andy (10.89.0.10:41234) -> smtp.ouhk.example (10.89.0.25:25)  SMTP",
        "S: 220 smtp.ouhk.example ESMTP ready",
        "C: EHLO andy.ouhk.example",
        "S: 250-smtp.ouhk.example Hello",
        "S: 250-PIPELINING",
        "S: 250 8BITMIME",
        "C: MAIL FROM:<andy@ouhk.example>",
        "S: 250 2.1.0 Sender ok",
        "C: RCPT TO:<betty@stevenchoy.example>",
        "S: 250 2.1.5 Recipient ok",
        "C: DATA",
        "S: 354 Enter mail",
        f"C: <message, 8 lines, {len(MESSAGE)} octets>",
        "S: 250 2.0.0 4F2A Message accepted for delivery",
        "C: QUIT",
        "S: 221 2.0.0 Bye",
    ]
    [msg] = conv.messages
    assert (msg.message_id, msg.subject, msg.octets, msg.complete) == ("<lunch.1@ouhk.example>", "Lunch",
                                                                       len(MESSAGE), True)
    assert (msg.sender, msg.recipients, msg.reply_code) == ("andy@ouhk.example", ("betty@stevenchoy.example",), 250)


def test_pipelined_commands_pair_with_their_replies_in_order() -> None:
    [conv] = decode(_session(pipelined=True).packets)
    text = lines(conv)
    at = text.index("C: MAIL FROM:<andy@ouhk.example>")
    assert text[at:at + 8] == [
        "C: MAIL FROM:<andy@ouhk.example>",
        "C: RCPT TO:<betty@stevenchoy.example>",
        "C: RCPT TO:<nobody@x.example>",
        "C: DATA",
        "S: 250 2.1.0 Sender ok",
        "S: 250 2.1.5 Recipient ok",
        "S: 550 5.7.1 Relaying denied",
        "S: 354 go ahead",
    ]
    assert conv.messages[0].recipients == ("betty@stevenchoy.example",)  # only the accepted one


def test_bodies_shown_unstuffed_when_asked() -> None:
    [conv] = decode(_session().packets, show_bodies=True)
    body = next(e for e in conv.events if e.kind == "message").text
    assert "\n..a line with a dot\n" in body.replace("\r", "")  # sent as "...a line"


def test_auth_plain_and_login_credentials_are_decoded_and_maskable() -> None:
    t = Tcp(ANDY, 41234, SMTP, 587).handshake().s(b"220 ready\r\n")
    plain = base64.b64encode(b"\0andy@ouhk.example\0andy-secret").decode()
    t.c(f"AUTH PLAIN {plain}\r\n".encode()).s(b"235 2.7.0 ok\r\n")
    t.c(b"AUTH LOGIN\r\n").s(b"334 VXNlcm5hbWU6\r\n").c(b"YW5keQ==\r\n").s(b"334 UGFzc3dvcmQ6\r\n")
    t.c(base64.b64encode(b"hunter2") + b"\r\n").s(b"503 5.5.1 Already authenticated\r\n")
    [conv] = decode(t.packets)
    shown = "\n".join(lines(conv))
    assert 'password "andy-secret": clear text' in shown
    assert 'base64 of "andy"' in shown and 'base64 of "hunter2": a password in clear text' in shown
    hidden = "\n".join(lines(conv, hide=True))
    assert "andy-secret" not in hidden and "hunter2" not in hidden and plain not in hidden
    assert "aHVudGVyMg==" not in hidden  # the base64 form of a password is masked too
    assert "andy@ouhk.example" in hidden  # the user name is no secret
    events = conv.to_json(hide_secrets=True)["events"]
    assert all("andy-secret" not in str(e) and "hunter2" not in str(e) for e in events)
    assert sum(e.get("clear_text_secret", False) for e in events) == 2


def test_not_smtp_on_port_25_is_undecodable_never_a_crash() -> None:
    t = Tcp(ANDY, 41234, SMTP, 25).handshake().c(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    t.s(b"HTTP/1.1 400 Bad Request\r\n\r\n").close()
    [conv] = decode(t.packets)
    assert not conv.decodable
    kinds = [e.kind for e in conv.events]
    assert kinds.count("undecodable") == 2
    assert "48 54 54 50" in conv.events[0].text + conv.events[1].text  # "HTTP" in hex
    assert "not SMTP: undecodable" in lines(conv)[0]

    binary = Tcp(ANDY, 41235, SMTP, 25).handshake().s(b"220 ok\r\n").c(bytes(range(256))).close()
    [conv] = decode(binary.packets)
    assert not conv.decodable and conv.events[0].text == "220 ok"


def test_a_capture_cut_inside_the_data_says_so() -> None:
    t = _session()
    cut = next(i for i, p in enumerate(t.packets) if b"From: andy" in p.frame)
    [conv] = decode(t.packets[:cut + 1])
    message = next(e for e in conv.events if e.kind == "message")
    assert "end not captured" in message.text
    assert conv.messages[0].complete is False


def test_lf_dot_lf_does_not_end_the_data() -> None:
    t = Tcp(ANDY, 41234, SMTP, 25).handshake().s(b"220 ok\r\n").c(b"DATA\r\n").s(b"354 go\r\n")
    t.c(b"Subject: x\r\n\r\nsmuggled\n.\nMAIL FROM:<evil@x>\r\n.\r\n").s(b"554 5.6.0 Bare CR or LF\r\n")
    [conv] = decode(t.packets)
    assert "C: MAIL FROM:<evil@x>" not in lines(conv)
    assert conv.messages[0].reply_code == 554


def test_bdat_chunks() -> None:
    t = Tcp(ANDY, 41234, SMTP, 25).handshake().s(b"220 ok\r\n")
    t.c(b"MAIL FROM:<a@b.example>\r\n").s(b"250 ok\r\n").c(b"RCPT TO:<c@d.example>\r\n").s(b"250 ok\r\n")
    t.c(b"BDAT 20\r\n" + MESSAGE[:20]).s(b"250 2.0.0 20 octets\r\n")
    rest = MESSAGE[20:]
    t.c(f"BDAT {len(rest)} LAST\r\n".encode() + rest).s(b"250 2.0.0 Message accepted\r\n")
    [conv] = decode(t.packets)
    assert [e.text for e in conv.events if e.kind == "command"][-1] == f"BDAT {len(rest)} LAST"
    assert conv.messages[-1].reply_code == 250 and conv.messages[-1].octets == len(rest)


def test_joined_mid_data() -> None:
    t = _session()
    start = next(i for i, p in enumerate(t.packets) if STUFFED[60:70] in p.frame)
    [conv] = decode(t.packets[start:])
    assert conv.joined_midway
    text = lines(conv)
    assert any("began inside it" in line for line in text)
    assert "S: 250 2.0.0 4F2A Message accepted for delivery" in text  # a reply line that began the capture
    assert "C: QUIT" in text and "S: 221 2.0.0 Bye" in text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.\r\n", b"x" * 7]), max_size=30))
def test_find_data_end_agrees_with_the_servers_data_reader(pieces: list[bytes]) -> None:
    stream = b"".join(pieces) + b"\r\n.\r\n"
    end = find_data_end(stream, 0)
    reader = DataReader(size_limit=10**6)
    pos, ended_at = 0, -1
    while pos < len(stream):  # feed as the server's stream reader does: line by line
        nl = stream.find(b"\n", pos)
        line = stream[pos:nl + 1]
        if reader.feed(line):
            ended_at = pos
            break
        pos = nl + 1
    assert end == ended_at
