"""POP3 and IMAP with TLS on 127.0.0.1 (services.access): what test_pop3_tls and test_imap_tls share.

A test CA from labctl's own maker (labctl.tlsca), a leaf for mail.stevenchoy.example (the CA is
name-constrained to the lab's zones: no "localhost"), the four listeners on free ports, clients
verifying against the CA with that server name. The key log goes to the test's folder.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl import tlsca
from services import access
from services import tls as lab_tls
from services.mailstore import deliver, mailbox_dir
from services.smtp.server import ServerTls
from services.smtp.session import TlsOffer
from tests.component.test_pop3_server import CONFIG, MESSAGE_1, PASSWORD
from tests.support import BackgroundLoop, server_closer

HOST = "mail.stevenchoy.example"
TIMEOUT = 10.0
__all__ = ["HOST", "PASSWORD", "TIMEOUT", "AccessLab", "lines"]


class AccessLab:
    def __init__(self, root: Path) -> None:
        ca = tlsca.make_ca("t", ["stevenchoy.example"])
        leaf = tlsca.make_leaf(ca, HOST, ["127.0.0.1"])
        self.root = root
        self.ca = root / "ca.pem"
        self.ca.write_text(ca.cert_pem)
        self.cert, self.key = root / "cert.pem", root / "key.pem"
        self.cert.write_text(leaf.cert_pem + ca.cert_pem)
        self.key.write_text(leaf.key_pem)
        self.keys = root / "keys"
        self.mail = root / "mail"
        deliver(mailbox_dir(self.mail, "betty@stevenchoy.example"), MESSAGE_1)
        self.background = BackgroundLoop()
        self.servers: list[asyncio.Server] = []
        self.opened: list[socket.socket] = []

    def serve(self, offer: TlsOffer = TlsOffer.STARTTLS, *, auth_needs_tls: bool = True) -> dict[str, int]:
        """Start POP3, IMAP and (with a context) POP3S, IMAPS; their ports by name."""
        context = None
        if offer is TlsOffer.STARTTLS:
            context = lab_tls.server_context(self.cert, self.key, keylog_dir=self.keys)
        tls = ServerTls(offer, context, auth_needs_tls=auth_needs_tls)
        started = self.background.run(access.start(CONFIG, tls, mail_root=self.mail, host="127.0.0.1",
                                                   ports=access.Ports(0, 0, 0, 0)))
        self.servers += started.values()
        return {name: server.sockets[0].getsockname()[1] for name, server in started.items()}

    def client_context(self) -> ssl.SSLContext:
        return lab_tls.client_context(ca=self.ca, keylog_dir=None)

    def raw(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.opened.append(sock)
        return sock

    def keylog(self) -> bytes:
        return (self.keys / lab_tls.KEYLOG_FILE.name).read_bytes()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[AccessLab]:
    lab = AccessLab(tmp_path)
    yield lab
    for sock in lab.opened:
        sock.close()
    lab.background.close([server_closer(s) for s in lab.servers])


def lines(sock: socket.socket | ssl.SSLSocket, until: bytes) -> bytes:
    """What the server sends until ``until`` ends it (or the server closes)."""
    got = b""
    while not got.endswith(until):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got
