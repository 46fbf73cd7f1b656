"""services.certhash: OpenSSL's subject hash computed in Python, checked against openssl itself."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from labctl import tlsca
from services import tls
from services.certhash import subject_hash


def openssl_hash(pem: str) -> str:
    assert shutil.which("openssl"), "these tests compare with openssl: apt-get install openssl"
    return subprocess.run(["openssl", "x509", "-noout", "-subject_hash"], input=pem, capture_output=True,
                          text=True, check=True).stdout.strip()


def self_signed(name: x509.Name) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def test_the_lab_ca_hashes_as_openssl_says() -> None:
    ca = tlsca.make_ca("student-042", ["lab.example", "ouhk.example"])
    assert subject_hash(ca.cert_pem) == openssl_hash(ca.cert_pem)


A = x509.NameAttribute
NAMES = [
    x509.Name([A(NameOID.COMMON_NAME, "x")]),
    x509.Name([A(NameOID.COUNTRY_NAME, "HK"), A(NameOID.ORGANIZATION_NAME, "  The   OUHK  Mail\tLab  "),
               A(NameOID.COMMON_NAME, "MAIL.StevenChoy.Example")]),
    x509.Name([A(NameOID.COMMON_NAME, "Ünïcödé CA Ωmega"), A(NameOID.EMAIL_ADDRESS, "PostMaster@Lab.Example")]),
    x509.Name([A(NameOID.COMMON_NAME, "printable", _ASN1Type.PrintableString),
               A(NameOID.ORGANIZATIONAL_UNIT_NAME, "BMP Unit", _ASN1Type.BMPString)]),
    x509.Name([x509.RelativeDistinguishedName([A(NameOID.COMMON_NAME, "Two"), A(NameOID.ORGANIZATION_NAME, "In One")]),
               x509.RelativeDistinguishedName([A(NameOID.COUNTRY_NAME, "GB")])]),
    None,  # a value of 305 octets, so a DER length of two octets: made below, past the CN length check
]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_every_kind_of_subject_hashes_as_openssl_says(name: x509.Name | None) -> None:
    if name is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            name = x509.Name([A(NameOID.COMMON_NAME, "long " + "y" * 300, _validate=False)])
    pem = self_signed(name)
    assert subject_hash(pem) == openssl_hash(pem)


@pytest.mark.parametrize("pem", ["", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_what_is_no_certificate_is_a_value_error(pem: str) -> None:
    with pytest.raises(ValueError):
        subject_hash(pem)


def test_a_host_trusts_the_lab_ca_through_openssls_ca_path(tmp_path: Path) -> None:
    """What each lab host does at start with TLS on: the CA joins the bundle, and a link named by
    its subject hash joins the CA path, so `openssl verify -CApath` (swaks' way) finds it."""
    ca = tlsca.make_ca("student-042", ["stevenchoy.example"])
    leaf = tlsca.make_leaf(ca, "mail.stevenchoy.example", ["10.89.0.110"])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.cert_pem)
    certs = tmp_path / "certs"
    assert tls.trust_lab_ca(ca_file, certs / "ca-certificates.crt")
    link = certs / f"{openssl_hash(ca.cert_pem)}.0"
    assert link.is_symlink() and link.resolve() == ca_file.resolve()
    leaf_file = tmp_path / "leaf.pem"
    leaf_file.write_text(leaf.cert_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    verified = subprocess.run(["openssl", "verify", "-no-CAfile", "-CApath", str(certs), str(leaf_file)],
                              capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert tls.trust_lab_ca(ca_file, certs / "ca-certificates.crt")  # again: the same link, no second
    assert sorted(p.name for p in certs.iterdir()) == sorted(["ca-certificates.crt", link.name])
