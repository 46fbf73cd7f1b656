"""The ``mx`` role: the recipient MX (mail.stevenchoy.example), steps 5 and 6 of the article.

SMTP on port 25 takes mail for this host's own domains and their existing users only: no open
relay (RFC 5321 §7.1). A message is stored in each recipient's Maildir, with its trace headers
(Return-Path, Received; RFC 5321 §4.4), and only then answered ``250``: a crash after the 250
loses nothing (design decision 8). POP3 on port 110 and IMAP on 143 let the users fetch it. With
TLS on in the lab, port 25 offers STARTTLS (RFC 3207), for the MTA's relay to use, POP3 and IMAP
STLS/STARTTLS, and POP3S on 995 and IMAPS on 993 serve TLS from the first byte (services.access).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services import access, config, mailstore, runtime
from services.config import LabConfig
from services.durable import Batcher
from services.smtp import policy, replyfaults, trace
from services.smtp.server import (
    Listeners,
    ServerTls,
    accepted,
    listen,
    received_header,
    storage_failure,
)
from services.smtp.session import Client, ReplyConsult
from services.smtp.spool import new_queue_id
from services.smtp.wire import MESSAGE_SIZE_LIMIT, Reply

log = logging.getLogger("services.smtp.mx")


class MxHandler:
    """The MX's decisions: the :class:`services.smtp.server.RoleHandler` of the recipient side."""

    def __init__(self, cfg: LabConfig, *, mail_root: Path, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._mail_root = mail_root
        self._clock = clock
        # Maildir writes in batches on one thread: one loop wake-up and one sync of new/ per batch.
        self._store: Batcher[tuple[Path, bytes], str] = Batcher(mailstore.deliver_batch)

    def check_sender(self, client: Client, sender: policy.EnvelopePath) -> Reply:
        return policy.sender_ok(sender)  # anyone may write to our users; <> too (bounces)

    def check_recipient(self, client: Client, recipient: policy.EnvelopePath) -> Reply:
        return policy.recipient(self._cfg, recipient, relay=False)

    async def accept_message(self, client: Client, sender: str, recipients: Sequence[str], message: bytes) -> Reply:
        now = self._clock()
        queue_id = new_queue_id(now)  # names this message in the Received header, the reply and the log
        try:
            for rcpt in recipients:
                received = received_header(self._cfg, client, queue_id=queue_id, recipients=(rcpt,), when=now)
                copy = trace.prepend(message, trace.return_path(sender), received)
                mailbox = mailstore.mailbox_dir(self._mail_root, self._cfg.mailbox_owner(rcpt))
                key = await self._store.submit((mailbox, copy))
                log.info("%s: from <%s> delivered to %s (%d octets, %s)", queue_id, sender, rcpt, len(copy), key)
        except OSError as exc:
            # Copies stored for earlier recipients stay; the client retries all, and those users get
            # the message twice. RFC 5321 §6.1 prefers that to losing it.
            return storage_failure(exc, f"{queue_id}: cannot store the message")
        return accepted(queue_id)


async def start_mx(
    cfg: LabConfig,
    *,
    mail_root: Path = config.MAIL_DIR,
    host: str = "0.0.0.0",
    smtp_port: int = 25,
    pop3_port: int = access.POP3_PORT,
    imap_port: int = access.IMAP_PORT,
    pop3s_port: int = access.POP3S_PORT,
    imaps_port: int = access.IMAPS_PORT,
    clock: Callable[[], float] = time.time,
    size_limit: int = MESSAGE_SIZE_LIMIT,
    faults: ReplyConsult | None = None,
    tls: ServerTls | None = None,
) -> Listeners:
    """Start the MX's SMTP, POP3 and IMAP servers, and POP3S and IMAPS with TLS (port 0: any free
    port); they serve until closed.
    ``faults``: replies injected instead of the SMTP server's own (services.smtp.replyfaults).
    ``tls``: STARTTLS on port 25; by default as the lab configuration says (ServerTls.from_config)."""
    handler = MxHandler(cfg, mail_root=mail_root, clock=clock)
    tls = tls if tls is not None else ServerTls.from_config(cfg)
    smtp = await listen(handler, hostname=cfg.this.fqdn, host=host, port=smtp_port, clock=clock,
                        size_limit=size_limit, postmaster=cfg.postmaster, faults=faults, tls=tls)
    started = {"smtp": smtp}
    try:
        ports = access.Ports(pop3_port, imap_port, pop3s_port, imaps_port)
        started.update(await access.start(cfg, tls, mail_root=mail_root, host=host, ports=ports))
    except BaseException:
        for server in started.values():
            server.close()
        raise
    return Listeners(started)


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="python3 -m services mx", description=__doc__.splitlines()[0]).parse_args(argv)
    cfg = runtime.start_role("mx")
    if cfg is None:
        return 1

    async def serve() -> None:
        listeners = await start_mx(cfg, faults=replyfaults.from_labctl(asyncio.get_running_loop()))
        try:
            await runtime.forever()
        finally:
            await listeners.close()

    return runtime.serve(serve)
