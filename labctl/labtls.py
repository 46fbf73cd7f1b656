"""A lab's TLS material (issue 12): its CA, a leaf per server host, and the files each host gets.

Made by :meth:`labctl.lab.Lab.up` when the topology turns TLS on and a host is to be created, and
handed to the hosts with their other files (services.config.FILES_ENV -> /etc/maillab/tls). The
CA's private key is kept nowhere: it signs the leaves in labctl's memory and is dropped, so no
file on the engine or the disk can sign a certificate that a student's desktop, trusting the lab
CA (`labctl tls ca`), would accept. The CA certificate travels in every host's files, its
fingerprint and expiry in labels (:data:`LABEL_TLS_CA`, :data:`LABEL_TLS_UNTIL`): a second ``up``
of a running lab finds them there and recreates nothing.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labctl.topology import HostSpec, Topology
from services import config as svc

if TYPE_CHECKING:  # the certificates are made by `up --tls` only: every other command skips cryptography (50 ms)
    from labctl import tlsca

LABEL_TLS_CA = "org.maillab.tls-ca"  # SHA-256 of the lab CA certificate (DER), first 16 hex digits
LABEL_TLS_UNTIL = "org.maillab.tls-ca-until"  # its notAfter, ISO 8601 UTC
RENEW_WITHIN = datetime.timedelta(days=1)  # `up` wants a new CA when less than this is left

CA_FILE = str(svc.TLS_CA.relative_to(svc.ETC))  # maillab/tls/ca.pem
CERT_FILE = str(svc.TLS_CERT.relative_to(svc.ETC))
KEY_FILE = str(svc.TLS_KEY.relative_to(svc.ETC))
TLS_FILES = str(svc.TLS_DIR.relative_to(svc.ETC)) + "/"  # left out of a host's digest (see plan.digest)


@dataclass(frozen=True)
class LabTls:
    ca: tlsca.Issued
    leaves: dict[str, tlsca.Issued]  # host name -> its certificate chain and key

    @property
    def fingerprint(self) -> str:
        return ca_fingerprint(self.ca.cert_pem)

    @property
    def until(self) -> str:
        return self.ca.certificate.not_valid_after_utc.isoformat()

    def files(self, host: HostSpec) -> dict[str, str]:
        """The TLS files of ``host``: the CA on every host; a server's chain and key too."""
        files = {CA_FILE: self.ca.cert_pem}
        leaf = self.leaves.get(host.name)
        if leaf is not None:
            files[CERT_FILE] = leaf.cert_pem
            files[KEY_FILE] = leaf.key_pem
        return files

    def labels(self) -> dict[str, str]:
        return {LABEL_TLS_CA: self.fingerprint, LABEL_TLS_UNTIL: self.until}


def ca_fingerprint(cert_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(cert_pem.encode("ascii")).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:16]


def issue(lab: str, topo: Topology) -> LabTls:
    """A new CA for ``lab`` (name-constrained to its zones) and a leaf per server host, with the
    host's FQDN and lab address (a client connecting by address verifies too)."""
    zones = svc.lab_zones([d.name for d in topo.domains], [h.fqdn for h in topo.hosts])
    from labctl import tlsca

    ca = tlsca.make_ca(lab, zones)
    return LabTls(ca, {h.name: tlsca.make_leaf(ca, h.fqdn, [str(h.address)]) for h in topo.tls_servers})


def expiring(until: str, now: datetime.datetime | None = None) -> bool:
    """Has a CA valid ``until`` (a label's value) less than :data:`RENEW_WITHIN` left, or no date?"""
    try:
        end = datetime.datetime.fromisoformat(until)
    except ValueError:
        return True
    return end - (now or datetime.datetime.now(datetime.UTC)) < RENEW_WITHIN
