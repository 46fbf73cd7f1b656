"""The MTA and MX SMTP servers on 127.0.0.1, port 0, driven by raw sockets and smtplib.

The servers run in an event loop on a background thread, as in production; the tests are the
clients. The last test is the article end to end: andy submits to the MTA, whose delivery
worker relays to the MX, where betty fetches the message with POP3.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import email.utils
import errno
import logging
import poplib
import re
import smtplib
import socket
import struct
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from services.config import LabConfig
from services.logins import AUTH_DELAY_FIRST, LoginDelay
from services.mailstore import Maildir, mailbox_dir
from services.smtp import server, session, wire
from services.smtp.delivery import DeliveryWorker
from services.smtp.mta import local_delivery, start_mta
from services.smtp.mx import start_mx
from services.smtp.policy import EnvelopePath
from services.smtp.relay import MxAnswer, MxHost, MxRecords
from services.smtp.replyfaults import ReplyFaultFile, ReplyRule, render_rules
from services.smtp.server import Listeners
from services.smtp.session import Client
from services.smtp.spool import Spool
from services.smtp.wire import DataReader, Reply
from tests.component.smtpwire import Wire
from tests.labconfig import lab_config, password
from tests.support import BackgroundLoop

T = TypeVar("T")
TIMEOUT = 10.0  # the longest any reply may take
SMALL = 2048  # a SIZE limit small enough to exceed in a test

def lab(me: str) -> LabConfig:
    """The lab, with the MTA at 127.0.0.1 and andy's MUA host elsewhere (not a loopback address)."""
    return lab_config(me, addresses={"smtp": "127.0.0.1", "mail": "127.0.0.2"}, nameserver="127.0.0.1")


MX_CFG = lab("mail")
MTA_CFG = lab("smtp")
PASSWORDS = {a: password(a) for a in ("andy@ouhk.example", "betty@stevenchoy.example")}

# The article's Activity 1, as typed (with the lab's names).
ACTIVITY_1 = [
    "MAIL FROM: andy@ouhk.example",
    "RCPT TO: betty@stevenchoy.example",
    "DATA",
    "This is the first line of testing message.\r\nThis is the second line of testing message.\r\n.",
    "QUIT",
]
ACTIVITY_1_LOWER_CASE = ["mail from: andy@ouhk.example", "rcpt to: betty@stevenchoy.example", "data",
                         ACTIVITY_1[3], "quit"]
TYPED_TEXT = b"This is the first line of testing message.\r\nThis is the second line of testing message.\r\n"

MESSAGE = (
    b"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: lunch\r\n"
    b"Message-ID: <1@andy.ouhk.example>\r\n\r\nShall we?\r\n.a line that starts with a dot\r\n"
)

# Every reply carries an RFC 3463 code but these (RFC 2034 §3 exempts greeting, HELO, EHLO).
ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")


@dataclass
class Servers:
    """Starts servers in the background loop; stops them all at teardown."""

    loop: asyncio.AbstractEventLoop
    root: Path
    started: list[Listeners] = field(default_factory=list)
    opened: list[Wire | smtplib.SMTP | poplib.POP3] = field(default_factory=list)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    def maildir(self, address: str) -> Maildir:
        return Maildir(mailbox_dir(self.mail_root, address))

    def mx(self, **kwargs: Any) -> Listeners:
        kwargs.setdefault("mail_root", self.mail_root)
        listeners = self.run(start_mx(MX_CFG, host="127.0.0.1", smtp_port=0, pop3_port=0, imap_port=0, **kwargs))
        self.started.append(listeners)
        return listeners

    def mta(self, spool: Spool, on_enqueued: Any = lambda: None, **kwargs: Any) -> Listeners:
        listeners = self.run(start_mta(MTA_CFG, spool=spool, on_enqueued=on_enqueued, mail_root=self.mail_root,
                                       host="127.0.0.1", smtp_port=0, submission_port=0, pop3_port=0,
                                       imap_port=0, **kwargs))
        self.started.append(listeners)
        return listeners

    def listen(self, role: server.RoleHandler) -> int:
        srv = self.run(server.listen(role, hostname="test.example", host="127.0.0.1", port=0))
        self.started.append(Listeners({"smtp": srv}))
        return int(srv.sockets[0].getsockname()[1])

    def wire(self, port: int) -> Wire:
        w = Wire(port)
        self.opened.append(w)
        return w

    def smtp(self, port: int) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT)
        self.opened.append(client)
        return client


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    background = BackgroundLoop()
    s = Servers(background.loop, tmp_path)
    yield s
    for opened in s.opened:
        opened.close()
    background.close([listeners.close for listeners in s.started])


@pytest.fixture
def mx(servers: Servers) -> Wire:
    """A raw session with the MX, greeted with EHLO."""
    wire = servers.wire(servers.mx().port("smtp"))
    assert wire.command("EHLO client.example").startswith("250-mail.stevenchoy.example Hello [127.0.0.1]")
    return wire


def stored(servers: Servers, address: str) -> list[bytes]:
    box = servers.maildir(address)
    return [box.read(key) for key in box.keys()]


def start_transaction(wire: Wire) -> None:
    assert wire.command("MAIL FROM:<andy@ouhk.example>").startswith("250 2.1.0")
    assert wire.command("RCPT TO:<betty@stevenchoy.example>").startswith("250 2.1.5")
    assert wire.command("DATA") == '354 Enter mail, end with "." on a line by itself'


# -- the article's Activity 1 -------------------------------------------------------------------


@pytest.mark.parametrize("typed", [ACTIVITY_1, ACTIVITY_1_LOWER_CASE], ids=["upper", "lower"])
def test_activity_1_typed_by_hand_at_the_mta(servers: Servers, typed: list[str]) -> None:
    spool = Spool(servers.root / "spool")
    woken: list[bool] = []
    wire = servers.wire(servers.mta(spool, on_enqueued=lambda: woken.append(True)).port("smtp"))

    greeting = re.fullmatch(r"220 smtp\.ouhk\.example ESMTP maillab; (.+)", wire.greeting)
    assert greeting is not None, wire.greeting
    assert abs(email.utils.parsedate_to_datetime(greeting.group(1)).timestamp() - time.time()) < 60

    assert wire.command(typed[0]) == "250 2.1.0 andy@ouhk.example... Sender ok"
    assert wire.command(typed[1]) == "250 2.1.5 betty@stevenchoy.example... Recipient ok"
    assert wire.command(typed[2]) == '354 Enter mail, end with "." on a line by itself'
    done = re.fullmatch(r"250 2\.0\.0 (\w+) Message accepted for delivery", wire.command(typed[3]))
    assert done is not None
    assert wire.command(typed[4]) == "221 2.0.0 Bye"
    assert wire.closed_by_server()

    entry = spool.entry(done.group(1))
    assert (entry.sender, [r.address for r in entry.recipients]) == ("andy@ouhk.example", ["betty@stevenchoy.example"])
    data = spool.read(entry.id)
    assert data.startswith(b"Received: from [127.0.0.1] (smtp.ouhk.example [127.0.0.1])\r\n"
                           b"\tby smtp.ouhk.example (maillab) with SMTP id ")  # no HELO was sent: SMTP
    assert data.endswith(b"\r\n" + TYPED_TEXT)
    assert woken == [True]


def test_activity_1_at_the_mx_lands_in_betty_s_maildir(servers: Servers) -> None:
    wire = servers.wire(servers.mx().port("smtp"))
    assert wire.greeting.startswith("220 mail.stevenchoy.example ESMTP maillab; ")
    replies = [wire.command(line) for line in ACTIVITY_1]
    assert replies[:3] == ["250 2.1.0 andy@ouhk.example... Sender ok",
                           "250 2.1.5 betty@stevenchoy.example... Recipient ok",
                           '354 Enter mail, end with "." on a line by itself']
    queue_id = replies[3].split()[2]
    assert replies[3:] == [f"250 2.0.0 {queue_id} Message accepted for delivery", "221 2.0.0 Bye"]
    [message] = stored(servers, "betty@stevenchoy.example")
    lines = message.split(b"\n")
    assert lines[:3] == [b"Return-Path: <andy@ouhk.example>",
                         b"Received: from [127.0.0.1] (smtp.ouhk.example [127.0.0.1])",
                         b"\tby mail.stevenchoy.example (maillab) with SMTP id " + queue_id.encode()]
    assert lines[3].startswith(b"\tfor <betty@stevenchoy.example>; ")
    assert message.endswith(TYPED_TEXT.replace(b"\r\n", b"\n"))  # the Maildir keeps LF line ends


# -- EHLO and the other commands -----------------------------------------------------------------


def features(servers: Servers, port: int) -> dict[str, str]:
    client = servers.smtp(port)
    code, _ = client.ehlo()
    assert code == 250
    return dict(client.esmtp_features)


def test_ehlo_lists_only_what_is_implemented(servers: Servers) -> None:
    plain = {"size": str(wire.MESSAGE_SIZE_LIMIT), "8bitmime": "", "pipelining": "", "enhancedstatuscodes": ""}
    assert features(servers, servers.mx().port("smtp")) == plain
    mta = servers.mta(Spool(servers.root / "spool"))
    assert features(servers, mta.port("smtp")) == plain
    assert features(servers, mta.port("submission")) == {**plain, "auth": " LOGIN PLAIN"}
    assert features(servers, servers.mx(size_limit=SMALL).port("smtp"))["size"] == str(SMALL)


def test_helo_works_and_the_other_commands_answer(mx: Wire) -> None:
    assert mx.command("HELO client.example") == "250 mail.stevenchoy.example Hello [127.0.0.1], pleased to meet you"
    assert mx.command("NOOP") == "250 2.0.0 OK"
    assert mx.command("VRFY betty") == "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
    assert mx.command("EXPN staff") == "502 5.5.1 EXPN not implemented"
    assert mx.command("HELP").splitlines()[0] == "214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
    assert mx.command("help mail") == "214 2.0.0 MAIL FROM:<address> [SIZE=<octets>] [BODY=7BIT|8BITMIME]"
    assert mx.command("AUTH PLAIN") == "502 5.5.1 AUTH is offered on the submission port only"
    assert mx.command("MAIL FROM:<andy@ouhk.example> SIZE=10") == "555 5.5.4 MAIL FROM parameters need EHLO"


def test_commands_out_of_order_get_503(mx: Wire) -> None:
    assert mx.command("RCPT TO:<betty@stevenchoy.example>") == "503 5.5.1 Need MAIL before RCPT"
    assert mx.command("DATA") == "503 5.5.1 Need MAIL command"
    assert mx.command("MAIL FROM:<andy@ouhk.example>") == "250 2.1.0 <andy@ouhk.example>... Sender ok"
    assert mx.command("MAIL FROM:<andy@ouhk.example>") == "503 5.5.1 Sender already specified"
    assert mx.command("DATA") == "503 5.5.1 Need RCPT (recipient)"
    assert mx.command("RCPT TO:<nobody@stevenchoy.example>").startswith("550 5.1.1")
    assert mx.command("DATA") == "503 5.5.1 Need RCPT (recipient)"  # every recipient was refused
    assert mx.command("RSET") == "250 2.0.0 OK"
    assert mx.command("RCPT TO:<betty@stevenchoy.example>") == "503 5.5.1 Need MAIL before RCPT"  # RSET ended it


def test_pipelined_commands_are_answered_in_order(mx: Wire) -> None:
    mx.send(b"MAIL FROM:<andy@ouhk.example>\r\nRCPT TO:<betty@stevenchoy.example>\r\n"
            b"RCPT TO:<nobody@stevenchoy.example>\r\nRCPT TO:<betty@elsewhere.example>\r\nDATA\r\n")
    assert [mx.reply()[:9] for _ in range(5)] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "550 5.7.1", "354 Enter"]
    assert mx.command(b"Subject: x\r\n\r\ny\r\n.").startswith("250 2.0.0 ")


def test_every_reply_carries_an_enhanced_status_code(servers: Servers) -> None:
    port = servers.mx().port("smtp")
    scripts = [  # two sessions: one would spend its budget of bad commands
        ["NOOP", "RSET", "VRFY", "VRFY x", "HELP", "HELP FOO", "EXPN x", "AUTH LOGIN", "XYZZY", ""],
        ["EHLO client.example", "AUTH LOGIN", "MAIL", "MAIL FROM:<>", "RCPT TO:<>",
         "RCPT TO:<betty@stevenchoy.example>", "DATA", "hello\r\n.", "RCPT TO:<betty>", "QUIT x", "RSET x", "QUIT"],
    ]
    for script in scripts:
        wire = servers.wire(port)
        for line in script:
            for reply_line in wire.command(line).splitlines():
                exempt = line.startswith("EHLO") or reply_line.startswith("354 ")
                assert ENHANCED.match(reply_line) or exempt, (line, reply_line)


# -- bad input: right reply, session goes on (until the budget is spent) -------------------------------


def test_unknown_verbs_end_with_421(mx: Wire) -> None:
    # A student's typos count like any other bad command: aiosmtpd alone would stop at the fifth.
    for _ in range(session.MAX_BAD_COMMANDS - 1):
        assert mx.command("XYZZY") == "500 5.5.1 Command unrecognized"
    assert mx.command("XYZZY") == "421 4.7.0 mail.stevenchoy.example Too many errors, closing connection"
    assert mx.closed_by_server()


def test_malformed_commands_end_with_421(mx: Wire) -> None:
    for _ in range(session.MAX_BAD_COMMANDS - 1):
        assert mx.command("MAIL FROM:<andy@@ouhk.example>") == "501 5.1.7 Bad sender address syntax"
    assert mx.command("MAIL FROM:<x@@y>") == "421 4.7.0 mail.stevenchoy.example Too many errors, closing connection"
    assert mx.closed_by_server()


# nmap's smtp-open-relay script: 16 relay tricks, RSET between them, all in one session.
RELAY_AUDIT = [
    ("", "relaytest@elsewhere.example"), ("antispam@elsewhere.example", "relaytest@elsewhere.example"),
    ("antispam@[127.0.0.1]", "relaytest%elsewhere.example@[127.0.0.1]"),
    ("antispam@[127.0.0.1]", "relaytest%elsewhere.example@mail.stevenchoy.example"),
    ("antispam@[127.0.0.1]", '"relaytest@elsewhere.example"'),
    ("antispam@[127.0.0.1]", '"relaytest%elsewhere.example"'),
    ("antispam@[127.0.0.1]", "relaytest@elsewhere.example@[127.0.0.1]"),
    ("antispam@[127.0.0.1]", '"relaytest@elsewhere.example"@[127.0.0.1]'),
    ("antispam@[127.0.0.1]", "relaytest@elsewhere.example@mail.stevenchoy.example"),
    ("antispam@[127.0.0.1]", "@[127.0.0.1]:relaytest@elsewhere.example"),
    ("antispam@[127.0.0.1]", "@mail.stevenchoy.example:relaytest@elsewhere.example"),
    ("antispam@[127.0.0.1]", "elsewhere.example!relaytest"),
    ("antispam@[127.0.0.1]", "elsewhere.example!relaytest@[127.0.0.1]"),
    ("antispam@[127.0.0.1]", "elsewhere.example!relaytest@mail.stevenchoy.example"),
    ("antispam@mail.stevenchoy.example", "relaytest@elsewhere.example"),
    ("antispam@[127.0.0.1]", "relaytest@elsewhere.example"),
]


def test_a_relay_audit_in_one_session_is_refused_to_the_end_not_cut_off(mx: Wire) -> None:
    """Every trick refused with a 5xx, and the session lasts: the bad-command budget is not spent."""
    for sender, rcpt in RELAY_AUDIT:
        assert mx.command("RSET") == "250 2.0.0 OK"
        assert mx.command(f"MAIL FROM:<{sender}>").startswith("250 2.1.0")
        code = mx.command(f"RCPT TO:<{rcpt}>")[:3]
        assert code.startswith("5"), (rcpt, code)
    assert mx.command("QUIT") == "221 2.0.0 Bye"


@pytest.mark.parametrize("command", ["EHLO client.example", "HELP"])
def test_a_multi_line_reply_leaves_in_one_write(servers: Servers, command: str) -> None:
    """One recv() gets the whole reply, as from Postfix: nmap's smtp library reads a reply with one
    read, and with our EHLO split over four segments it fell out of step and called us an open relay."""
    sock = socket.create_connection(("127.0.0.1", servers.mx().port("smtp")), timeout=TIMEOUT)
    try:
        assert sock.recv(4096).startswith(b"220 ")
        sock.sendall(command.encode() + b"\r\n")
        first_read = sock.recv(4096).decode("ascii")
    finally:
        sock.close()
    lines = first_read.split("\r\n")
    assert lines[-1] == "" and len(lines) >= 4, first_read
    assert all(line[3] == "-" for line in lines[:-2]) and lines[-2][3] == " ", first_read


def data_segments_received(sock: socket.socket) -> int:
    """tcpi_data_segs_in of Linux's struct tcp_info (since 4.6): TCP segments with data received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return int(struct.unpack_from("I", info, 152)[0])


@pytest.mark.skipif(sys.platform != "linux", reason="counts segments with Linux's TCP_INFO")
def test_the_replies_to_a_pipelined_group_leave_in_one_segment(servers: Servers) -> None:
    """RFC 2920 §3.2: MAIL, RCPT and DATA sent together are answered together, as by Postfix
    (the MTA's relay client sends exactly this group): one segment, not one per reply."""
    sock = socket.create_connection(("127.0.0.1", servers.mx().port("smtp")), timeout=TIMEOUT)
    try:
        assert sock.recv(4096).startswith(b"220 ")
        sock.sendall(b"EHLO client.example\r\n")
        assert sock.recv(4096).endswith(b"250 ENHANCEDSTATUSCODES\r\n")
        before = data_segments_received(sock)
        sock.sendall(b"MAIL FROM:<andy@ouhk.example>\r\nRCPT TO:<betty@stevenchoy.example>\r\nDATA\r\n")
        replies = b""
        while replies.count(b"\r\n") < 3:
            replies += sock.recv(4096)
        segments = data_segments_received(sock) - before
        sock.sendall(b"Subject: x\r\n\r\ny\r\n.\r\n")
        final = sock.recv(4096).decode("ascii")
    finally:
        sock.close()
    assert [line[:9] for line in replies.decode().split("\r\n")] == ["250 2.1.0", "250 2.1.5", "354 Enter", ""]
    assert segments == 1, f"{segments} segments for three replies"
    assert final.startswith("250 2.0.0 ") and final.endswith("\r\n"), final


def test_a_whole_session_sent_at_once_then_half_closed_is_served(servers: Servers) -> None:
    # `printf '...' | nc host 25`: the client sends everything and shuts its side down at once.
    wire = servers.wire(servers.mx().port("smtp"))
    wire.send(b"MAIL FROM: andy@ouhk.example\r\nRCPT TO: betty@stevenchoy.example\r\nDATA\r\n"
              b"This is the first line of testing message.\r\n.\r\nQUIT\r\n")
    wire.sock.shutdown(socket.SHUT_WR)
    replies = [wire.reply() for _ in range(5)]
    assert [r[:3] for r in replies] == ["250", "250", "354", "250", "221"], replies
    assert wire.closed_by_server()
    [message] = stored(servers, "betty@stevenchoy.example")
    assert message.endswith(b"This is the first line of testing message.\n")


def test_input_ending_inside_data_delivers_nothing(servers: Servers) -> None:
    wire = servers.wire(servers.mx().port("smtp"))
    start_transaction(wire)
    wire.send(b"half a message\r\n")
    wire.sock.shutdown(socket.SHUT_WR)
    assert wire.closed_by_server()
    assert stored(servers, "betty@stevenchoy.example") == []


def test_nothing_pipelined_after_quit_is_delivered(servers: Servers, mx: Wire) -> None:
    mx.send(b"QUIT\r\nMAIL FROM:<andy@ouhk.example>\r\nRCPT TO:<betty@stevenchoy.example>\r\nDATA\r\nx\r\n.\r\n")
    assert mx.reply() == "221 2.0.0 Bye"
    assert mx.closed_by_server()
    assert stored(servers, "betty@stevenchoy.example") == []


def test_command_line_limit(mx: Wire) -> None:
    at_limit = "NOOP " + "x" * (wire.COMMAND_LINE_LIMIT - len("NOOP ") - 2)  # 512 octets with the CRLF
    assert mx.command(at_limit) == "250 2.0.0 OK"
    too_long = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.4: 512 octets)"
    assert mx.command(at_limit + "x") == too_long
    assert mx.command("NOOP " + "x" * 5000) == too_long  # beyond the stream reader's own bound too
    assert mx.command("NOOP") == "250 2.0.0 OK"


def test_text_line_limit(servers: Servers, mx: Wire) -> None:
    longest = b"x" * (wire.TEXT_LINE_LIMIT - 2)  # 1000 octets with the CRLF
    start_transaction(mx)
    assert mx.command(longest + b"\r\n." + longest + b"\r\n.").startswith("250 2.0.0 ")  # a stuffed dot is extra
    start_transaction(mx)
    assert mx.command(longest + b"x\r\n.") == "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets)"
    start_transaction(mx)
    assert mx.command(b"y" * 100_000 + b"\r\n.") == "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets)"
    assert mx.command("NOOP") == "250 2.0.0 OK"
    [message] = stored(servers, "betty@stevenchoy.example")
    assert message.endswith(b"\n" + longest + b"\n" + longest + b"\n")


def test_size_limit(servers: Servers) -> None:
    wire = servers.wire(servers.mx(size_limit=SMALL).port("smtp"))
    wire.command("EHLO client.example")
    assert wire.command(f"MAIL FROM:<andy@ouhk.example> SIZE={SMALL + 1}") == (
        "552 5.3.4 Message size exceeds fixed maximum message size")
    start_transaction(wire)
    assert wire.command((b"z" * 98 + b"\r\n") * 21 + b".") == (  # 2100 octets
        "552 5.3.4 Message size exceeds fixed maximum message size")
    start_transaction(wire)
    assert wire.command((b"z" * 98 + b"\r\n") * 20 + b".").startswith("250 2.0.0 ")  # 2000 octets
    assert len(stored(servers, "betty@stevenchoy.example")) == 1


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"],
                         ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CRLF"])
def test_smuggling_a_second_message_behind_a_fake_end_fails(servers: Servers, mx: Wire, fake_end: bytes) -> None:
    start_transaction(mx)
    # A server that ended the data at the fake end would take what follows as a second message
    # from mallory, ending at the real end below, and answer five times where we answer once.
    smuggled = (b"MAIL FROM:<mallory@evil.example>\r\nRCPT TO:<betty@stevenchoy.example>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nI am not from andy.\r\n")
    mx.send(b"Subject: innocent\r\n\r\nhello" + fake_end + smuggled)
    assert mx.command(b".") == str(wire.BARE_NEWLINE)  # one message, refused whole for its bare CR/LF
    assert mx.command("NOOP") == "250 2.0.0 OK"  # the very next reply: no other was queued before it
    assert stored(servers, "betty@stevenchoy.example") == []


def test_a_bare_lf_inside_a_line_is_refused_never_an_end(servers: Servers, mx: Wire) -> None:
    start_transaction(mx)
    assert mx.command(b"one\ntwo\r\n.") == str(wire.BARE_NEWLINE)
    start_transaction(mx)
    assert mx.command(b"one\r\ntwo\r\n.").startswith("250 2.0.0 ")
    assert [m.split(b"\n")[-3:] for m in stored(servers, "betty@stevenchoy.example")] == [[b"one", b"two", b""]]


@pytest.mark.parametrize("aiosmtpd_says", [*server.REWORDED, '500 Error: command "XYZZY" not recognized',
                                           "502 5.5.1 Too many unrecognized commands, goodbye.",
                                           "500 Error: (KeyError) 'secret'"])
def test_aiosmtpd_s_own_wordings_are_replaced(aiosmtpd_says: str) -> None:
    reworded = server.reword(aiosmtpd_says, "mail.stevenchoy.example")
    assert isinstance(reworded, Reply)
    ours = reworded.render()
    assert ENHANCED.match(ours) and ours != aiosmtpd_says
    assert "Error: (" not in ours


def test_data_reader_core_ends_only_at_crlf_dot_crlf() -> None:
    reader = DataReader(size_limit=1000)
    for piece in [b"a\r\n", b".\n", b"b\n", b".\r\n", b"..c\r\n"]:
        assert reader.feed(piece) is False
    assert reader.feed(b".\r\n") is True
    assert reader.outcome() == wire.BARE_NEWLINE
    reader = DataReader(size_limit=1000)
    for piece in [b"a\r\n", b"..b\r\n", b"x" * 600, b"y" * 300, b"\r", b"\n"]:
        assert reader.feed(piece) is False
    assert reader.feed(b".\r\n") is True
    assert reader.outcome() == b"a\r\n.b\r\n" + b"x" * 600 + b"y" * 300 + b"\r\n"


# -- the MX stores mail for its own users only ----------------------------------------------------------


def test_mx_delivers_into_the_maildir_with_trace_headers(servers: Servers) -> None:
    client = servers.smtp(servers.mx().port("smtp"))
    client.ehlo()
    client.mail("andy@ouhk.example")
    assert client.rcpt("betty@stevenchoy.example") == (250, b"2.1.5 <betty@stevenchoy.example>... Recipient ok")
    assert client.rcpt("nobody@stevenchoy.example") == (550, b"5.1.1 <nobody@stevenchoy.example>... User unknown")
    assert client.rcpt("andy@ouhk.example") == (550, b"5.7.1 <andy@ouhk.example>... Relaying denied")
    code, text = client.data(MESSAGE)
    assert code == 250
    queue_id = text.decode().split()[1]
    [raw] = stored(servers, "betty@stevenchoy.example")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert list(msg.keys())[:3] == ["Return-Path", "Received", "From"]
    assert msg["Return-Path"] == "<andy@ouhk.example>"
    received = " ".join(str(msg["Received"]).split())
    assert received.startswith("from client.example (smtp.ouhk.example [127.0.0.1]) by mail.stevenchoy.example "
                               f"(maillab) with ESMTP id {queue_id} for <betty@stevenchoy.example>; ")
    assert raw.endswith(MESSAGE.replace(b"\r\n", b"\n"))  # smtplib's stuffed dot is gone again
    assert stored(servers, "andy@ouhk.example") == []


@pytest.mark.parametrize("rcpt", ["postmaster@stevenchoy.example", "PostMaster@StevenChoy.Example", "<Postmaster>"])
def test_mx_takes_mail_for_postmaster_into_betty_s_maildir(servers: Servers, rcpt: str) -> None:
    """RFC 5321 §4.5.1: postmaster, in any case, and <Postmaster> without a domain MUST be accepted
    (they got 550 5.1.1 and 553). The lab's alias: the domain's first user, betty."""
    wire = servers.wire(servers.mx().port("smtp"))
    wire.command("EHLO client.example")
    assert wire.command("MAIL FROM:<andy@ouhk.example>").startswith("250 ")
    said = wire.command(f"RCPT TO:{rcpt if rcpt.startswith('<') else f'<{rcpt}>'}")
    assert said.startswith("250 2.1.5 ") and said.endswith("... Recipient ok"), said
    assert wire.command("DATA").startswith("354")
    assert wire.command(b"Subject: to the postmaster\r\n\r\nhello\r\n.").startswith("250 2.0.0")
    [raw] = stored(servers, "betty@stevenchoy.example")
    assert b"Subject: to the postmaster" in raw
    assert b"for <postmaster@stevenchoy.example>" in raw.replace(b"<PostMaster@StevenChoy.Example>",
                                                                 b"<postmaster@stevenchoy.example>")


def test_mta_takes_mail_for_its_postmaster_from_anyone(servers: Servers) -> None:
    spool = Spool(servers.root / "spool")
    mta = servers.mta(spool, relay_client=lambda ip: False)  # "the Internet": no relaying
    client = servers.smtp(mta.port("smtp"))
    client.ehlo()
    client.mail("carol@elsewhere.example")
    assert client.rcpt("<Postmaster>") == (250, b"2.1.5 <postmaster@ouhk.example>... Recipient ok")
    assert client.rcpt("postmaster@stevenchoy.example")[0] == 550  # another's postmaster: relaying denied
    assert client.data(MESSAGE)[0] == 250
    [entry] = spool.entries()
    assert [r.address for r in entry.recipients] == ["postmaster@ouhk.example"]
    local_delivery(MTA_CFG, servers.mail_root)("carol@elsewhere.example", "postmaster@ouhk.example", MESSAGE)
    assert len(stored(servers, "andy@ouhk.example")) == 1  # the alias: the domain's first user


def test_mx_takes_bounces_from_the_null_sender(servers: Servers) -> None:
    client = servers.smtp(servers.mx().port("smtp"))
    assert client.sendmail("<>", ["betty@stevenchoy.example"], b"Subject: bounce\r\n\r\nsorry\r\n") == {}
    [raw] = stored(servers, "betty@stevenchoy.example")
    assert raw.startswith(b"Return-Path: <>\n")


def test_mx_answers_451_and_keeps_nothing_when_the_disk_fails(servers: Servers) -> None:
    not_a_directory = servers.root / "file"
    not_a_directory.write_bytes(b"")
    wire = servers.wire(servers.mx(mail_root=not_a_directory).port("smtp"))
    start_transaction(wire)
    assert wire.command(b"Subject: x\r\n\r\ny\r\n.") == "451 4.3.0 Local error, try again later"
    assert wire.command("NOOP") == "250 2.0.0 OK"
    assert str(server.storage_failure(OSError(errno.ENOSPC, "No space left on device"), "test")) == (
        "452 4.3.1 Insufficient system storage")


@dataclass
class Broken:
    """A role with a bug: its delivery raises."""

    def check_sender(self, client: Client, sender: EnvelopePath) -> Reply:
        return Reply(250, "2.1.0", "ok")

    def check_recipient(self, client: Client, recipient: EnvelopePath) -> Reply:
        return Reply(250, "2.1.5", "ok")

    async def accept_message(self, client: Client, sender: str, recipients: Sequence[str], message: bytes) -> Reply:
        raise ValueError("the secret internals of the bug")


def test_our_bug_is_a_451_on_the_wire_and_a_traceback_in_the_log(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    wire = servers.wire(servers.listen(Broken()))
    start_transaction(wire)
    with caplog.at_level(logging.ERROR, logger="services.smtp"):
        assert wire.command(b"hello\r\n.") == "451 4.3.0 Local error, try again later"
    assert wire.command("NOOP") == "250 2.0.0 OK"
    [record] = [r for r in caplog.records if r.name == "services.smtp"]
    assert record.exc_info is not None and "the secret internals" in str(record.exc_info[1])


# -- the MTA relays for its own clients only ----------------------------------------------------------


def test_mta_refuses_to_relay_for_a_client_outside_its_lan(servers: Servers) -> None:
    spool = Spool(servers.root / "spool")
    # The tests connect from 127.0.0.1, which the lab trusts as the MTA host itself; here it
    # stands for a host on the Internet, as andy's MUA host (10.89.0.10) is elsewhere.
    mta = servers.mta(spool, relay_client=lambda ip: ip == "10.89.0.10")
    wire = servers.wire(mta.port("smtp"))
    assert wire.command("EHLO mail.stevenchoy.example").startswith("250-")
    assert wire.command("MAIL FROM:<betty@stevenchoy.example>").startswith("250 2.1.0")
    assert wire.command("RCPT TO:<carol@elsewhere.example>") == "550 5.7.1 <carol@elsewhere.example>... Relaying denied"
    assert wire.command("RCPT TO:<andy@ouhk.example>") == "250 2.1.5 <andy@ouhk.example>... Recipient ok"
    assert wire.command("AUTH PLAIN AGFuZHlAb3Voay5leGFtcGxlAGFuZHktc2VjcmV0") == (
        "502 5.5.1 AUTH is offered on the submission port only")
    submission = servers.wire(mta.port("submission"))
    submission.command("EHLO laptop.example")
    assert submission.command("MAIL FROM:<andy@ouhk.example>") == "530 5.7.0 Authentication required"
    assert spool.entries() == []


def test_mta_relays_from_its_own_host_by_default(servers: Servers) -> None:
    spool = Spool(servers.root / "spool")
    client = servers.smtp(servers.mta(spool).port("smtp"))
    assert client.sendmail("andy@ouhk.example", ["carol@elsewhere.example"], MESSAGE) == {}
    [entry] = spool.entries()
    assert [r.address for r in entry.recipients] == ["carol@elsewhere.example"]


def test_mta_relays_after_auth_on_the_submission_port(servers: Servers) -> None:
    spool = Spool(servers.root / "spool")
    woken: list[bool] = []
    mta = servers.mta(spool, on_enqueued=lambda: woken.append(True), relay_client=lambda ip: False)
    client = servers.smtp(mta.port("submission"))
    client.ehlo()
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        client.login("andy@ouhk.example", "wrong")
    assert (refused.value.smtp_code, refused.value.smtp_error) == (535, b"5.7.8 Authentication credentials invalid")
    for mechanism in ("LOGIN", "PLAIN"):
        client = servers.smtp(mta.port("submission"))
        client.ehlo()
        client.user, client.password = "andy", PASSWORDS["andy@ouhk.example"]
        assert client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))[0] == 235
    assert client.mail("andy@ouhk.example")[0] == 250
    assert client.rcpt("carol@elsewhere.example")[0] == 250
    code, text = client.data(MESSAGE)
    queue_id = re.fullmatch(rb"2\.0\.0 (\w+) Message accepted for delivery", text)
    assert code == 250 and queue_id is not None
    entry = spool.entry(queue_id.group(1).decode())
    assert [r.address for r in entry.recipients] == ["carol@elsewhere.example"]
    data = spool.read(entry.id)
    assert data.startswith(b"Received: from client.example (smtp.ouhk.example [127.0.0.1])\r\n"
                           b"\tby smtp.ouhk.example (maillab) with ESMTPA id ")
    assert data.endswith(MESSAGE)
    assert woken == [True]


def test_auth_inside_a_transaction_gets_503_on_the_submission_port(servers: Servers) -> None:
    """RFC 4954 §4: AUTH during a mail transaction MUST be refused with 503 (it was 235)."""
    spool = Spool(servers.root / "spool")
    mta = servers.mta(spool, relay_client=lambda ip: True)  # MAIL is taken without AUTH from the LAN
    client = servers.smtp(mta.port("submission"))
    plain = "PLAIN " + base64.b64encode(f"\0andy\0{PASSWORDS['andy@ouhk.example']}".encode()).decode()
    client.ehlo()
    assert client.mail("andy@ouhk.example")[0] == 250
    assert client.docmd("AUTH", plain) == (503, b"5.5.1 AUTH not permitted during a mail transaction")
    assert client.rcpt("betty@stevenchoy.example")[0] == 250  # the transaction goes on
    client.rset()
    assert client.docmd("AUTH", plain)[0] == 235  # outside a transaction, the same AUTH succeeds


def test_auth_login_challenges_are_username_and_password(servers: Servers) -> None:
    """The 334 challenges of AUTH LOGIN read "Username:" and "Password:" (they were "User Name\\0")."""
    mta = servers.mta(Spool(servers.root / "spool"), relay_client=lambda ip: False)
    wire = servers.wire(mta.port("submission"))
    wire.command("EHLO client.example")
    assert wire.command("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert base64.b64decode("VXNlcm5hbWU6") == b"Username:"
    assert wire.command(base64.b64encode(b"andy@ouhk.example")) == "334 UGFzc3dvcmQ6"
    assert base64.b64decode("UGFzc3dvcmQ6") == b"Password:"
    assert wire.command(base64.b64encode(PASSWORDS["andy@ouhk.example"].encode())) == (
        "235 2.7.0 Authentication successful")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_an_auth_answer_longer_than_a_line_gets_500_and_the_session_goes_on(
        servers: Servers, mechanism: str, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 4954 §4: 500 5.5.6 for an answer to a 334 longer than the server takes; the rest of that
    line is read and dropped, not taken for commands. It was "451 internal error" with a traceback
    (aiosmtpd's readline; the fuzz suite's case: AUTH PLAIN, then a line of NULs)."""
    mta = servers.mta(Spool(servers.root / "spool"), relay_client=lambda ip: False)
    wire = servers.wire(mta.port("submission"))
    wire.command("EHLO client.example")
    assert wire.command(f"AUTH {mechanism}").startswith("334 ")
    with caplog.at_level(logging.ERROR):
        assert wire.command(b"\x00" * 5000 + b" NOOP") == "500 5.5.6 Authentication Exchange line is too long"
        assert wire.command("NOOP").startswith("250 ")  # the over-long line's tail was no command
        assert wire.command(f"AUTH {mechanism}").startswith("334 ")  # and AUTH may be tried again
        assert wire.command("*") == "501 5.7.0 Auth aborted"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_wrong_auth_password_is_refused_after_a_growing_delay(servers: Servers) -> None:
    """As POP3's PASS (services.logins): 535 comes late, later each time; a right password at once."""
    delay = LoginDelay(first=0.3, cap=1.2)
    mta = servers.mta(Spool(servers.root / "spool"), relay_client=lambda ip: False, login_delay=delay)
    client = servers.smtp(mta.port("submission"))
    client.ehlo()
    elapsed = []
    for mechanism in ("PLAIN", "LOGIN"):
        client.user, client.password = "andy@ouhk.example", "wrong"
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=False)
        elapsed.append(time.monotonic() - started)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (535, b"5.7.8 Authentication credentials invalid")
    assert elapsed[0] >= delay.after(1) and elapsed[1] >= delay.after(2) == 0.6, elapsed
    client.user, client.password = "andy@ouhk.example", PASSWORDS["andy@ouhk.example"]
    started = time.monotonic()
    assert client.auth("PLAIN", client.auth_plain)[0] == 235
    assert time.monotonic() - started < delay.first


def test_the_default_auth_delay_is_pop3_s() -> None:
    assert session.ServerSession("h", None, size_limit=1).auth_failed() == AUTH_DELAY_FIRST  # type: ignore[arg-type]


# -- the article, end to end ----------------------------------------------------------------------------


class LabDns:
    """The lab DNS, for the delivery worker: stevenchoy.example's MX is the MX under test."""

    def resolve_mx(self, domain: str) -> MxAnswer:
        assert domain == "stevenchoy.example"
        return MxRecords((MxHost(10, "mail.stevenchoy.example", ("127.0.0.1",)),))


class WatchedSpool(Spool):
    """The real spool, telling the test when a message has left the queue (delivered)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.emptied = threading.Event()

    def remove_soon(self, queue_id: str) -> None:
        super().remove_soon(queue_id)
        self.emptied.set()


def test_andy_to_betty_through_the_mta_and_the_mx(servers: Servers) -> None:
    mx = servers.mx()
    spool = WatchedSpool(servers.root / "spool")
    worker = DeliveryWorker(MTA_CFG, spool, local_delivery=local_delivery(MTA_CFG, servers.mail_root),
                            resolver=LabDns(), smtp_port=mx.port("smtp"))

    async def start_worker() -> None:
        asyncio.get_running_loop().create_task(worker.run())  # cancelled at teardown

    servers.run(start_worker())
    mta = servers.mta(spool, on_enqueued=worker.wake, relay_client=lambda ip: False)

    andy = servers.smtp(mta.port("submission"))
    andy.login("andy@ouhk.example", PASSWORDS["andy@ouhk.example"])
    assert andy.sendmail("andy@ouhk.example", ["betty@stevenchoy.example", "andy@ouhk.example"], MESSAGE) == {}
    assert spool.emptied.wait(TIMEOUT), "the message never left the MTA's queue"

    betty = poplib.POP3("127.0.0.1", mx.port("pop3"), timeout=TIMEOUT)
    servers.opened.append(betty)
    betty.user("betty")
    betty.pass_(PASSWORDS["betty@stevenchoy.example"])
    _, lines, _ = betty.retr(1)
    msg = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
    assert msg["Return-Path"] == "<andy@ouhk.example>"
    hops = [" ".join(str(h).split()) for h in msg.get_all("Received", [])]
    assert len(hops) == 2
    assert re.match(r"from smtp\.ouhk\.example \(smtp\.ouhk\.example \[127\.0\.0\.1\]\) by mail\.stevenchoy\.example "
                    r"\(maillab\) with ESMTP id \w+ for <betty@stevenchoy\.example>; ", hops[0]), hops[0]
    assert re.match(r"from client\.example \(smtp\.ouhk\.example \[127\.0\.0\.1\]\) by smtp\.ouhk\.example "
                    r"\(maillab\) with ESMTPA id \w+; ", hops[1]), hops[1]  # two recipients: no "for"
    assert msg["Subject"] == "lunch" and msg.get_content().startswith("Shall we?")

    [copy] = stored(servers, "andy@ouhk.example")  # andy's own copy stayed on the MTA host
    assert copy.startswith(b"Return-Path: <andy@ouhk.example>\nReceived: from client.example ")


# -- injected replies (services.smtp.replyfaults), from a rules file as `labctl fault reply` writes it --


def rules_file(tmp_path: Path, *rules: ReplyRule) -> ReplyFaultFile:
    path = tmp_path / "reply-faults.json"
    path.write_bytes(render_rules(rules))
    return ReplyFaultFile(path, clock=time.time)


def test_greylisting_at_the_mx_refuses_the_first_try_then_delivers(servers: Servers, tmp_path: Path) -> None:
    faults = rules_file(tmp_path, ReplyRule("g", "rcpt", 450, "4.7.1", "Greylisted, try again later", times=1))
    port = servers.mx(faults=faults).port("smtp")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        servers.smtp(port).sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], MESSAGE)
    assert refused.value.recipients["betty@stevenchoy.example"] == (450, b"4.7.1 Greylisted, try again later")
    assert stored(servers, "betty@stevenchoy.example") == []
    servers.smtp(port).sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], MESSAGE)  # the retry
    assert len(stored(servers, "betty@stevenchoy.example")) == 1


def test_first_n_tries_are_counted_exactly_across_concurrent_sessions(servers: Servers, tmp_path: Path) -> None:
    faults = rules_file(tmp_path, ReplyRule("n", "mail", 451, "4.3.2", "Busy", times=5))
    port = servers.mx(faults=faults).port("smtp")

    def session(_: int) -> int:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as client:
            client.ehlo()
            code, _ = client.mail("andy@ouhk.example")
            return code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(session, range(40)))
    assert sorted(codes) == [250] * 35 + [451] * 5


def test_421_at_connect_closes_and_554_answers_503_until_quit(servers: Servers, tmp_path: Path) -> None:
    faults = rules_file(tmp_path, ReplyRule("c", "connect", 421, "4.3.2", "Not now", times=1),
                        ReplyRule("d", "connect", 554, "5.3.2", "No service here", times=1))
    port = servers.mx(faults=faults).port("smtp")
    wire = servers.wire(port)
    assert wire.greeting == "421 4.3.2 Not now"
    assert wire.closed_by_server()
    wire = servers.wire(port)
    assert wire.greeting == "554 5.3.2 No service here"
    assert wire.command("EHLO client.example") == "503 5.5.1 No SMTP service here; send QUIT"
    assert wire.command("QUIT") == "221 2.0.0 Bye"
    assert servers.wire(port).greeting.startswith("220 mail.stevenchoy.example ESMTP")


def test_a_fault_at_the_final_dot_keeps_nothing(servers: Servers, tmp_path: Path) -> None:
    faults = rules_file(tmp_path, ReplyRule("e", "dot", 452, "4.3.1", "Insufficient system storage",
                                            recipient="betty@*"))
    port = servers.mx(faults=faults).port("smtp")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        servers.smtp(port).sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], MESSAGE)
    assert refused.value.smtp_code == 452
    assert stored(servers, "betty@stevenchoy.example") == []


def test_the_mta_s_listeners_share_one_count(servers: Servers, tmp_path: Path) -> None:
    faults = rules_file(tmp_path, ReplyRule("s", "data", 452, "4.3.1", "Queue full", times=1))
    spool = Spool(servers.root / "spool")
    listeners = servers.mta(spool, faults=faults)
    with pytest.raises(smtplib.SMTPDataError):
        servers.smtp(listeners.port("smtp")).sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], MESSAGE)
    servers.smtp(listeners.port("smtp")).sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], MESSAGE)
    assert len(spool.entries()) == 1
