"""TLS for the lab's servers and clients: one place that makes every SSLContext (issue 12).

Every TLS endpoint the lab owns writes its session secrets to a key log (the NSS key log format,
``SSLContext.keylog_filename``) in the host's capture area, so that ``labctl traffic`` can show
what crossed the wire inside TLS, marked as decrypted. The key log is bounded like the capture:
past :data:`KEYLOG_LIMIT` bytes it is rotated once (the previous file kept beside it), so the
secrets of the connections still in the capture ring are on disk.

Servers: :func:`server_context` (the host's leaf certificate and key from :data:`config.TLS_DIR`).
Clients (the MUA, the MTA relaying with STARTTLS): :func:`client_context`, verifying against the
lab CA unless told not to.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from services import config
from services.capture import CAPTURE_DIR
from services.certhash import subject_hash
from services.config import LabConfig

log = logging.getLogger("services.tls")

KEYLOG_DIR = CAPTURE_DIR.parent / "tls-keys"  # beside the capture ring, not in it (its pruning is by age)
KEYLOG_FILE = KEYLOG_DIR / "keylog.txt"
KEYLOG_LIMIT = 4 * 1024 * 1024  # ~25,000 sessions of TLS 1.3 secrets; then rotated once
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's, read by OpenSSL, curl, GnuTLS, Python
# OpenSSL's default CA *path* (what Net::SSLeay, hence swaks, and `openssl verify` read): a
# certificate is found there by a link named after its subject hash (`openssl rehash` makes them).
SYSTEM_CA_PATH = SYSTEM_BUNDLE.parent
LAB_CA_MARK = "# maillab lab CA"


def keylog_path(directory: Path = KEYLOG_DIR) -> str:
    """The key log file to hand an SSLContext, rotated first if it outgrew :data:`KEYLOG_LIMIT`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEYLOG_FILE.name
    try:
        if path.stat().st_size > KEYLOG_LIMIT:
            path.replace(path.with_suffix(".1.txt"))
    except FileNotFoundError:
        pass
    return str(path)


def server_context(cert: Path = config.TLS_CERT, key: Path = config.TLS_KEY, *,
                   keylog_dir: Path | None = KEYLOG_DIR) -> ssl.SSLContext:
    """The context every lab server presents: TLS 1.2 and 1.3, the host's certificate chain."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if keylog_dir is not None:
        ctx.keylog_filename = keylog_path(keylog_dir)
    return ctx


def client_context(*, verify: bool = True, ca: Path | None = config.TLS_CA,
                   keylog_dir: Path | None = KEYLOG_DIR) -> ssl.SSLContext:
    """A lab client's context: verifying the server against the lab CA (and the system store)
    unless ``verify`` is False (the MTA's opportunistic STARTTLS, Postfix's ``may``)."""
    if verify:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if ca is not None and ca.exists():
            ctx.load_verify_locations(cafile=str(ca))
    else:
        # Not create_default_context: it loads the system trust store (22 ms of CPU in a lab
        # host, at every start of the MTA with TLS on) for a context that verifies nothing.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if keylog_dir is not None:
        ctx.keylog_filename = keylog_path(keylog_dir)
    return ctx


def tls_ready(cfg: LabConfig) -> bool:
    """Does this host serve TLS: is it on for the lab, and are its certificate and key here?"""
    return cfg.tls.enabled and config.TLS_CERT.exists() and config.TLS_KEY.exists()


def trust_lab_ca(ca: Path = config.TLS_CA, bundle: Path = SYSTEM_BUNDLE) -> bool:
    """Add the lab CA to the host's system trust store, once; True if it is there now.

    Appending to Debian's bundle (what update-ca-certificates would write, in a millisecond
    instead of a second) is enough for OpenSSL, GnuTLS-less curl, swaks, fetchmail and Python.
    """
    try:
        pem = ca.read_text(encoding="ascii")
    except OSError:
        return False
    try:
        current = bundle.read_text(encoding="ascii") if bundle.exists() else ""
    except OSError as exc:
        log.warning("cannot read the trust store %s: %s", bundle, exc)
        return False
    if pem.strip() not in current:
        bundle.parent.mkdir(parents=True, exist_ok=True)
        with bundle.open("a", encoding="ascii") as out:
            out.write(f"\n{LAB_CA_MARK}\n{pem.strip()}\n")
    return _hash_link(ca, pem, bundle.parent)


def _hash_link(ca: Path, pem: str, directory: Path) -> bool:
    """``directory/<subject hash>.0`` pointing at the lab CA (``pem``, as read), as `openssl rehash` would make it
    (the hash computed here, services.certhash, rather than by an openssl process per host start
    or a rehash of the ~140 certificates there)."""
    try:
        digest = subject_hash(pem)
    except ValueError as exc:
        log.warning("the lab CA is in %s, but not in the CA path %s (cannot read its subject: %s)",
                    SYSTEM_BUNDLE, directory, exc)
        return False
    for n in range(10):  # .0, .1, ...: another CA may have the same subject hash
        link = directory / f"{digest}.{n}"
        if link.is_symlink() and link.resolve() == ca.resolve():
            return True
        if not link.exists() and not link.is_symlink():
            link.symlink_to(ca)
            return True
    return False
