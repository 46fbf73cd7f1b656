"""The `mail` command against real servers on 127.0.0.1: an aiosmtpd sink and the lab's POP3 server.

Each test runs ``main([...])`` as a student's shell would, and checks what crossed the wire (the
sink keeps every envelope), what landed in the local Maildir, and what was printed.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import poplib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.config import LabConfig, MuaSettings
from services.mailstore import deliver, mailbox_dir
from services.mua.cli import main
from services.mua.local import SEEN_FILE
from services.pop3 import server as pop3_server
from services.pop3.core import Limits
from tests.labconfig import lab_config, password
from tests.support import BackgroundLoop, server_closer

ANDY, BETTY = "andy@ouhk.example", "betty@stevenchoy.example"
ANDY_PW, BETTY_PW = password(ANDY), password(BETTY)
UNKNOWN = "nobody@stevenchoy.example"
TIMEOUT = 10.0
QUEUE_ID = "j8U9hrH01679"

# Random-looking binary, with every byte value and the bytes that trip line-based code.
BLOB = bytes(range(256)) * 4 + b"\r\n.\r\n\x00\xff" + os.urandom(3000)


def config(smtp: str = "smtp.ouhk.example", pop3: str = "smtp.ouhk.example", me: str = "andy") -> LabConfig:
    mua = MuaSettings(user=ANDY, smtp=smtp, pop3=pop3) if me == "andy" else None
    return lab_config(me, addresses={"andy": "127.0.0.10", "mail": "127.0.0.110"}, subnet="127.0.0.0/8",
                      nameserver="127.0.0.1", mua=mua)


def parse(data: bytes) -> EmailMessage:
    return BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(data)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def mail(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def run(*argv: str) -> Run:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)
    return run


# -- an SMTP sink --------------------------------------------------------------------------------


@dataclass
class Sink:
    """What the MTA would have queued: one (sender, recipients, content) per accepted message."""

    port: int = 0
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.lower() == UNKNOWN:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return f"250 2.0.0 {QUEUE_ID} Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        ok = (data.login, data.password) == (ANDY.encode(), ANDY_PW.encode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535


class EphemeralController(Controller):
    """aiosmtpd's Controller on port 0: it learns the port the kernel chose before its readiness
    check connects to it."""

    def _create_server(self) -> Any:
        async def create() -> asyncio.Server:
            server = await self.loop.create_server(self._factory_invoker, host=self.hostname, port=0)
            self.port = server.sockets[0].getsockname()[1]
            return server
        return create()


@pytest.fixture
def sink() -> Iterator[Sink]:
    handler = Sink()
    controller = EphemeralController(handler, hostname="127.0.0.1", authenticator=handler.authenticate,
                                     auth_require_tls=False)
    controller.start()  # type: ignore[no-untyped-call]
    handler.port = controller.port
    yield handler
    controller.stop()


# -- the lab's POP3 server -------------------------------------------------------------------------


@dataclass
class Pop3:
    port: int
    root: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mailbox(self) -> Path:
        return mailbox_dir(self.root, BETTY)

    def deliver(self, message: bytes) -> None:
        deliver(self.mailbox, message)

    def on_server(self) -> int:
        return sum(1 for sub in ("new", "cur") for _ in (self.mailbox / sub).iterdir())


@pytest.fixture
def pop3(tmp_path: Path) -> Iterator[Pop3]:
    background = BackgroundLoop()
    root = tmp_path / "mail"
    coro = pop3_server.start(config(me="mail"), mail_root=root, host="127.0.0.1", port=0,
                             limits=Limits(auth_delay_first=0.01, auth_delay_max=0.01))
    server = background.run(coro)
    yield Pop3(server.sockets[0].getsockname()[1], root)
    background.close([server_closer(server)])


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    return tmp_path / "Maildir"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here now


# -- send ------------------------------------------------------------------------------------------


def test_send_builds_a_mime_message_and_prints_the_servers_reply(
        mail: Callable[..., Run], sink: Sink, tmp_path: Path) -> None:
    attachment = tmp_path / "scan 01.pdf"
    attachment.write_bytes(BLOB)
    r = mail("send", "--user", ANDY, "--smtp", sink.address, "--to", BETTY, "--cc", "Carol <carol@ouhk.example>",
             "--subject", "Grüße aus 香港", "--body", "Hi Betty,\nthe scan is attached.\n", "--attach", str(attachment))
    assert (r.code, r.err) == (0, "")
    reply, msgid_line = r.out.splitlines()
    assert reply == f"250 2.0.0 {QUEUE_ID} Message accepted for delivery"
    assert msgid_line.startswith("Message-ID: <") and msgid_line.endswith("@ouhk.example>")

    ((sender, rcpts, content),) = sink.received
    assert (sender, rcpts) == (ANDY, [BETTY, "carol@ouhk.example"])
    assert content.isascii()
    msg = parse(content)
    assert msg["Subject"] == "Grüße aus 香港"
    assert msg["Message-ID"] == msgid_line.removeprefix("Message-ID: ")
    assert msg["From"] == ANDY and msg["To"] == BETTY and msg["Cc"] == "Carol <carol@ouhk.example>"
    assert msg["Date"] and msg["MIME-Version"] == "1.0"
    body, att = msg.iter_parts()
    assert body.get_content() == "Hi Betty,\r\nthe scan is attached.\r\n"  # CRLF, as on the wire
    assert (att.get_content_type(), att.get_filename(), att["Content-Transfer-Encoding"]) == (
        "application/pdf", "scan 01.pdf", "base64")
    assert att.get_content() == BLOB


def test_body_from_a_file_or_standard_input(mail: Callable[..., Run], sink: Sink, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    body_file = tmp_path / "body.txt"
    body_file.write_text("from a file: ü\n", encoding="utf-8")
    assert mail("send", "--user", ANDY, "--smtp", sink.address, "--to", BETTY, "--subject", "f",
                "--body-file", str(body_file)).code == 0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"typed at the terminal\n.\nend\n")))
    assert mail("send", "--user", ANDY, "--smtp", sink.address, "--to", BETTY, "--subject", "s").code == 0
    first, second = (parse(content).get_content() for _, _, content in sink.received)
    assert first == "from a file: ü\r\n"
    assert second == "typed at the terminal\r\n.\r\nend\r\n"  # the lone dot is stuffed on the wire, not lost


def test_a_refused_recipient_is_reported_with_the_servers_words(mail: Callable[..., Run], sink: Sink) -> None:
    r = mail("send", "--user", ANDY, "--smtp", sink.address, "--to", UNKNOWN, "--subject", "x", "--body", "x")
    assert r.code == 1 and r.out == ""
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert f"550 5.1.1 <{UNKNOWN}>: Recipient address rejected: User unknown" in r.err
    assert sink.received == []  # no DATA when nobody would get it


def test_partly_refused_sends_to_the_rest_and_fails(mail: Callable[..., Run], sink: Sink) -> None:
    r = mail("send", "--user", ANDY, "--smtp", sink.address, "--to", BETTY, "--to", UNKNOWN,
             "--subject", "x", "--body", "x")
    assert r.code == 1
    assert r.out.startswith(f"250 2.0.0 {QUEUE_ID}")
    assert f"{UNKNOWN} was refused: 550 5.1.1" in r.err
    assert [rcpts for _, rcpts, _ in sink.received] == [[BETTY]]


def test_submission_logs_in_with_the_users_password(mail: Callable[..., Run], sink: Sink) -> None:
    ok = mail("send", "--submission", "--user", ANDY, "--password", ANDY_PW, "--smtp", sink.address,
              "--to", BETTY, "--subject", "x", "--body", "x")
    assert ok.code == 0, ok.err
    bad = mail("send", "--submission", "--user", ANDY, "--password", "wrong", "--smtp", sink.address,
               "--to", BETTY, "--subject", "x", "--body", "x")
    assert bad.code == 1 and "535" in bad.err and "--password" in bad.err
    assert sink.logins == [(ANDY.encode(), ANDY_PW.encode()), (ANDY.encode(), b"wrong")]
    assert len(sink.received) == 1


def test_settings_and_password_come_from_the_lab_config(mail: Callable[..., Run], sink: Sink,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    path.write_text(config(smtp=sink.address).to_json())
    r = mail("send", "--config", str(path), "--submission", "--to", BETTY, "--subject", "cfg", "--body", "x")
    assert r.code == 0, r.err
    assert sink.logins == [(ANDY.encode(), ANDY_PW.encode())]
    assert sink.received[0][0] == ANDY


def test_a_recipient_outside_the_sealed_lab_is_refused_before_submitting(mail: Callable[..., Run], sink: Sink,
                                                                          tmp_path: Path) -> None:
    """It was accepted, then retried for ten minutes on "no name server answered (SERVFAIL or REFUSED)"."""
    path = tmp_path / "lab.json"
    path.write_text(config(smtp=sink.address).to_json())
    r = mail("send", "--config", str(path), "--to", BETTY, "--to", "Someone <someone@Gmail.com>",
             "--subject", "x", "--body", "x")
    assert r.code == 1
    assert ("someone@gmail.com: gmail.com is outside the sealed lab: the lab DNS serves only lab.example, "
            "ouhk.example, stevenchoy.example") in r.err
    assert "nothing was sent (write to a lab user, say andy@ouhk.example, betty@stevenchoy.example)" in r.err
    assert sink.received == []


def test_no_config_and_no_options_says_what_to_give(mail: Callable[..., Run], tmp_path: Path) -> None:
    r = mail("send", "--config", str(tmp_path / "absent.json"), "--to", BETTY, "--subject", "x", "--body", "x")
    assert r.code == 1 and "labctl up" in r.err and "--user, --smtp" in r.err


def test_unreachable_server_and_bad_input_are_one_line_errors(mail: Callable[..., Run], tmp_path: Path) -> None:
    base = ["send", "--user", ANDY, "--subject", "x", "--body", "x"]
    for argv, words in [
        ([*base, "--smtp", f"127.0.0.1:{closed_port()}", "--to", BETTY], "cannot connect"),
        ([*base, "--smtp", "127.0.0.1:99999", "--to", BETTY], "bad server"),
        ([*base, "--smtp", "127.0.0.1:25", "--to", "betty"], "not a mail address"),
        ([*base, "--smtp", "127.0.0.1:25", "--to", BETTY, "--attach", str(tmp_path / "none")], "cannot read"),
    ]:
        r = mail(*argv)
        assert r.code == 1 and words in r.err and r.err.count("\n") == 1, r.err


def test_usage_errors_exit_2(mail: Callable[..., Run]) -> None:
    assert mail("send", "--subject", "no recipient").code == 2
    assert mail("read", "one").code == 2
    assert mail("read", "1", "--raw", "--tree").code == 2
    assert mail("--help").code == 0


# -- fetch, list, read, save -------------------------------------------------------------------------


def fetch(mail: Callable[..., Run], pop3: Pop3, maildir: Path, *extra: str) -> Run:
    return mail("fetch", "--user", BETTY, "--password", BETTY_PW, "--pop3", pop3.address,
                "--maildir", str(maildir), *extra)


def simple(n: int) -> bytes:
    return f"From: {ANDY}\nTo: {BETTY}\nSubject: number {n}\nDate: Sat, 09 May 2026 15:3{n}:00 +0800\n\n" \
           f"Message {n}.\n.a line that starts with a dot\n".encode()


def test_fetch_takes_only_new_messages_and_keeps_them_on_the_server(
        mail: Callable[..., Run], pop3: Pop3, maildir: Path) -> None:
    pop3.deliver(simple(1))
    pop3.deliver(simple(2))
    r = fetch(mail, pop3, maildir)
    assert r.code == 0, r.err
    assert r.out.startswith(f"fetched 2 new messages from {pop3.address}") and "kept there" in r.out
    assert fetch(mail, pop3, maildir).out.startswith("fetched 0 new messages")
    pop3.deliver(simple(3))
    assert fetch(mail, pop3, maildir).out.startswith("fetched 1 new message ")
    assert pop3.on_server() == 3

    listing = json.loads(mail("list", "--json", "--maildir", str(maildir)).out)
    assert [(m["number"], m["subject"]) for m in listing] == [(1, "number 1"), (2, "number 2"), (3, "number 3")]
    raw = mail("read", "2", "--raw", "--maildir", str(maildir)).out
    assert raw == simple(2).decode()  # byte for byte, the dot-stuffing undone

    table = mail("list", "--maildir", str(maildir)).out.splitlines()
    assert len(table) == 4 and table[3].split()[0] == "3" and table[3].endswith("number 3")


def test_fetch_delete_empties_the_server_mailbox(mail: Callable[..., Run], pop3: Pop3, maildir: Path) -> None:
    pop3.deliver(simple(1))
    assert fetch(mail, pop3, maildir).code == 0  # kept on the server
    pop3.deliver(simple(2))
    r = fetch(mail, pop3, maildir, "--delete")
    assert r.code == 0, r.err
    assert "fetched 1 new message" in r.out and "2 on the server, 2 deleted there" in r.out
    assert pop3.on_server() == 0
    assert len(json.loads(mail("list", "--json", "--maildir", str(maildir)).out)) == 2
    account = f"{BETTY} at {pop3.address}"
    assert len(json.loads((maildir / SEEN_FILE).read_text())["accounts"][account]) == 2
    assert fetch(mail, pop3, maildir).out.startswith("fetched 0 new messages")
    # The server no longer lists them, so neither does the list of fetched UIDs.
    assert json.loads((maildir / SEEN_FILE).read_text())["accounts"] == {account: []}


def test_fetch_reports_pop3_refusals(mail: Callable[..., Run], pop3: Pop3, maildir: Path) -> None:
    r = mail("fetch", "--user", BETTY, "--password", "wrong", "--pop3", pop3.address, "--maildir", str(maildir))
    assert r.code == 1 and "-ERR" in r.err and "refused the login" in r.err and r.err.count("\n") == 1
    assert "check --user and --password" in r.err

    holder = poplib.POP3("127.0.0.1", pop3.port, timeout=TIMEOUT)
    holder.user(BETTY)
    holder.pass_(BETTY_PW)
    try:
        r = fetch(mail, pop3, maildir)
        assert r.code == 1 and "-ERR [IN-USE]" in r.err and "try again once it has quit" in r.err, r.err
    finally:
        holder.quit()

    r = mail("fetch", "--user", BETTY, "--password", "x", "--pop3", f"127.0.0.1:{closed_port()}",
             "--maildir", str(maildir))
    assert r.code == 1 and "cannot connect to the POP3 server" in r.err


def test_mail_sent_is_fetched_read_and_saved_byte_identical(
        mail: Callable[..., Run], sink: Sink, pop3: Pop3, maildir: Path, tmp_path: Path) -> None:
    files = tmp_path / "outbox"
    files.mkdir()
    (files / "photo.jpg").write_bytes(BLOB[:2000])
    (files / "data.bin").write_bytes(BLOB)
    sent = mail("send", "--user", ANDY, "--smtp", sink.address, "--to", BETTY, "--subject", "Fotos – 照片",
                "--body", "Zwei Dateien für dich.\n", "--attach", str(files / "photo.jpg"),
                "--attach", str(files / "data.bin"))
    assert sent.code == 0, sent.err
    pop3.deliver(sink.received[0][2])  # what the MX would do
    assert fetch(mail, pop3, maildir).code == 0

    text = mail("read", "1", "--maildir", str(maildir))
    assert text.code == 0
    assert f"From: {ANDY}\nTo: {BETTY}\n" in text.out and "Subject: Fotos – 照片\n" in text.out
    assert "\nZwei Dateien für dich.\n\nMIME tree:\n" in text.out
    assert 'image/jpeg  (base64, 2000 bytes, filename="photo.jpg")' in text.out
    assert f'application/octet-stream  (base64, {len(BLOB)} bytes, filename="data.bin")' in text.out

    tree = mail("read", "1", "--tree", "--maildir", str(maildir)).out
    assert tree.splitlines()[0].split() == ["-", "multipart/mixed", "(7bit)"]
    obj = json.loads(mail("read", "1", "--json", "--maildir", str(maildir)).out)
    assert obj["number"] == 1 and obj["headers"]["Subject"] == "Fotos – 照片"
    assert obj["text"] == "Zwei Dateien für dich.\n"
    assert [(p["number"], p["content_type"], p["filename"]) for p in obj["parts"]] == [
        ("", "multipart/mixed", None), ("1", "text/plain", None), ("2", "image/jpeg", "photo.jpg"),
        ("3", "application/octet-stream", "data.bin")]

    out = tmp_path / "saved"
    saved = mail("save", "1", "--dir", str(out), "--maildir", str(maildir))
    assert saved.code == 0, saved.err
    assert saved.out.splitlines() == [str(out / "photo.jpg"), str(out / "data.bin")]
    assert (out / "photo.jpg").read_bytes() == BLOB[:2000]
    assert (out / "data.bin").read_bytes() == BLOB
    again = mail("save", "1", "--dir", str(out), "--part", "3", "--maildir", str(maildir))
    assert again.out.splitlines() == [str(out / "data-1.bin")]  # never overwrites
    assert (out / "data-1.bin").read_bytes() == BLOB
    body = mail("save", "1", "--dir", str(out), "--part", "1", "--maildir", str(maildir))
    assert (out / "part-1.txt").read_text() == "Zwei Dateien für dich.\n" and body.code == 0

    missing = mail("save", "1", "--part", "7", "--maildir", str(maildir))
    assert missing.code == 1 and "1, 2, 3" in missing.err


def test_save_keeps_a_hostile_filename_inside_the_folder(
        mail: Callable[..., Run], pop3: Pop3, maildir: Path, tmp_path: Path) -> None:
    pop3.deliver(b"Subject: evil\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
                 b"Content-Type: text/plain\n\nhi\n--b\nContent-Type: application/octet-stream\n"
                 b"Content-Disposition: attachment; filename=\"../../.bashrc\"\n"
                 b"Content-Transfer-Encoding: base64\n\nZWNobyBvd25lZA==\n--b--\n")
    assert fetch(mail, pop3, maildir).code == 0
    out = tmp_path / "saved"
    r = mail("save", "1", "--dir", str(out), "--maildir", str(maildir))
    assert r.code == 0, r.err
    (path,) = [Path(p) for p in r.out.splitlines()]
    assert path.parent == out and path.name == "_._.bashrc"
    assert path.read_bytes() == b"echo owned"
    assert not (tmp_path / ".bashrc").exists()


def test_read_and_save_of_a_missing_message(mail: Callable[..., Run], maildir: Path) -> None:
    assert mail("list", "--maildir", str(maildir)).out.startswith("no messages")
    assert json.loads(mail("list", "--json", "--maildir", str(maildir)).out) == []
    for argv in (["read", "1"], ["save", "3"]):
        r = mail(*argv, "--maildir", str(maildir))
        assert r.code == 1 and "mail fetch" in r.err and r.err.count("\n") == 1
