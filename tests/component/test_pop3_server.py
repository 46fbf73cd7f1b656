"""The POP3 server on 127.0.0.1, port 0, driven by poplib and by raw sockets."""

from __future__ import annotations

import asyncio
import logging
import poplib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.mailstore import Maildir, deliver, mailbox_dir
from services.pop3 import server as pop3_server
from services.pop3.core import MAX_BAD_COMMANDS, Limits
from tests.labconfig import lab_config
from tests.support import BackgroundLoop, server_closer

PASSWORD = "s3cret pw"
AUTH_DELAY = 0.2  # the first failed login's delay in these tests (the real default is longer)
TIMEOUT = 10.0  # a client socket waits at most this long for any reply

# A password with a space: PASS takes the rest of the line (RFC 1939 §7).
CONFIG = lab_config("mail", addresses={"mail": "127.0.0.1", "smtp": "127.0.0.2"}, subnet="127.0.0.0/8",
                    nameserver="127.0.0.1", passwords={"betty@stevenchoy.example": PASSWORD})

MESSAGE_1 = b"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: one\r\n\r\nHello Betty.\r\n"
MESSAGE_2 = b"Subject: two\r\n\r\nline 1\r\n.starts with a dot\r\nline 3\r\nline 4\r\n"
TOTAL = len(MESSAGE_1) + len(MESSAGE_2)  # stored with LF, counted with CRLF: the same octets


@dataclass
class Pop3:
    port: int
    mailbox: Path
    opened: list[poplib.POP3 | socket.socket] = field(default_factory=list)  # closed at teardown

    def client(self) -> poplib.POP3:
        client = poplib.POP3("127.0.0.1", self.port, timeout=TIMEOUT)
        self.opened.append(client)
        return client

    def login(self, user: str = "betty") -> poplib.POP3:
        client = self.client()
        client.user(user)
        client.pass_(PASSWORD)
        return client

    def raw(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.opened.append(sock)
        assert read_line(sock).startswith(b"+OK")
        return sock


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def hang_up_and_wait(client: poplib.POP3) -> None:
    """Drop the connection without QUIT; return once the server has seen it and closed its end."""
    client.sock.shutdown(socket.SHUT_WR)
    assert client.sock.recv(4096) == b""  # the server runs its clean-up before it closes
    client.close()


Serve = Callable[[Limits], Pop3]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    background = BackgroundLoop()
    servers: list[asyncio.Server] = []
    labs: list[Pop3] = []

    def start(limits: Limits) -> Pop3:
        coro = pop3_server.start(CONFIG, mail_root=tmp_path, host="127.0.0.1", port=0, limits=limits)
        server = background.run(coro)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        labs.append(Pop3(port, mailbox_dir(tmp_path, "betty@stevenchoy.example")))
        return labs[-1]

    yield start
    for lab in labs:
        for opened in lab.opened:
            opened.close()
    background.close([server_closer(s) for s in servers])


@pytest.fixture
def pop3(serve: Serve) -> Pop3:
    lab: Pop3 = serve(Limits(auth_delay_first=AUTH_DELAY, auth_delay_max=4 * AUTH_DELAY))
    deliver(lab.mailbox, MESSAGE_1)
    deliver(lab.mailbox, MESSAGE_2)
    return lab


def test_greeting_stat_list_retr_top_uidl(pop3: Pop3) -> None:
    client = pop3.client()
    assert client.getwelcome() == b"+OK mail.stevenchoy.example POP3 server ready"
    assert client.user("betty") == b"+OK User accepted"
    assert client.pass_(PASSWORD) == f"+OK Pass accepted, 2 messages ({TOTAL} octets)".encode()
    assert client.stat() == (2, TOTAL)
    resp, listing, _ = client.list()
    assert resp == f"+OK 2 messages ({TOTAL} octets)".encode()
    assert listing == [f"1 {len(MESSAGE_1)}".encode(), f"2 {len(MESSAGE_2)}".encode()]
    single: object = client.list(2)  # one line; typeshed types LIST as always multi-line
    assert single == f"+OK 2 {len(MESSAGE_2)}".encode()

    resp, lines, octets = client.retr(2)
    assert resp == f"+OK {len(MESSAGE_2)} octets".encode()
    assert octets == len(MESSAGE_2)  # poplib counts what it un-stuffed: the dot line came back whole
    assert b"".join(line + b"\r\n" for line in lines) == MESSAGE_2

    _, top, _ = client.top(2, 2)
    assert top == [b"Subject: two", b"", b"line 1", b".starts with a dot"]
    _, top, _ = client.top(1, 0)
    assert top == MESSAGE_1.split(b"\r\n")[:4]

    _, uids, _ = client.uidl()
    # The unique part of each Maildir name, without its ",S=...,W=..." size fields.
    keys = [k.split(",")[0] for k in Maildir(pop3.mailbox).keys()]
    assert all(k.endswith(f".{socket.gethostname()}") for k in keys), keys
    assert uids == [f"1 {keys[0]}".encode(), f"2 {keys[1]}".encode()]
    assert client.uidl(1) == f"+OK 1 {keys[0]}".encode()
    assert client.capa() == {"TOP": [], "UIDL": [], "USER": [], "RESP-CODES": [], "AUTH-RESP-CODE": [],
                             "PIPELINING": [], "IMPLEMENTATION": ["maillab"]}
    assert client.quit() == b"+OK Bye-bye"


def test_full_address_as_user_name(pop3: Pop3) -> None:
    client = pop3.login("Betty@stevenchoy.example")
    assert client.stat()[0] == 2
    client.quit()


def test_uids_are_stable_across_sessions(pop3: Pop3) -> None:
    client = pop3.login()
    first = client.uidl()[1]
    client.quit()
    deliver(pop3.mailbox, b"Subject: three\r\n\r\n3\r\n")
    client = pop3.login()
    assert client.uidl()[1][:2] == first
    client.quit()


def test_dele_then_quit_removes_the_message(pop3: Pop3) -> None:
    kept = Maildir(pop3.mailbox).keys()[1]
    client = pop3.login()
    assert client.dele(1) == b"+OK message 1 deleted"
    with pytest.raises(poplib.error_proto, match="already deleted"):
        client.retr(1)
    assert client.stat() == (1, len(MESSAGE_2))
    assert Maildir(pop3.mailbox).keys()[1] == kept  # still on disk until QUIT
    assert client.quit() == b"+OK Bye-bye"
    assert Maildir(pop3.mailbox).keys() == [kept]
    client = pop3.login()
    assert client.stat() == (1, len(MESSAGE_2))
    client.quit()


def test_dele_then_rset_then_quit_removes_nothing(pop3: Pop3) -> None:
    client = pop3.login()
    client.dele(1)
    client.dele(2)
    assert client.rset() == f"+OK maildrop has 2 messages ({TOTAL} octets)".encode()
    client.quit()
    assert len(Maildir(pop3.mailbox).keys()) == 2


def test_dele_then_dropped_connection_removes_nothing(pop3: Pop3) -> None:
    client = pop3.login()
    client.dele(1)
    client.dele(2)
    hang_up_and_wait(client)
    assert len(Maildir(pop3.mailbox).keys()) == 2
    client = pop3.login()  # and the lock was released
    assert client.stat()[0] == 2
    client.quit()


def test_second_session_is_refused_while_the_first_is_open(pop3: Pop3) -> None:
    first = pop3.login()
    second = pop3.client()
    second.user("betty")
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[IN-USE\]"):
        second.pass_(PASSWORD)
    first.quit()
    second.user("betty")
    assert second.pass_(PASSWORD).startswith(b"+OK Pass accepted")
    second.quit()


def test_wrong_password_is_refused_after_a_growing_delay(pop3: Pop3, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.pop3")
    client = pop3.client()
    elapsed = []
    for _ in range(2):
        client.user("betty")
        started = time.monotonic()
        with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
            client.pass_("not the password")
        elapsed.append(time.monotonic() - started)
    assert elapsed[0] >= AUTH_DELAY
    assert elapsed[1] >= 2 * AUTH_DELAY
    client.user("betty")
    assert client.pass_(PASSWORD).startswith(b"+OK")
    client.quit()
    assert "PASS ****" in caplog.text
    assert "not the password" not in caplog.text and PASSWORD not in caplog.text


def test_a_delayed_login_does_not_hold_up_other_clients(serve: Serve) -> None:
    delay = 1.0  # a margin for a busy CI machine: the other login takes a few ms
    lab: Pop3 = serve(Limits(auth_delay_first=delay))
    guesser = lab.raw()
    started = time.monotonic()
    guesser.sendall(b"USER betty\r\nPASS wrong\r\n")
    assert read_line(guesser) == b"+OK User accepted\r\n"
    other = lab.login()  # served while the guesser waits
    assert other.stat() == (0, 0)
    other.quit()
    assert time.monotonic() - started < delay
    assert read_line(guesser).startswith(b"-ERR [AUTH]")
    assert time.monotonic() - started >= delay
    guesser.close()


def test_garbage_and_oversized_lines_get_err_and_the_session_goes_on(pop3: Pop3) -> None:
    sock = pop3.raw()
    sock.sendall(b"\x00\xff\xfe garbage\r\n")
    assert read_line(sock) == b"-ERR unknown command\r\n"
    sock.sendall(b"USER " + b"A" * 100_000 + b"\r\n")
    assert read_line(sock) == b"-ERR line too long (at most 255 octets)\r\n"
    sock.sendall(b"STAT\r\n\r\nUSER betty\r\n" + f"PASS {PASSWORD}\r\n".encode() + b"STAT\r\nQUIT\r\n")
    assert read_line(sock) == b"-ERR STAT is not allowed before login\r\n"
    assert read_line(sock) == b"-ERR unknown command\r\n"
    assert read_line(sock) == b"+OK User accepted\r\n"
    assert read_line(sock).startswith(b"+OK Pass accepted")
    assert read_line(sock) == f"+OK 2 {TOTAL}\r\n".encode()
    assert read_until_closed(sock) == b"+OK Bye-bye\r\n"
    sock.close()
    client = pop3.login()  # and a normal session after all that
    assert client.stat()[0] == 2
    client.quit()


def test_a_run_of_bad_commands_ends_the_connection(pop3: Pop3) -> None:
    sock = pop3.raw()
    sock.sendall(b"BOGUS\r\n" * (MAX_BAD_COMMANDS + 5))
    replies = read_until_closed(sock).splitlines()
    assert replies == [b"-ERR unknown command"] * (MAX_BAD_COMMANDS - 1) + [
        b"-ERR too many bad commands, closing connection"]
    sock.close()


def test_idle_client_is_logged_out_without_a_reply_and_nothing_deleted(serve: Serve) -> None:
    lab: Pop3 = serve(Limits(idle_timeout=0.3))
    deliver(lab.mailbox, MESSAGE_1)
    sock = lab.raw()
    sock.sendall(b"USER betty\r\n" + f"PASS {PASSWORD}\r\n".encode() + b"DELE 1\r\n")
    assert read_line(sock) == b"+OK User accepted\r\n"
    assert read_line(sock).startswith(b"+OK Pass accepted")
    assert read_line(sock) == b"+OK message 1 deleted\r\n"
    assert read_until_closed(sock) == b""  # RFC 1939 §3: autologout sends nothing
    sock.close()
    assert len(Maildir(lab.mailbox).keys()) == 1
    client = lab.login()
    client.quit()


def test_one_log_line_per_command(pop3: Pop3, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.pop3")
    client = pop3.login()
    client.stat()
    client.quit()
    lines = [r.getMessage() for r in caplog.records if r.name == "services.pop3" and "->" in r.getMessage()]
    assert [line.split(" ", 3)[3] for line in lines] == [
        "USER betty -> +OK User accepted",
        f"PASS **** -> +OK Pass accepted, 2 messages ({TOTAL} octets)",
        f"STAT -> +OK 2 {TOTAL}",
        "QUIT -> +OK Bye-bye (UPDATE: 0 messages removed)",
    ]


def test_our_own_bug_gets_a_generic_err_and_a_logged_traceback(
        pop3: Pop3, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken_size(self: Maildir, key: str) -> int | None:
        raise RuntimeError("bug in the mailbox code")

    monkeypatch.setattr(Maildir, "wire_size", broken_size)
    sock = pop3.raw()
    sock.sendall(b"USER betty\r\n" + f"PASS {PASSWORD}\r\n".encode())
    assert read_line(sock) == b"+OK User accepted\r\n"
    assert read_until_closed(sock) == b"-ERR [SYS/TEMP] internal server error, closing connection\r\n"
    sock.close()
    assert "RuntimeError: bug in the mailbox code" in caplog.text  # the traceback, in the log only
    monkeypatch.undo()
    client = pop3.login()  # the server lives on, and the failed session released the lock
    assert client.stat()[0] == 2
    client.quit()
