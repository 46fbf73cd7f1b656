"""Real TLS sessions for the TLS decoding tests: Python's ssl on memory BIOs, the lab's test CA.

:func:`session` plays a dialogue script between an ssl client and an ssl server (a real
handshake, real records, the secrets in a real NSS key log from ``keylog_filename``) and returns
what crossed the wire, chunk by chunk and direction by direction, with the key log; tests wrap
the chunks into TCP segments (tests/unit/packets.Tcp) and decode the capture.

Python's ssl can choose the TLS 1.2 cipher (``set_ciphers``) but not the TLS 1.3 one; OpenSSL
reads its TLS 1.3 list from its configuration file's ``Ciphersuites``, so a session with a given
TLS 1.3 suite is made in a child Python started with ``OPENSSL_CONF`` naming such a file.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl import tlsca

SERVER_NAME = "mail.stevenchoy.example"
# Steps of a script: ("c", bytes) the client sends, ("s", bytes) the server sends, ("tls", b"")
# the handshake (after which every step is application data inside TLS).
Step = tuple[str, bytes]


@dataclass(frozen=True)
class Session:
    chunks: list[tuple[bool, bytes]]  # (from the client, the octets one write put on the wire)
    keylog: str
    tls_chunks: int  # the index of the first TLS chunk


@functools.cache
def _pki() -> tuple[str, str, str]:
    ca = tlsca.make_ca("tlstest", ["stevenchoy.example"])
    leaf = tlsca.make_leaf(ca, SERVER_NAME, ["127.0.0.1"])
    return ca.cert_pem, leaf.cert_pem, leaf.key_pem


def _play(script: Sequence[Step], version: str, cipher12: str | None, workdir: Path,
          untrusted: bool = False) -> Session:
    ca_pem, cert_pem, key_pem = _pki()
    # untrusted: the client trusts another CA, so it refuses the server's certificate (and says so in an alert).
    (workdir / "ca.pem").write_text(tlsca.make_ca("other", ["stevenchoy.example"]).cert_pem if untrusted else ca_pem)
    (workdir / "cert.pem").write_text(cert_pem)
    (workdir / "key.pem").write_text(key_pem)
    keylog = workdir / "keylog.txt"
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(workdir / "cert.pem", workdir / "key.pem")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(workdir / "ca.pem")
    client_ctx.keylog_filename = str(keylog)
    tls_version = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    for ctx in (server_ctx, client_ctx):
        ctx.minimum_version = ctx.maximum_version = tls_version
        if cipher12:
            ctx.set_ciphers(cipher12)
    cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(cin, cout, server_hostname=SERVER_NAME)
    server = server_ctx.wrap_bio(sin, sout, server_side=True)
    chunks: list[tuple[bool, bytes]] = []
    first_tls = -1

    def flush() -> None:
        for from_client, out, into in ((True, cout, sin), (False, sout, cin)):
            data = out.read()
            if data:
                chunks.append((from_client, data))
                into.write(data)

    def drain(side: ssl.SSLObject) -> bytes:
        got = b""
        while True:
            try:
                piece = side.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return got
            if not piece:
                return got
            got += piece

    in_tls = False
    for who, data in script:
        if who == "tls":
            first_tls = len(chunks)
            done = [False, False]
            try:
                while not all(done):
                    for i, side in enumerate((client, server)):
                        if not done[i]:
                            try:
                                side.do_handshake()
                                done[i] = True
                            except ssl.SSLWantReadError:
                                pass
                        flush()
            except ssl.SSLError:  # the certificate refused: the alert is on the wire, the session over
                flush()
                break
            in_tls = True
            continue
        if not in_tls:
            chunks.append((who == "c", data))
            continue
        sender, receiver = (client, server) if who == "c" else (server, client)
        drain(sender)  # a TLS 1.3 client reads the server's session tickets when it next reads
        sender.write(data)
        flush()
        assert drain(receiver) == data
        flush()
    return Session(chunks, keylog.read_text(), first_tls)


def session(script: Sequence[Step], *, version: str = "1.3", cipher: str | None = None,
            untrusted: bool = False) -> Session:
    """Play ``script``; ``cipher``: an OpenSSL name for TLS 1.2 (``ECDHE-ECDSA-AES128-GCM-SHA256``), an
    IANA one for TLS 1.3 (``TLS_CHACHA20_POLY1305_SHA256``; None: OpenSSL's first, AES-256-GCM)."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if version == "1.2" or cipher is None:
            return _play(script, version, cipher, workdir, untrusted)
        conf = workdir / "openssl.cnf"
        conf.write_text("openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = tls\n"
                        f"[tls]\nCiphersuites = {cipher}\n")
        arg = json.dumps({"script": [[w, d.hex()] for w, d in script], "workdir": tmp})
        out = subprocess.run([sys.executable, "-m", "tests.unit.tlswire", arg], capture_output=True, text=True,
                             check=True, env={**os.environ, "OPENSSL_CONF": str(conf)},
                             cwd=Path(__file__).resolve().parents[2])
        got = json.loads(out.stdout)
        return Session([(c, bytes.fromhex(d)) for c, d in got["chunks"]], got["keylog"], got["tls"])


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    played = _play([(w, bytes.fromhex(d)) for w, d in args["script"]], "1.3", None, Path(args["workdir"]))
    print(json.dumps({"chunks": [[c, d.hex()] for c, d in played.chunks], "keylog": played.keylog,
                      "tls": played.tls_chunks}))
