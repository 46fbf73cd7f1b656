"""Postfix as the lab's sender MTA or recipient MX: its configuration, written from the lab's.

Pure functions of the :class:`LabConfig`, so the files are unit-tested without Postfix. The mail
host's domains are Postfix *virtual mailbox* domains: virtual(8) delivers into the same Maildirs
our MX writes (``/var/mail/maillab/<domain>/<user>/``) as the ``vmail`` user, and Dovecot serves
them by POP3. Everything that decides durability stays at Postfix's defaults: the queue file and
the Maildir file are fsync'd before ``250``, as ours are.
"""

from __future__ import annotations

from pathlib import Path

from services import config
from services.config import LabConfig

MAIN_CF = "/etc/postfix/main.cf"
VMAILBOX = "/etc/postfix/vmailbox"
VMAIL_UID = VMAIL_GID = 5000  # the vmail user of compose/reference/Dockerfile
SASL_SOCKET = "private/auth"  # Dovecot's auth socket, relative to Postfix's queue directory
MESSAGE_SIZE_LIMIT = 10 * 1024 * 1024  # as our servers (services.smtp.server)


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


def main_cf(cfg: LabConfig, *, mta: bool, certificate: Path = config.TLS_CERT) -> str:
    """main.cf for this host; ``mta``: also relay for the lab's MUA hosts and on 587 after AUTH;
    TLS when the lab has it on and this host's ``certificate`` is there."""
    me = cfg.this
    domains = [d.name for d in cfg.local_domains]
    # Relay as our MTA does (LabConfig.is_relay_client): this host and the lab's MUA hosts; an MX
    # relays for nobody (RFC 5321 §7.1).
    clients = [f"{address}/32" for address in cfg.relay_clients] if mta else []
    # A backup MX takes its domains' mail from anyone and relays it on to the better MX (RFC 5321
    # §5.1), as our MTA does (LabConfig.is_backup_mx); Postfix calls those domains relay_domains.
    backups = [d.name for d in cfg.domains if cfg.is_backup_mx(d.name)]
    retry = cfg.retry
    settings = [
        ("compatibility_level", "3.6"),
        ("myhostname", me.fqdn),
        ("mydomain", me.fqdn.partition(".")[2] or me.fqdn),
        ("myorigin", "$mydomain"),
        ("mydestination", "localhost"),
        ("inet_interfaces", "all"),
        ("inet_protocols", "ipv4"),
        ("mynetworks", " ".join(["127.0.0.0/8", *clients])),
        ("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"),
        ("smtpd_banner", "$myhostname ESMTP Postfix"),
        ("virtual_mailbox_domains", " ".join(domains)),
        ("relay_domains", " ".join(backups)),
        ("virtual_mailbox_maps", f"texthash:{VMAILBOX}"),
        ("virtual_mailbox_base", str(config.MAIL_DIR)),
        ("virtual_uid_maps", f"static:{VMAIL_UID}"),
        ("virtual_gid_maps", f"static:{VMAIL_GID}"),
        ("message_size_limit", str(MESSAGE_SIZE_LIMIT)),
        ("virtual_mailbox_limit", "0"),
        *_tls_settings(cfg, certificate),
        ("smtpd_sasl_type", "dovecot"),
        ("smtpd_sasl_path", SASL_SOCKET),
        ("smtpd_sasl_auth_enable", "no"),  # port 25; master.cf turns it on for submission
        # The lab's retry schedule (x-maillab.retry), as our MTA follows it: seconds, not hours.
        ("queue_run_delay", _seconds(retry.schedule[0])),
        ("minimal_backoff_time", _seconds(retry.schedule[0])),
        ("maximal_backoff_time", _seconds(retry.schedule[-1])),
        ("maximal_queue_lifetime", _seconds(retry.give_up)),
        ("bounce_queue_lifetime", _seconds(retry.give_up)),
        # Logs go to the container's output (`labctl logs`), there is no syslog in a lab host.
        ("maillog_file", "/dev/stdout"),
        ("alias_maps", ""),
        ("alias_database", ""),
        ("biff", "no"),
        ("append_dot_mydomain", "no"),
    ]
    lines = [f"# written by maillab (services/reference/postfix.py) for {me.fqdn} in lab {cfg.lab}"]
    lines += [f"{key} = {value}".rstrip() for key, value in settings]
    return "\n".join(lines) + "\n"


def _tls_settings(cfg: LabConfig, certificate: Path) -> list[tuple[str, str]]:
    """TLS as our servers do it (issue 12): STARTTLS offered on 25 and 587, AUTH only under TLS
    when ``auth_needs_tls``, and the relay's STARTTLS per ``tls.relay``. Off, or without this
    host's certificate: none at all, the lab's wire is for reading."""
    if not cfg.tls.enabled or not certificate.exists():
        return [("smtpd_tls_security_level", "none"), ("smtp_tls_security_level", "none")]
    # Postfix's "verify" checks the name against the MX host name, as our relay's verify does.
    relay = {"may": "may", "verify": "verify"}.get(cfg.tls.relay, "none")
    return [
        ("smtpd_tls_cert_file", str(certificate)),
        ("smtpd_tls_key_file", str(config.TLS_KEY)),
        ("smtpd_tls_security_level", "may"),
        ("smtpd_tls_auth_only", "yes" if cfg.tls.auth_needs_tls else "no"),
        ("smtpd_tls_received_header", "yes"),  # the "(using TLSv1.3 with cipher ...)" ours writes too
        ("smtp_tls_security_level", relay),
        ("smtp_tls_CAfile", str(config.TLS_CA)),
    ]


def virtual_mailboxes(cfg: LabConfig) -> str:
    """virtual_mailbox_maps: each account -> its Maildir under the base (a trailing / means Maildir)."""
    lines = [f"{a.address.lower()} {a.domain.lower()}/{a.user.lower()}/"
             for d in cfg.local_domains for a in d.accounts]
    return "\n".join(lines) + ("\n" if lines else "")
