"""The shared session shell's TLS: StartTls upgrades the connection, implicit TLS from the first
byte, bytes pipelined in clear after the TLS command are dropped, and the key log gets the
session's secrets. A tiny line core stands in for POP3/IMAP (their STLS/STARTTLS are their own)."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from labctl import tlsca
from services import sessionserver, tls
from services.actions import Action, Close, Send, StartTls
from tests.labconfig import lab_config
from tests.support import BackgroundLoop, server_closer

LOG = logging.getLogger("test.sessionserver.tls")
HOST = "mail.stevenchoy.example"  # the CA is name-constrained to the lab zones: no "localhost"
CONFIG = lab_config("mail", addresses={"mail": "127.0.0.1"}, subnet="127.0.0.0/8")


class LineCore:
    """``t STARTTLS`` -> ``t OK`` and TLS; ``t QUIT`` closes; any other ``t WORD`` -> ``t DID WORD``."""

    def __init__(self) -> None:
        self.buffer = b""
        self.closed = False
        self.address: str | None = None
        self.under_tls = False

    def start(self) -> Sequence[Action]:
        return [Send(b"* ready\r\n")]

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next_actions(self) -> Sequence[Action]:
        line, sep, rest = self.buffer.partition(b"\r\n")
        if not sep:
            return []
        self.buffer = rest
        tag, _, word = line.partition(b" ")
        if word == b"STARTTLS" and not self.under_tls:
            self.buffer = b""  # the core's own half of the injection defence
            return [Send(tag + b" OK\r\n"), StartTls()]
        if word == b"QUIT":
            self.closed = True
            return [Send(tag + b" BYE\r\n"), Close()]
        return [Send(tag + b" DID " + word + (b" TLS" if self.under_tls else b"") + b"\r\n")]

    def tls_started(self) -> Sequence[Action]:
        self.under_tls = True
        return []

    def timed_out(self) -> Sequence[Action]:
        return []

    def connection_lost(self) -> Sequence[Action]:
        return []

    def internal_error(self) -> Sequence[Action]:
        return []


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        ca = tlsca.make_ca("t", ["stevenchoy.example"])
        leaf = tlsca.make_leaf(ca, "mail.stevenchoy.example", ["127.0.0.1"])
        self.ca = tmp_path / "ca.pem"
        self.ca.write_text(ca.cert_pem)
        self.cert = tmp_path / "cert.pem"
        self.cert.write_text(leaf.cert_pem + ca.cert_pem)
        self.key = tmp_path / "key.pem"
        self.key.write_text(leaf.key_pem)
        self.keys = tmp_path / "keys"
        self.keys.mkdir()
        self.background = BackgroundLoop()
        self.servers: list[object] = []

    def server_context(self) -> ssl.SSLContext:
        return tls.server_context(self.cert, self.key, keylog_dir=self.keys)

    def client_context(self) -> ssl.SSLContext:
        return tls.client_context(ca=self.ca, keylog_dir=None)

    def serve(self, *, implicit: bool = False, read_chunk: int = 4096) -> int:
        make: Callable[[], ssl.SSLContext] = self.server_context
        server = self.background.run(sessionserver.listen(
            "line", LOG, CONFIG, LineCore, 10.0, host="127.0.0.1", port=0, read_chunk=read_chunk,
            tls=make, implicit=implicit))
        self.servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.background.close([server_closer(s) for s in lab.servers])  # type: ignore[arg-type]


def lines(sock: socket.socket | ssl.SSLSocket, until: bytes) -> bytes:
    got = b""
    while not got.endswith(until):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


# 4096: the injected line reaches the core with the command (the core drops it); 12, exactly
# "a STARTTLS\r\n": it is still in the StreamReader's buffer when TLS starts (the shell drops it).
@pytest.mark.parametrize("read_chunk", [4096, 12])
def test_starttls_drops_what_was_pipelined_in_clear(lab: Lab, read_chunk: int) -> None:
    port = lab.serve(read_chunk=read_chunk)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        assert lines(raw, b"\r\n") == b"* ready\r\n"
        raw.sendall(b"a STARTTLS\r\nb LOGIN x y\r\n")  # ONE write: the injection
        assert lines(raw, b"a OK\r\n") == b"a OK\r\n"
        with lab.client_context().wrap_socket(raw, server_hostname=HOST) as secure:
            secure.sendall(b"c NOOP\r\nd QUIT\r\n")
            got = lines(secure, b"d BYE\r\n")
    assert got == b"c DID NOOP TLS\r\nd BYE\r\n"  # no "b" response, ever
    assert b"CLIENT_TRAFFIC_SECRET_0" in (lab.keys / "keylog.txt").read_bytes()


def test_implicit_tls_from_the_first_byte(lab: Lab) -> None:
    port = lab.serve(implicit=True)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            lab.client_context().wrap_socket(raw, server_hostname=HOST) as secure:
        assert lines(secure, b"\r\n") == b"* ready\r\n"
        secure.sendall(b"a NOOP\r\nb QUIT\r\n")
        assert lines(secure, b"b BYE\r\n") == b"a DID NOOP\r\nb BYE\r\n"
    assert b"SERVER_HANDSHAKE_TRAFFIC_SECRET" in (lab.keys / "keylog.txt").read_bytes()


def test_a_failed_handshake_ends_only_that_session(lab: Lab) -> None:
    port = lab.serve()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        lines(raw, b"\r\n")
        raw.sendall(b"a STARTTLS\r\n")
        lines(raw, b"a OK\r\n")
        raw.sendall(b"not a TLS ClientHello\r\n\r\n")
        assert lines(raw, b"never") == b""  # the server hung up rather than talk in clear
    with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
        assert lines(again, b"\r\n") == b"* ready\r\n"  # and keeps serving
