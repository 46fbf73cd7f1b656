"""The local copy of the user's mail: a Maildir, and the POP3 and IMAP UIDs already fetched into it.

Messages are numbered 1..N by delivery time (the file's modification time, which the stdlib
Maildir reports as the message date), ties broken by the Maildir key. A fetch only adds files
with later times, so a number, once shown, keeps meaning the same message.
"""

from __future__ import annotations

import json
import mailbox
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.mua.errors import MuaError

# The UIDs of the messages already fetched, per account and server: POP3's (RFC 1939 §7, UIDL),
# and IMAP's as "UIDVALIDITY/UID" per folder (services.mua.imapfetch; the name is from when there
# was only POP3). It lives beside new/, cur/ and tmp/, where Maildir readers do not look.
SEEN_FILE = "pop3-uids.json"
SEEN_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    number: int
    key: str
    delivered: float  # seconds since the epoch
    size: int


class LocalMailbox:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self, *, create: bool) -> mailbox.Maildir | None:
        if not create and not (self.path / "cur").is_dir():
            return None
        try:
            return mailbox.Maildir(self.path, factory=None, create=create)
        except OSError as exc:
            raise MuaError(f"cannot open the local mailbox {self.path}: {exc.strerror or exc}") from exc

    # -- messages --------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        box = self._open(create=False)
        if box is None:
            return []
        found = []
        for key in box.keys():
            try:
                delivered = box.get_message(key).get_date()
                size = len(box.get_bytes(key))
            except (KeyError, OSError):  # removed by another program while we looked
                continue
            found.append((delivered, key, size))
        found.sort()
        return [Entry(i, key, delivered, size) for i, (delivered, key, size) in enumerate(found, start=1)]

    def get(self, number: int) -> tuple[Entry, bytes]:
        """Message ``number`` as stored, byte for byte."""
        entries = self.entries()
        if not 1 <= number <= len(entries):
            have = f"messages 1 to {len(entries)}" if entries else "no messages (run `mail fetch` first)"
            raise MuaError(f"no message {number} in {self.path}: it has {have}")
        entry = entries[number - 1]
        return entry, self.read(entry)

    def read(self, entry: Entry) -> bytes:
        box = self._open(create=False)
        try:
            if box is None:
                raise KeyError(entry.key)
            return box.get_bytes(entry.key)
        except (KeyError, OSError) as exc:
            raise MuaError(f"message {entry.number} vanished from {self.path} while reading it; "
                           "try again") from exc

    def add(self, data: bytes) -> str:
        """Store a message; return its Maildir key."""
        box = self._open(create=True)
        assert box is not None
        try:
            return box.add(data)
        except OSError as exc:
            raise MuaError(f"cannot store a message in {self.path}: {exc.strerror or exc}") from exc

    # -- UIDs of fetched messages ----------------------------------------------------------------

    @property
    def seen_path(self) -> Path:
        return self.path / SEEN_FILE

    def _read_seen(self) -> dict[str, list[str]]:
        try:
            text = self.seen_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise MuaError(f"cannot read {self.seen_path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
            accounts = data["accounts"]
            if data.get("format") != SEEN_FORMAT or not isinstance(accounts, dict):
                raise ValueError("unknown format")
            return {str(k): [str(u) for u in v] for k, v in accounts.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MuaError(f"{self.seen_path} is damaged ({exc}); remove it, and the next fetch "
                           "takes every message on the server again") from exc

    def seen(self, account: str) -> set[str]:
        """The UIDs already fetched from ``account`` (a "user at server:port" string, or imapfetch.account_key's)."""
        return set(self._read_seen().get(account, []))

    def remember(self, account: str, uids: Iterable[str]) -> None:
        """Replace the UIDs remembered for ``account``, atomically: a crash leaves the old list."""
        accounts = self._read_seen()
        accounts[account] = sorted(set(uids))
        self.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": SEEN_FORMAT, "accounts": accounts}, indent=1, sort_keys=True)
        tmp = ""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".pop3-uids.", dir=self.path)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.seen_path)
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise MuaError(f"cannot write {self.seen_path}: {exc.strerror or exc}") from exc
