"""Dovecot as the lab's POP3 and IMAP server over the Maildirs Postfix delivers into.

Users and passwords come from the lab configuration, like our POP3 and IMAP servers': ``betty``
or ``betty@stevenchoy.example``, a bare name only when one local domain has it. Plain USER/PASS
and LOGIN without TLS, as in the article's Activity 2, unless the lab has TLS (issue 12): then
Dovecot offers STLS/STARTTLS and 995/993 with the host's lab certificate, and refuses passwords
on a clear channel when the lab's ``auth_needs_tls`` says so, as ours do. The store is the same
Maildir++ with ``dovecot-uidlist`` that our IMAP server keeps, so either can serve it. Pure
functions, unit-tested without Dovecot.
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

from services import config, mailstore
from services.config import LabConfig
from services.reference.postfix import SASL_SOCKET, VMAIL_GID, VMAIL_UID

DOVECOT_CONF = "/etc/dovecot/dovecot.conf"
USERS_FILE = "/etc/dovecot/maillab-users"


def tls_settings(cfg: LabConfig, cert: Path = config.TLS_CERT, key: Path = config.TLS_KEY) -> str:
    """The ssl lines: on only when the lab has TLS and labctl gave this host its certificate.

    Dovecot's ``disable_plaintext_auth`` is the lab's ``auth_needs_tls``: no password on a clear
    channel (LOGIN and USER/PASS refused, AUTH=PLAIN not offered before STARTTLS), as our servers.
    """
    if not (cfg.tls.enabled and cert.exists()):
        return "ssl = no\ndisable_plaintext_auth = no\n"
    plaintext = "yes" if cfg.tls.auth_needs_tls else "no"
    return f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\ndisable_plaintext_auth = {plaintext}\n"


def dovecot_conf(cfg: LabConfig, *, sasl_for_postfix: bool, cert: Path = config.TLS_CERT,
                 key: Path = config.TLS_KEY) -> str:
    """dovecot.conf; ``sasl_for_postfix``: also Postfix's AUTH backend (the MTA's submission port)."""
    auth_socket = ""
    if sasl_for_postfix:
        auth_socket = f"""
service auth {{
  unix_listener /var/spool/postfix/{SASL_SOCKET} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""
    return f"""# written by maillab (services/reference/dovecot.py) for {cfg.this.fqdn} in lab {cfg.lab}
protocols = pop3 imap
listen = *
{tls_settings(cfg, cert, key)}auth_mechanisms = plain login
log_path = /dev/stderr
base_dir = /run/dovecot
first_valid_uid = {VMAIL_UID}
mail_location = maildir:~

passdb {{
  driver = passwd-file
  args = {USERS_FILE}
}}
userdb {{
  driver = passwd-file
  args = {USERS_FILE}
}}
{auth_socket}"""


def users_file(cfg: LabConfig) -> str:
    """passwd-file lines: login:{{PLAIN.b64}}password:uid:gid::home (home = the user's Maildir).

    The password travels base64-encoded so that any character of it (':' included) is safe.
    """
    accounts = [a for d in cfg.local_domains for a in d.accounts]
    bare = Counter(a.user.lower() for a in accounts)
    lines = []
    for a in accounts:
        home = mailstore.mailbox_dir(config.MAIL_DIR, a.address)
        secret = base64.b64encode(a.password.encode("utf-8")).decode("ascii")
        entry = f"{{PLAIN.b64}}{secret}:{VMAIL_UID}:{VMAIL_GID}::{home}::"
        logins = [a.address.lower()] + ([a.user.lower()] if bare[a.user.lower()] == 1 else [])
        lines += [f"{login}:{entry}" for login in logins]
    return "\n".join(lines) + ("\n" if lines else "")
