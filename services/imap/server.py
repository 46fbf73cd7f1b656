"""The IMAP server: a thin asyncio shell around :class:`services.imap.core.Session`.

The shell is :class:`services.sessionserver.Connection`, shared with POP3. While a client idles
(RFC 2177) it asks the session every ``poll_interval`` what changed in its mailbox: a look at the
mtimes of ``new/`` and ``cur/``, so that a delivery reaches the client within a second.

The MX and MTA roles start it on port 143 next to POP3 on 110, on the same Maildirs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services import config
from services.accounts import AccountAuthenticator
from services.config import LabConfig
from services.imap.core import DEFAULT_LIMITS, Limits, Session
from services.imap.store import Folder, Mailboxes
from services.mailstore import mailbox_dir
from services.sessionserver import listen
from services.smtp.server import ServerTls
from services.smtp.session import TlsOffer

log = logging.getLogger("services.imap")

READ_CHUNK = 65536  # one socket read: an APPENDed message arrives in pieces this big
PORT = 143  # RFC 3501 §2.1


async def start(
    cfg: LabConfig,
    *,
    mail_root: Path = config.MAIL_DIR,
    host: str = "0.0.0.0",
    port: int = PORT,
    limits: Limits = DEFAULT_LIMITS,
    tls: ServerTls | None = None,
    implicit: bool = False,
) -> asyncio.Server:
    """Serve IMAP for the mailboxes of ``cfg.local_domains`` under ``mail_root``; returns at once.
    ``tls``: STLS/STARTTLS as the SMTP listeners offer it (by default as the lab configuration
    says, ServerTls.from_config); ``implicit``: TLS from the first byte instead (RFC 8314: IMAPS on 993)."""
    authenticator = AccountAuthenticator(cfg.local_domains)
    folders: dict[Path, Folder] = {}  # every session's view of one folder starts from the last listing

    def open_mailboxes(address: str) -> Mailboxes:
        return Mailboxes(mailbox_dir(mail_root, address), folders)

    served = tls if tls is not None else ServerTls.from_config(cfg)
    context = served.context
    if implicit and context is None:
        raise ValueError("IMAP with implicit TLS needs this host's certificate (services.tls.tls_ready)")
    offer = TlsOffer.IMPLICIT if implicit else served.offer

    def new_session() -> Session:
        return Session(cfg.this.fqdn, authenticator, open_mailboxes, limits, tls=offer,
                       auth_needs_tls=served.auth_needs_tls)
    return await listen("imap", log, cfg, new_session, limits.idle_timeout, host=host, port=port,
                        read_chunk=READ_CHUNK, tls=None if context is None else lambda: context,
                        implicit=implicit)
