"""The POP3 server: a thin asyncio shell around :class:`services.pop3.core.Session`.

The shell is :class:`services.sessionserver.Connection`, shared with IMAP: it moves bytes and
performs the session's actions; every protocol decision is in the core.

The MX and MTA roles call :func:`start` next to their SMTP servers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services import config
from services.accounts import AccountAuthenticator
from services.config import LabConfig
from services.mailstore import Maildir, mailbox_dir
from services.pop3.core import DEFAULT_LIMITS, Limits, Session
from services.sessionserver import listen
from services.smtp.server import ServerTls
from services.smtp.session import TlsOffer

log = logging.getLogger("services.pop3")

READ_CHUNK = 4096  # one socket read; a few pipelined command lines (each at most 255 octets)


async def start(
    cfg: LabConfig,
    *,
    mail_root: Path = config.MAIL_DIR,
    host: str = "0.0.0.0",
    port: int = 110,
    limits: Limits = DEFAULT_LIMITS,
    tls: ServerTls | None = None,
    implicit: bool = False,
) -> asyncio.Server:
    """Serve POP3 for the mailboxes of ``cfg.local_domains`` under ``mail_root``; returns at once.
    ``tls``: STLS/STARTTLS as the SMTP listeners offer it (by default as the lab configuration
    says, ServerTls.from_config); ``implicit``: TLS from the first byte instead (RFC 8314: POP3S on 995)."""
    authenticator = AccountAuthenticator(cfg.local_domains)

    def open_mailbox(address: str) -> Maildir:
        return Maildir(mailbox_dir(mail_root, address))

    served = tls if tls is not None else ServerTls.from_config(cfg)
    context = served.context
    if implicit and context is None:
        raise ValueError("POP3 with implicit TLS needs this host's certificate (services.tls.tls_ready)")
    offer = TlsOffer.IMPLICIT if implicit else served.offer

    def new_session() -> Session:
        return Session(cfg.this.fqdn, authenticator, open_mailbox, limits, tls=offer,
                       auth_needs_tls=served.auth_needs_tls)
    return await listen("pop3", log, cfg, new_session, limits.idle_timeout, host=host, port=port,
                        read_chunk=READ_CHUNK, tls=None if context is None else lambda: context,
                        implicit=implicit)
