"""A lab's certificate authority and its servers' certificates (issue 12), pure and fast.

ECDSA P-256 keys (a signature costs well under a millisecond, so a lab of six servers adds a few
milliseconds to ``up``) and short validity: a lab CA is trusted by the lab's hosts and, handed out
with ``labctl tls ca``, by a student's desktop client; it should not outlive the course. The CA's
name constraints (RFC 5280 §4.2.1.10) limit it to the lab's own zones, so trusting it cannot make
a browser trust a certificate for a real site.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 30  # a course's length; `labctl up` makes a new CA when less than a day is left
LEAF_DAYS = 30
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of lab hosts and desktops differ a little


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: str
    key_pem: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode("ascii"))

    def expires_within(self, days: float, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return self.certificate.not_valid_after_utc - now < datetime.timedelta(days=days)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def make_ca(lab: str, zones: Sequence[str], *, days: int = CA_DAYS,
            now: datetime.datetime | None = None) -> Issued:
    """A self-signed CA for ``lab``, allowed to certify names in ``zones`` only."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "maillab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"maillab lab CA ({lab})")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if zones:
        # Only DNS names are constrained: a permitted IP subtree would have to list the lab's
        # subnet, which labctl chooses at `up`, after the CA may already exist.
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=[x509.DNSName(z) for z in sorted(set(zones))],
                                 excluded_subtrees=None), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), _key_pem(key))


def make_leaf(ca: Issued, fqdn: str, addresses: Sequence[str] = (), *, days: int = LEAF_DAYS,
              now: datetime.datetime | None = None, client: bool = False) -> Issued:
    """A server certificate for ``fqdn`` (and its addresses), signed by ``ca``; the chain
    (leaf, then CA) in :attr:`Issued.cert_pem`, as servers present it. ``client``: a client
    certificate instead (TLS client authentication, as dockerd's --tlsverify asks of labctl)."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode("ascii"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the lab CA's key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(fqdn)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                              else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM).decode("ascii") + ca.cert_pem
    return Issued(chain, _key_pem(key))
