"""The IMAP server on 127.0.0.1, port 0, driven by imaplib, imapclient and raw sockets."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imapclient
import pytest

from services.imap import server as imap_server
from services.imap.core import Limits
from services.mailstore import deliver, mailbox_dir
from services.pop3 import server as pop3_server
from tests.labconfig import lab_config
from tests.support import BackgroundLoop, server_closer

PASSWORD = "s3cret pw"
AUTH_DELAY = 0.2
TIMEOUT = 10.0
CONFIG = lab_config("mail", addresses={"mail": "127.0.0.1", "smtp": "127.0.0.2"}, subnet="127.0.0.0/8",
                    nameserver="127.0.0.1", passwords={"betty@stevenchoy.example": PASSWORD})
MESSAGE_1 = b"From: Andy <andy@ouhk.example>\r\nTo: betty@stevenchoy.example\r\nSubject: one\r\n\r\nHello Betty.\r\n"
MESSAGE_2 = b"Subject: two\r\n\r\nline 1\r\n.starts with a dot\r\nline 3\r\n"
FAST = Limits(auth_delay_first=AUTH_DELAY, auth_delay_max=4 * AUTH_DELAY, poll_interval=0.1)


@dataclass
class Lab:
    background: BackgroundLoop
    root: Path
    imap_port: int
    pop3_port: int
    mailbox: Path
    opened: list[imaplib.IMAP4 | imapclient.IMAPClient] = field(default_factory=list)

    def client(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=TIMEOUT)
        self.opened.append(client)
        return client

    def login(self) -> imaplib.IMAP4:
        client = self.client()
        client.login("betty", PASSWORD)
        return client


Serve = Callable[[], Lab]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    background = BackgroundLoop()
    servers: list[asyncio.Server] = []
    labs: list[Lab] = []

    def start() -> Lab:
        imap = background.run(imap_server.start(CONFIG, mail_root=tmp_path, host="127.0.0.1", port=0, limits=FAST))
        pop3 = background.run(pop3_server.start(CONFIG, mail_root=tmp_path, host="127.0.0.1", port=0))
        servers.extend([imap, pop3])
        labs.append(Lab(background, tmp_path, imap.sockets[0].getsockname()[1], pop3.sockets[0].getsockname()[1],
                        mailbox_dir(tmp_path, "betty@stevenchoy.example")))
        return labs[-1]

    yield start
    for lab in labs:
        for opened in lab.opened:
            try:
                opened.shutdown()
            except Exception:  # noqa: BLE001 - already logged out or closed
                pass
    background.close([server_closer(s) for s in servers])


@pytest.fixture
def lab(serve: Serve) -> Lab:
    started = serve()
    deliver(started.mailbox, MESSAGE_1)
    deliver(started.mailbox, MESSAGE_2)
    return started


def test_login_select_fetch_whole_and_partial(lab: Lab) -> None:
    client = lab.client()
    assert b"IMAP4rev1" in client.welcome and b"IDLE" in client.welcome
    assert client.login("betty", PASSWORD)[0] == "OK"
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"2"])
    assert client.untagged_responses.get("UIDVALIDITY")
    typ, data = client.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == MESSAGE_1
    assert f"RFC822.SIZE {len(MESSAGE_1)}".encode() in data[0][0]
    typ, data = client.fetch("2", "(BODY[]<0.12>)")
    assert data[0][1] == MESSAGE_2[:12]
    typ, data = client.fetch("2", "(FLAGS)")
    assert b"\\Seen" in data[0]  # BODY[] set it
    typ, data = client.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]  # BODY.PEEK did not
    client.logout()


def test_wrong_password_is_answered_late_with_authenticationfailed(lab: Lab) -> None:
    client = lab.client()
    started = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login("betty", "wrong")
    assert time.monotonic() - started >= AUTH_DELAY * 0.9
    assert client.login("betty", PASSWORD)[0] == "OK"
    client.logout()


def test_store_copy_move_expunge_and_uid_commands(lab: Lab) -> None:
    client = lab.login()
    client.select("INBOX")
    assert client.create("Archive")[0] == "OK"
    typ, data = client.uid("COPY", "1", "Archive")
    assert typ == "OK"
    assert re.fullmatch(rb"\d+ 1 1", client.untagged_responses["COPYUID"][0])  # imaplib keeps the code's data
    typ, data = client.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0]
    typ, data = client.uid("SEARCH", None, "FLAGGED")
    assert data == [b"2"]
    typ, data = client.uid("MOVE", "2", "Archive")
    assert typ == "OK"
    typ, data = client.select("INBOX")
    assert data == [b"1"]
    client.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = client.expunge()
    assert data == [b"1"]
    typ, data = client.select("Archive")
    assert data == [b"2"]
    typ, data = client.fetch("1:2", "(UID FLAGS)")
    assert b"\\Flagged" in data[1]
    typ, data = client.list()
    assert {line.rsplit(b" ", 1)[1] for line in data} == {b'"INBOX"', b'"Archive"'}
    client.logout()


def test_append_is_stored_with_flags_and_uid(lab: Lab) -> None:
    client = lab.login()
    now = imaplib.Time2Internaldate(time.time())
    typ, data = client.append("INBOX", "(\\Seen)", now, b"Subject: sent\r\n\r\nx\r\n")
    assert typ == "OK" and b"APPENDUID" in data[0]
    client.select("INBOX", readonly=True)
    typ, data = client.fetch("3", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: sent\r\n\r\n"
    assert b"\\Seen" in data[0][0]
    assert client.append("Nowhere", None, None, b"x\r\n")[0] == "NO"
    client.logout()


def test_a_delivery_reaches_an_idling_client_within_a_second(lab: Lab) -> None:
    with socket.create_connection(("127.0.0.1", lab.imap_port), timeout=TIMEOUT) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f'a LOGIN betty "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
        while not reader.readline().startswith(b"+ "):
            pass
        delivered = time.monotonic()
        deliver(lab.mailbox, b"Subject: three\r\n\r\n3\r\n")
        assert reader.readline() == b"* 3 EXISTS\r\n"
        assert time.monotonic() - delivered < 1.0
        sock.sendall(b"DONE\r\nd LOGOUT\r\n")
        rest = b""
        while b"d OK" not in rest:
            rest += reader.readline()
        assert b"c OK IDLE terminated" in rest


def test_restart_keeps_uids_uidvalidity_and_flags(serve: Serve) -> None:
    lab = serve()
    deliver(lab.mailbox, MESSAGE_1)
    deliver(lab.mailbox, MESSAGE_2)
    client = lab.login()
    client.select("INBOX")
    validity = client.untagged_responses["UIDVALIDITY"][0]
    client.store("2", "+FLAGS", "(\\Answered)")
    client.logout()
    again = serve()  # a second server on the same store: what a restart finds
    client = again.login()
    client.select("INBOX")
    assert client.untagged_responses["UIDVALIDITY"][0] == validity
    typ, data = client.fetch("1:2", "(UID FLAGS)")
    assert b"UID 1 " in data[0] and b"UID 2 " in data[1]
    assert b"\\Answered" in data[1]
    client.logout()


def test_pop3_dele_and_quit_is_an_expunge_for_imap(lab: Lab) -> None:
    client = lab.login()
    client.select("INBOX")
    pop = poplib.POP3("127.0.0.1", lab.pop3_port, timeout=TIMEOUT)  # not locked out by the IMAP session
    pop.user("betty")
    pop.pass_(PASSWORD)
    pop.dele(1)
    pop.quit()
    typ, data = client.noop()
    assert client.untagged_responses.get("EXPUNGE") == [b"1"]
    typ, data = client.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == MESSAGE_2
    client.logout()


def test_other_sessions_learn_of_expunges_and_flags_at_their_next_command(lab: Lab) -> None:
    one, two = lab.login(), lab.login()
    one.select("INBOX")
    two.select("INBOX")
    one.store("1", "+FLAGS", "(\\Deleted)")
    one.expunge()
    two.noop()
    assert two.untagged_responses.get("EXPUNGE") == [b"1"]
    one.logout()
    two.logout()


def test_imapclient_reads_flags_and_moves(lab: Lab) -> None:
    client = imapclient.IMAPClient("127.0.0.1", port=lab.imap_port, ssl=False, timeout=TIMEOUT)
    lab.opened.append(client)
    client.login("betty", PASSWORD)
    assert client.has_capability("MOVE") and client.has_capability("UIDPLUS")
    client.create_folder("Trash")
    info = client.select_folder("INBOX")
    assert info[b"EXISTS"] == 2 and info[b"UIDNEXT"] == 3
    fetched = client.fetch([1, 2], ["ENVELOPE", "RFC822.SIZE", "BODYSTRUCTURE"])
    assert fetched[1][b"ENVELOPE"].subject == b"one"
    assert fetched[1][b"RFC822.SIZE"] == len(MESSAGE_1)
    client.add_flags([1], [imapclient.SEEN])
    assert imapclient.SEEN in client.get_flags([1])[1]
    client.move([2], "Trash")
    assert client.search(["ALL"]) == [1]
    assert client.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"] == 1
    assert client.namespace().personal == (("", "."),)
    client.logout()


def test_garbage_gets_bad_and_a_flood_gets_bye(lab: Lab) -> None:
    with socket.create_connection(("127.0.0.1", lab.imap_port), timeout=TIMEOUT) as sock:
        sock.recv(4096)
        sock.sendall(b"a1 FROB\r\n" * 12)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
    assert got.count(b"BAD") >= 9 and b"* BYE" in got and b"Traceback" not in got
