"""``python3 -m services store ADDRESS [--json]``: a user's mailbox as the server keeps it.

Read-only: it lists what the MX (or the MTA, for its own domains) has stored in the Maildir of
``ADDRESS``, with each message's headers, text and MIME tree, without a POP3 session (which would
show in the capture and take the mailbox lock). labctl's scenarios check mailboxes with it; a
student can run it on the mail host to see what `fetch` will find.
"""

from __future__ import annotations

import argparse
import json
import sys
from email.message import Message
from pathlib import Path
from typing import Any

from services import config, mailstore
from services.imap.store import flags_of
from services.mua import view


def delivery_status(msg: Message) -> list[dict[str, str]]:
    """The per-recipient fields of a bounce's message/delivery-status part (RFC 3464 §2.3)."""
    # The first block of a report is per-message; the others, one per recipient.
    return [dict(block) for part in view.tree(msg) for block in part.report[1:]]


def messages(root: Path, address: str) -> list[dict[str, Any]]:
    box = mailstore.Maildir(mailstore.mailbox_dir(root, address))
    out: list[dict[str, Any]] = []
    for number, stored in enumerate(box.messages(), start=1):
        try:
            data = box.read(stored.key)
        except FileNotFoundError:  # deleted by a POP3 QUIT while we looked
            continue
        entry: dict[str, Any] = {"number": number, "key": stored.key, "size": stored.size}
        msg = view.parse(data)
        entry.update(view.message_json(msg))
        entry["delivery_status"] = delivery_status(msg)
        # The flags IMAP keeps in the file's name (":2,S": \Seen), which POP3 leaves alone.
        entry["flags"] = sorted(flags_of(stored.path.name.partition(":")[2])[0])
        out.append(entry)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m services store", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="user@domain")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--root", type=Path, default=config.MAIL_DIR, help=f"mail root (default {config.MAIL_DIR})")
    args = parser.parse_args(argv)
    try:
        found = messages(args.root, args.address)
    except mailstore.BadMailboxName as exc:
        print(f"store: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
        return 0
    if not found:
        print(f"no messages stored for {args.address}")
    for m in found:
        print(f"{m['number']:>3}  {m['size']:>8}  {m['headers'].get('from', '')}  {m['headers'].get('subject', '')}")
    return 0
