"""How a mail client protects its connection: one choice for sending (SMTP) and fetching (POP3, IMAP).

CLEAR is the article's lab: every byte readable on the wire. STARTTLS upgrades a clear session
(RFC 3207 for SMTP, RFC 2595 STLS for POP3, RFC 3501 §6.2.1 for IMAP) and fails if the server does
not offer it: a client that quietly goes on in clear would hand its password to whoever removed
the offer. IMPLICIT is TLS from the first byte (RFC 8314: 465, 995, 993).
"""

from __future__ import annotations

import argparse
import ssl
from enum import StrEnum
from pathlib import Path

from services import config


class Security(StrEnum):
    CLEAR = "clear"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


CLEAR, STARTTLS, IMPLICIT = Security.CLEAR, Security.STARTTLS, Security.IMPLICIT


def lab_has_tls(config_path: Path | None) -> bool:
    """Is TLS on in this host's lab? Off a lab host (no configuration), no."""
    path = config_path or config.CONFIG_PATH
    try:
        return path.exists() and config.load(path).tls.enabled
    except config.ConfigError:
        return False


def add_flags(parser: argparse.ArgumentParser, implicit: str, starttls: str) -> None:
    """``--tls | --starttls | --no-tls`` and ``--no-verify``, the same on every command that connects."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tls", action="store_true", help=implicit)
    group.add_argument("--starttls", action="store_true", help=starttls)
    group.add_argument("--no-tls", action="store_true",
                       help="never TLS (the default when the lab has TLS off)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check the server's certificate (a lab exercise in what it "
                             "lets an attacker do; never for real mail)")


def chosen(args: argparse.Namespace) -> Security:
    """The flags' choice. Neither flag: STARTTLS when the lab has TLS on (so AUTH works where it
    needs TLS), clear when it is off, as always."""
    if args.tls:
        return IMPLICIT
    if args.starttls:
        return STARTTLS
    if args.no_tls:
        return CLEAR
    return STARTTLS if lab_has_tls(args.config) else CLEAR


def not_verified(host: str, exc: ssl.SSLCertVerificationError, verb: str) -> str:
    """One line: which certificate, against what, and what to do (``verb``: "send", "fetch")."""
    return (f"the certificate of {host} does not verify ({exc.verify_message}; checked against the lab CA "
            f"{config.TLS_CA} and the system store, for the name {host}); trust the lab CA "
            f"(labctl tls ca > ca.pem), use the server's lab name, or {verb} with --no-verify")
