"""The ``postfix-mta`` and ``postfix-mx`` roles: Postfix for SMTP, Dovecot for POP3 and IMAP.

``postfix-mx`` stands in for our ``mx`` (mail.stevenchoy.example): SMTP on 25 for its domains'
users, POP3 on 110, IMAP on 143. ``postfix-mta`` stands in for our ``mta`` (smtp.ouhk.example): the same for
its own domain (andy's mailbox), plus relaying for the lab's MUA hosts, and submission on 587
with AUTH against the lab accounts (Dovecot is Postfix's SASL backend). Each start writes the
configuration from the lab's, then runs ``postfix start-fg`` and ``dovecot -F`` in the foreground.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services import config, runtime
from services.config import LabConfig
from services.reference import dovecot, postfix, supervise

# Left behind by a killed container (`labctl kill`); in the restarted one the recorded PID may belong
# to another process, and Dovecot then refuses to start ("already running").
PID_FILES = (Path("/run/dovecot/master.pid"), Path("/var/spool/postfix/pid/master.pid"))


def write_files(cfg: LabConfig, *, mta: bool) -> None:
    files = {
        postfix.MAIN_CF: postfix.main_cf(cfg, mta=mta),
        postfix.VMAILBOX: postfix.virtual_mailboxes(cfg),
        dovecot.DOVECOT_CONF: dovecot.dovecot_conf(cfg, sasl_for_postfix=mta),
        dovecot.USERS_FILE: dovecot.users_file(cfg),
    }
    for path, text in files.items():
        Path(path).write_text(text, encoding="utf-8")
    os.chmod(dovecot.USERS_FILE, 0o640)  # passwords: root and Dovecot's auth process only
    os.chown(dovecot.USERS_FILE, 0, _dovecot_gid())
    # The lab's mail volume is created by the engine, owned by root; virtual(8) delivers as vmail.
    config.MAIL_DIR.mkdir(parents=True, exist_ok=True)
    for root, dirs, names in os.walk(config.MAIL_DIR):
        for name in (root, *(os.path.join(root, n) for n in dirs + names)):
            os.chown(name, postfix.VMAIL_UID, postfix.VMAIL_GID)


def _dovecot_gid() -> int:
    import grp

    return grp.getgrnam("dovecot").gr_gid


def main_for(role: str, argv: list[str]) -> int:
    argparse.ArgumentParser(prog=f"python3 -m services {role}", description=__doc__.splitlines()[0]).parse_args(argv)
    cfg = runtime.start_role(role)
    if cfg is None:
        return 1
    write_files(cfg, mta=role == "postfix-mta")
    supervise.remove_stale(PID_FILES)
    return supervise.run([["postfix", "start-fg"], ["dovecot", "-F"]])


def main_mta(argv: list[str]) -> int:
    return main_for("postfix-mta", argv)


def main_mx(argv: list[str]) -> int:
    return main_for("postfix-mx", argv)
