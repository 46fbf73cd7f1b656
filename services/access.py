"""The access protocols a mailbox host serves, beside its SMTP: POP3 and IMAP (issues 12 and 13).

The MX and the MTA host both run them on the same Maildirs: POP3 on 110 and IMAP on 143 always,
and with TLS ready on this host (services.tls.tls_ready) POP3S on 995 and IMAPS on 993, TLS from
the first byte (RFC 8314 §3.3). With TLS off the lab has no 995 or 993, as before TLS existed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from services import config
from services.config import LabConfig
from services.imap import server as imap_server
from services.pop3 import server as pop3_server
from services.smtp.server import ServerTls

POP3_PORT = 110  # RFC 1939 §3
IMAP_PORT = imap_server.PORT  # RFC 3501 §2.1
POP3S_PORT = 995  # RFC 8314 §7
IMAPS_PORT = 993  # RFC 8314 §7


@dataclass(frozen=True)
class Ports:
    """Where each access server listens (the tests pass 0: any free port)."""

    pop3: int = POP3_PORT
    imap: int = IMAP_PORT
    pop3s: int = POP3S_PORT
    imaps: int = IMAPS_PORT


async def start(cfg: LabConfig, tls: ServerTls, *, mail_root: Path = config.MAIL_DIR, host: str = "0.0.0.0",
                ports: Ports = Ports()) -> dict[str, asyncio.Server]:
    """Start POP3 and IMAP, and POP3S and IMAPS when ``tls`` has this host's context; by name
    ("pop3", "imap", "pop3s", "imaps"). If one fails to start, those already started are closed."""
    wanted = [("pop3", ports.pop3, False), ("imap", ports.imap, False)]
    if tls.context is not None:
        wanted += [("pop3s", ports.pop3s, True), ("imaps", ports.imaps, True)]
    started: dict[str, asyncio.Server] = {}
    try:
        for name, port, implicit in wanted:
            start_server = pop3_server.start if name.startswith("pop3") else imap_server.start
            started[name] = await start_server(cfg, mail_root=mail_root, host=host, port=port, tls=tls,
                                               implicit=implicit)
    except BaseException:
        for server in started.values():
            server.close()
        raise
    return started
