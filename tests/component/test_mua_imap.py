"""`mail fetch|list|read --imap` against the lab's own IMAP (and POP3) servers on 127.0.0.1.

Each test runs ``main([...])`` as a student's shell would, then looks at the server's Maildir, at
the local one, and at what POP3 sees of the same mailbox afterwards.
"""

from __future__ import annotations

import imaplib
import json
import logging
import poplib
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl import tlsca
from services import sessionserver, tls
from services.accounts import AccountAuthenticator
from services.imap import server as imap_server
from services.imap.core import Limits as ImapLimits
from services.imap.core import Session
from services.imap.store import Folder, Mailboxes
from services.mailstore import deliver, mailbox_dir
from services.mua import imapfetch
from services.mua.cli import main
from services.mua.imapfetch import ImapError, Server, account_key, uid_set
from services.mua.local import LocalMailbox
from services.mua.security import IMPLICIT, STARTTLS
from services.pop3 import server as pop3_server
from services.pop3.core import Limits as Pop3Limits
from tests.labconfig import lab_config
from tests.support import BackgroundLoop, server_closer

BETTY = "betty@stevenchoy.example"
PASSWORD = "s3cret pw"
TIMEOUT = 10.0
CONFIG = lab_config("mail", addresses={"mail": "127.0.0.1", "smtp": "127.0.0.2"}, subnet="127.0.0.0/8",
                    nameserver="127.0.0.1", passwords={BETTY: PASSWORD})
FIRST = b"From: Andy <andy@ouhk.example>\nTo: betty@stevenchoy.example\nSubject: First message\n\nHello Betty.\n"
SECOND = b"From: Andy <andy@ouhk.example>\nSubject: Second message\n\nAnd the second.\n"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@dataclass
class Servers:
    imap_port: int
    pop3_port: int
    root: Path

    @property
    def mailbox(self) -> Path:
        return mailbox_dir(self.root, BETTY)

    def deliver(self, message: bytes) -> None:
        deliver(self.mailbox, message)

    def names(self) -> list[str]:
        """The server's message files, with their Maildir flags (":2,S": \\Seen)."""
        return sorted(p.name for sub in ("new", "cur") for p in (self.mailbox / sub).iterdir())

    def infos(self) -> list[str]:
        """The flag letters of each message file, sorted ("" for none, or still in new/)."""
        return sorted(n.partition(":2,")[2] for n in self.names())

    def pop3_listing(self) -> int:
        pop = poplib.POP3("127.0.0.1", self.pop3_port, timeout=TIMEOUT)
        try:
            pop.user(BETTY)
            pop.pass_(PASSWORD)
            count, _ = pop.stat()
            pop.quit()
            return count
        finally:
            pop.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    background = BackgroundLoop()
    root = tmp_path / "mail"
    imap = background.run(imap_server.start(CONFIG, mail_root=root, host="127.0.0.1", port=0,
                                            limits=ImapLimits(auth_delay_first=0.01, auth_delay_max=0.01)))
    pop3 = background.run(pop3_server.start(CONFIG, mail_root=root, host="127.0.0.1", port=0,
                                            limits=Pop3Limits(auth_delay_first=0.01, auth_delay_max=0.01)))
    found = Servers(imap.sockets[0].getsockname()[1], pop3.sockets[0].getsockname()[1], root)
    found.deliver(FIRST)
    found.deliver(SECOND)
    yield found
    background.close([server_closer(imap), server_closer(pop3)])


@pytest.fixture
def mail(capsys: pytest.CaptureFixture[str], servers: Servers, tmp_path: Path) -> Callable[..., Run]:
    """``mail COMMAND --imap ...`` as betty, against the test's servers, into tmp_path/Maildir."""
    def run(command: str, *argv: str, password: str = PASSWORD) -> Run:
        code = main([command, "--imap", "--imap-server", f"127.0.0.1:{servers.imap_port}", "--user", BETTY,
                     "--password", password, "--maildir", str(tmp_path / "Maildir"), "--no-tls", *argv])
        out, err = capsys.readouterr()
        return Run(code, out, err)
    return run


def local(tmp_path: Path) -> list[bytes]:
    store = LocalMailbox(tmp_path / "Maildir")
    return [store.read(e) for e in store.entries()]


def test_fetch_copies_new_mail_and_leaves_it_seen_on_the_server(mail: Callable[..., Run], servers: Servers,
                                                                  tmp_path: Path) -> None:
    first = mail("fetch")
    assert (first.code, first.err) == (0, "")
    assert "fetched 2 new messages by IMAP" in first.out and "2 on the server, kept there" in first.out
    assert local(tmp_path) == [FIRST, SECOND]  # LF line ends, as POP3's fetch stores them
    names = servers.names()
    assert len(names) == 2 and all(n.endswith(":2,S") for n in names), names  # BODY[] set \Seen

    again = mail("fetch")
    assert again.code == 0 and "fetched 0 new messages" in again.out
    servers.deliver(b"Subject: Third\n\nthree\n")
    third = mail("fetch")
    assert "fetched 1 new message by IMAP" in third.out and "3 on the server" in third.out
    assert len(local(tmp_path)) == 3
    assert servers.pop3_listing() == 3  # IMAP kept them: POP3 afterwards still sees every one

    remembered = LocalMailbox(tmp_path / "Maildir").seen(account_key(BETTY, "127.0.0.1", "INBOX"))
    validity = {u.partition("/")[0] for u in remembered}
    assert len(remembered) == 3 and len(validity) == 1  # UIDVALIDITY/UID, one UIDVALIDITY


def test_what_another_client_only_marked_deleted_stays(mail: Callable[..., Run], servers: Servers) -> None:
    """No CLOSE: it would expunge every \\Deleted message of the folder (RFC 3501 §6.4.2)."""
    client = imaplib.IMAP4("127.0.0.1", servers.imap_port, timeout=TIMEOUT)
    client.login(BETTY, PASSWORD)
    client.select("INBOX")
    client.store("2", "+FLAGS", "(\\Deleted)")
    client.logout()
    assert mail("fetch").code == 0 and mail("read", "1").code == 0
    assert servers.infos() == ["S", "ST"] and servers.pop3_listing() == 2


def test_a_new_uidvalidity_makes_every_message_new_again(mail: Callable[..., Run], servers: Servers,
                                                          tmp_path: Path) -> None:
    assert "fetched 2 new" in mail("fetch").out
    store = LocalMailbox(tmp_path / "Maildir")
    key = account_key(BETTY, "127.0.0.1", "INBOX")
    # As after the mailbox was recreated: the same UIDs, remembered under another UIDVALIDITY.
    store.remember(key, {f"1/{u.partition('/')[2]}" for u in store.seen(key)})
    assert "fetched 2 new" in mail("fetch").out
    assert len(local(tmp_path)) == 4


def test_fetch_delete_flags_deleted_and_expunges(mail: Callable[..., Run], servers: Servers, tmp_path: Path) -> None:
    r = mail("fetch", "--delete")
    assert r.code == 0, r.err
    assert "fetched 2 new messages" in r.out and "2 deleted there, 0 left" in r.out
    assert servers.names() == []
    assert local(tmp_path) == [FIRST, SECOND]
    assert servers.pop3_listing() == 0


def test_list_shows_the_folders_and_the_flags_changing_none(mail: Callable[..., Run], servers: Servers) -> None:
    client = imaplib.IMAP4("127.0.0.1", servers.imap_port, timeout=TIMEOUT)
    client.login(BETTY, PASSWORD)
    client.create("Archive")
    client.select("INBOX")
    client.store("2", "+FLAGS", "(\\Seen \\Flagged)")
    client.logout()

    r = mail("list")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("folders: INBOX") and "Archive" in lines[0]
    first, second = lines[-2:]
    assert first.split()[:2] == ["1", "-"] and "First message" in first
    assert "\\Seen" in second and "\\Flagged" in second and "Second message" in second

    doc = json.loads(mail("list", "--json").out)
    assert {f["name"] for f in doc["folders"]} == {"INBOX", "Archive"}
    assert [(m["number"], m["subject"], sorted(m["flags"])) for m in doc["messages"]] == [
        (1, "First message", []), (2, "Second message", ["\\Flagged", "\\Seen"])]
    assert doc["messages"][0]["uid"] < doc["messages"][1]["uid"]
    assert servers.infos() == ["", "FS"]  # EXAMINE and BODY.PEEK: message 1 still unseen

    empty = mail("list", "--folder", "Archive")
    assert empty.code == 0 and "no messages in Archive on the server" in empty.out


def test_read_says_whether_it_peeked(mail: Callable[..., Run], servers: Servers) -> None:
    peeked = mail("read", "1", "--peek")
    assert peeked.code == 0, peeked.err
    assert "Subject: First message" in peeked.out and "Hello Betty." in peeked.out
    assert "BODY.PEEK[]" in peeked.err and "unchanged" in peeked.err
    assert servers.infos() == ["", ""]

    read = mail("read", "1", "--json")
    assert read.code == 0, read.err
    doc = json.loads(read.out)
    assert doc["peek"] is False and "\\Seen" in doc["flags"] and doc["folder"] == "INBOX"
    assert "BODY[]" in read.err and "\\Seen" in read.err
    assert servers.infos() == ["", "S"]

    raw = mail("read", "2", "--raw", "--peek")
    assert raw.out.replace("\r\n", "\n") == SECOND.decode()


def test_errors_say_what_to_do(mail: Callable[..., Run], servers: Servers) -> None:
    wrong = mail("fetch", password="wrong")
    assert wrong.code == 1 and wrong.out == ""
    assert "refused the login" in wrong.err and "AUTHENTICATIONFAILED" in wrong.err
    assert "check --user and --password" in wrong.err
    assert wrong.err.count("\n") == 1 and "Traceback" not in wrong.err

    nofolder = mail("list", "--folder", "Nowhere")
    assert nofolder.code == 1 and "cannot open the folder 'Nowhere'" in nofolder.err
    assert "`mail list --imap`" in nofolder.err

    beyond = mail("read", "7")
    assert beyond.code == 1 and "no message 7 in INBOX" in beyond.err and "messages 1 to 2" in beyond.err


def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["fetch", "--imap", "--imap-server", f"127.0.0.1:{port}", "--user", BETTY, "--password", "x",
                 "--maildir", str(tmp_path / "Maildir"), "--no-tls"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot connect to the IMAP server" in err and "labctl status" in err


def test_uid_set_writes_ranges() -> None:
    assert uid_set([3, 1, 2, 7, 9, 10, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


# -- implicit TLS (993) with the lab CA: the session shell's TLS under the IMAP core -----------------


@pytest.fixture
def imaps(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """The IMAP core behind implicit TLS on 127.0.0.1 (a leaf of a test CA naming that address);
    (the port, the CA file, the mail root)."""
    ca = tlsca.make_ca("t", ["stevenchoy.example"])
    leaf = tlsca.make_leaf(ca, "mail.stevenchoy.example", ["127.0.0.1"])
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    (tmp_path / "cert.pem").write_text(leaf.cert_pem + ca.cert_pem)
    (tmp_path / "key.pem").write_text(leaf.key_pem)
    root = tmp_path / "mail"
    deliver(mailbox_dir(root, BETTY), FIRST)
    authenticator = AccountAuthenticator(CONFIG.local_domains)
    folders: dict[Path, Folder] = {}
    limits = ImapLimits(auth_delay_first=0.01, auth_delay_max=0.01)

    def session() -> Session:
        return Session(CONFIG.this.fqdn, authenticator, lambda a: Mailboxes(mailbox_dir(root, a), folders), limits)

    def context() -> ssl.SSLContext:
        return tls.server_context(tmp_path / "cert.pem", tmp_path / "key.pem", keylog_dir=None)

    background = BackgroundLoop()
    server = background.run(sessionserver.listen("imap", logging.getLogger("test.imaps"), CONFIG, session, 10.0,
                                                 host="127.0.0.1", port=0, read_chunk=65536, tls=context,
                                                 implicit=True))
    yield server.sockets[0].getsockname()[1], tmp_path / "ca.pem", root
    background.close([server_closer(server)])


def test_fetch_over_implicit_tls_verifies_the_server(imaps: tuple[int, Path, Path], tmp_path: Path) -> None:
    port, ca, root = imaps
    store = LocalMailbox(tmp_path / "Maildir")
    trusted = Server("127.0.0.1", port, BETTY, PASSWORD, IMPLICIT, tls.client_context(ca=ca, keylog_dir=None))
    outcome = imapfetch.fetch(trusted, store)
    assert len(outcome.fetched) == 1 and local(tmp_path) == [FIRST]

    stranger = Server("127.0.0.1", port, BETTY, PASSWORD, IMPLICIT,
                      tls.client_context(ca=tmp_path / "no-such-ca.pem", keylog_dir=None))
    with pytest.raises(ImapError, match=r"the certificate of 127\.0\.0\.1 does not verify .* fetch with --no-verify"):
        imapfetch.fetch(stranger, store)
    unchecked = Server("127.0.0.1", port, BETTY, PASSWORD, IMPLICIT,
                       tls.client_context(verify=False, keylog_dir=None))
    assert imapfetch.fetch(unchecked, store).fetched == []  # the same mailbox as before: nothing new


def test_starttls_where_the_server_offers_none_fails_before_the_password(servers: Servers) -> None:
    plain = Server("127.0.0.1", servers.imap_port, BETTY, PASSWORD, STARTTLS, tls.client_context(keylog_dir=None))
    with pytest.raises(ImapError, match="offers no STARTTLS; is the lab up with TLS"):
        imapfetch.listing(plain)
