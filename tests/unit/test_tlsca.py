"""The lab CA and its leaf certificates: a real TLS handshake verifies them, by name and address."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from labctl import tlsca


def handshake(tmp_path: Path, leaf: tlsca.Issued, ca: tlsca.Issued, server_hostname: str) -> str:
    """An in-memory TLS handshake of Python's ssl client and server; the cipher's name."""
    (tmp_path / "cert.pem").write_text(leaf.cert_pem)
    (tmp_path / "key.pem").write_text(leaf.key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context(cadata=ca.cert_pem)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for side, obj in (("c", client), ("s", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    cipher = client.cipher()
    assert cipher is not None
    return cipher[0]


def test_a_leaf_verifies_by_name_and_by_address(tmp_path: Path) -> None:
    ca = tlsca.make_ca("t", ["stevenchoy.example", "ouhk.example"])
    leaf = tlsca.make_leaf(ca, "mail.stevenchoy.example", ["10.89.0.20"])
    assert handshake(tmp_path, leaf, ca, "mail.stevenchoy.example").startswith("TLS_")
    assert handshake(tmp_path, leaf, ca, "10.89.0.20")
    assert leaf.cert_pem.endswith(ca.cert_pem)  # the chain servers present


def test_a_wrong_name_is_refused(tmp_path: Path) -> None:
    ca = tlsca.make_ca("t", ["stevenchoy.example"])
    leaf = tlsca.make_leaf(ca, "mail.stevenchoy.example")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        handshake(tmp_path, leaf, ca, "smtp.stevenchoy.example")


def test_the_ca_cannot_certify_names_outside_the_lab(tmp_path: Path) -> None:
    ca = tlsca.make_ca("t", ["stevenchoy.example"])
    leaf = tlsca.make_leaf(ca, "www.bank.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path, leaf, ca, "www.bank.example")


def test_validity_is_short_and_the_leaf_never_outlives_its_ca() -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = tlsca.make_ca("t", [], days=2)
    leaf = tlsca.make_leaf(ca, "mail.x.example", days=30)
    assert leaf.certificate.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    assert ca.expires_within(3, now) and not ca.expires_within(1, now)
