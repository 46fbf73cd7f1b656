"""The ``mta`` role: the sender MTA (smtp.ouhk.example), steps 1 to 5 of the article.

* SMTP on port 25: the article's Activity 1 is typed here. It relays for the MTA's own clients
  (the MUA hosts of its LAN) and takes mail from anyone for its local domains' users.
* Submission on port 587 (RFC 6409): the same, plus AUTH PLAIN/LOGIN against the lab accounts;
  a client outside the LAN must authenticate before MAIL (RFC 6409 §4.3).
* With TLS on in the lab: STARTTLS on 25 and 587 (with ``auth_needs_tls``, 587 serves MAIL and
  AUTH only under TLS), and submission with TLS from the first byte on port 465 (RFC 8314 §3.3).
* A message is answered ``250 2.0.0 <queue id>`` only once it is fsync'd in the spool; the
  delivery worker then looks up the MX and relays it (or writes a local mailbox). SIGUSR1
  (``python3 -m services queue --flush``) makes it retry everything now.
* POP3 on port 110 and IMAP on 143 for the mailboxes of the MTA's local domains, and with TLS
  on POP3S on 995 and IMAPS on 993 (services.access).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services import access, config, mailstore, runtime
from services.accounts import AccountAuthenticator
from services.config import LabConfig
from services.logins import LOGIN_DELAY, LoginDelay
from services.smtp import policy, replyfaults, trace
from services.smtp.delivery import DeliveryWorker, LocalDelivery
from services.smtp.server import (
    Listeners,
    ServerTls,
    accepted,
    listen,
    received_header,
    storage_failure,
)
from services.smtp.session import Client, ReplyConsult
from services.smtp.spool import DEFAULT_SPOOL, Spool, new_queue_id
from services.smtp.wire import MESSAGE_SIZE_LIMIT, Reply

log = logging.getLogger("services.smtp.mta")

SUBMISSION_PORT = 587  # RFC 6409 §3.1
SUBMISSIONS_PORT = 465  # RFC 8314 §3.3: submission over TLS from the first byte


class MtaHandler:
    """The MTA's decisions for one listener: the :class:`services.smtp.server.RoleHandler` of the sender side."""

    def __init__(
        self,
        cfg: LabConfig,
        spool: Spool,
        *,
        on_enqueued: Callable[[], None],
        submission: bool = False,
        relay_client: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._spool = spool
        self._on_enqueued = on_enqueued
        self._submission = submission
        self._relay_client = relay_client or cfg.is_relay_client
        self._clock = clock

    def check_sender(self, client: Client, sender: policy.EnvelopePath) -> Reply:
        if self._submission:
            return policy.submission_sender(
                sender, authenticated=client.authenticated, relay_client=self._relay_client(client.peer_ip)
            )
        return policy.sender_ok(sender)

    def check_recipient(self, client: Client, recipient: policy.EnvelopePath) -> Reply:
        relay = client.authenticated or self._relay_client(client.peer_ip)
        return policy.recipient(self._cfg, recipient, relay=relay)

    async def accept_message(self, client: Client, sender: str, recipients: Sequence[str], message: bytes) -> Reply:
        now = self._clock()
        # The Received header goes into the data before it is stored, so pick the id first and ask
        # the spool to use it: the header, the 250 reply and `mailq` then name the same id.
        wanted_id = new_queue_id(now)
        received = received_header(self._cfg, client, queue_id=wanted_id, recipients=recipients, when=now)
        data = trace.prepend(message, received)
        try:
            queue_id = await self._spool.enqueue_async(sender, recipients, data, now=now, queue_id=wanted_id)
        except OSError as exc:
            return storage_failure(exc, "cannot queue the message")
        who = f" (AUTH {client.login})" if client.login else ""
        log.info("%s: queued from <%s>%s for %s (%d octets)", queue_id, sender, who, ", ".join(recipients), len(data))
        # The worker runs only once this task yields, that is after the 250 below is written.
        self._on_enqueued()
        return accepted(queue_id)


def local_delivery(cfg: LabConfig, mail_root: Path) -> LocalDelivery:
    """The delivery worker's final step for the MTA's own domains: Return-Path, then the Maildir
    (of the postmaster's alias for postmaster@, :meth:`LabConfig.mailbox_owner`)."""

    def deliver(sender: str, recipient: str, data: bytes) -> None:
        final = trace.prepend(data, trace.return_path(sender))  # RFC 5321 §4.4: at final delivery
        key = mailstore.deliver(mailstore.mailbox_dir(mail_root, cfg.mailbox_owner(recipient)), final)
        log.info("delivered from <%s> to local mailbox %s (%s)", sender, recipient, key)

    return deliver


async def start_mta(
    cfg: LabConfig,
    *,
    spool: Spool,
    on_enqueued: Callable[[], None],
    mail_root: Path = config.MAIL_DIR,
    host: str = "0.0.0.0",
    smtp_port: int = 25,
    submission_port: int = SUBMISSION_PORT,
    submissions_port: int = SUBMISSIONS_PORT,
    pop3_port: int = access.POP3_PORT,
    imap_port: int = access.IMAP_PORT,
    pop3s_port: int = access.POP3S_PORT,
    imaps_port: int = access.IMAPS_PORT,
    clock: Callable[[], float] = time.time,
    relay_client: Callable[[str], bool] | None = None,
    size_limit: int = MESSAGE_SIZE_LIMIT,
    faults: ReplyConsult | None = None,
    login_delay: LoginDelay = LOGIN_DELAY,
    tls: ServerTls | None = None,
) -> Listeners:
    """Start the MTA's listeners (port 0: any free port): SMTP, submission with AUTH, POP3, IMAP,
    and, when TLS is on, submission over TLS on ``submissions_port``, POP3S and IMAPS.
    ``faults``: replies injected instead of every SMTP listener's own (services.smtp.replyfaults).
    ``tls``: the listeners' TLS; by default as the lab configuration says (ServerTls.from_config).

    ``on_enqueued`` is called after each message is queued (the delivery worker's ``wake``).
    ``relay_client`` says which client addresses may relay without AUTH; by default the lab's
    rule, :meth:`LabConfig.is_relay_client` (its MUA hosts, and this host itself).
    """
    accounts = AccountAuthenticator(cfg.local_domains)  # the same users and passwords as POP3

    def handler(*, submission: bool) -> MtaHandler:
        return MtaHandler(cfg, spool, on_enqueued=on_enqueued, submission=submission,
                          relay_client=relay_client, clock=clock)

    fqdn = cfg.this.fqdn
    tls = tls if tls is not None else ServerTls.from_config(cfg)
    started: dict[str, asyncio.Server] = {}
    try:
        started["smtp"] = await listen(handler(submission=False), hostname=fqdn, host=host, port=smtp_port,
                                       clock=clock, size_limit=size_limit, postmaster=cfg.postmaster, faults=faults,
                                       tls=tls)
        for name, port, implicit in (("submission", submission_port, False), ("submissions", submissions_port, True)):
            if implicit and tls.context is None:
                continue  # TLS off: no port 465, the lab as it always was
            # The same handler on 465 as on 587 (RFC 8314 §3.3): only the TLS comes first.
            started[name] = await listen(handler(submission=True), hostname=fqdn, host=host, port=port,
                                         clock=clock, size_limit=size_limit, check_login=accounts.authenticate,
                                         login_delay=login_delay, postmaster=cfg.postmaster, faults=faults,
                                         tls=tls, tls_required=tls.auth_needs_tls, implicit_tls=implicit)
        ports = access.Ports(pop3_port, imap_port, pop3s_port, imaps_port)
        started.update(await access.start(cfg, tls, mail_root=mail_root, host=host, ports=ports))
    except BaseException:
        for server in started.values():
            server.close()
        raise
    return Listeners(started)


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="python3 -m services mta", description=__doc__.splitlines()[0]).parse_args(argv)
    cfg = runtime.start_role("mta")
    if cfg is None:
        return 1

    async def serve() -> None:
        spool = Spool(DEFAULT_SPOOL)
        worker = DeliveryWorker(cfg, spool, local_delivery=local_delivery(cfg, config.MAIL_DIR))
        delivering = asyncio.create_task(worker.run(), name="delivery")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, worker.flush)  # `queue --flush` sends it
        try:
            listeners = await start_mta(cfg, spool=spool, on_enqueued=worker.wake,
                                        faults=replyfaults.from_labctl(loop))
            try:
                await delivering  # runs until cancelled; if it ever ends, so does the MTA
            finally:
                await listeners.close()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
            delivering.cancel()
            await asyncio.gather(delivering, return_exceptions=True)
            await spool.settled()  # removals still queued for the disk: or a restart delivers them again

    return runtime.serve(serve)

