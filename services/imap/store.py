"""One user's mail as IMAP keeps it, in a layout Dovecot reads too.

* Folders are Maildir++ (https://cr.yp.to/proto/maildir.html, Courier's Maildir++): INBOX is the
  user's Maildir (:func:`services.mailstore.mailbox_dir`), ``Sent`` is its subdirectory
  ``.Sent``, ``Lists.lab`` is ``.Lists.lab``; the hierarchy separator is ".".
* Flags are in each file's name, after ``:2,``: ``D`` \\Draft, ``F`` \\Flagged, ``R`` \\Answered,
  ``S`` \\Seen, ``T`` \\Deleted, in ASCII order. Other letters (Dovecot's keywords) are kept.
* UIDs are in ``dovecot-uidlist`` beside ``cur/`` (Dovecot's version 3 format: a header
  ``3 V<uidvalidity> N<next uid> G<guid>``, then one ``<uid> :<name>`` line per message, the name
  without its ``:2,`` info). It is changed only under ``dovecot-uidlist.lock``, created exclusively
  (Dovecot's dotlock): the new list is written into the lock file, synced and renamed over the old
  one, so readers see the old list or the new one, and a crash leaves the old one.
  UIDs are handed out in delivery order and never reused; UIDVALIDITY is new only when a list is
  created (a new or recreated mailbox), taken from ``dovecot-uidvalidity`` so that it grows.

Nothing here takes POP3's session lock (:class:`services.mailstore.MailboxLock`): POP3 and IMAP
share the files, each coping with names the other changed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import operator
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from services.durable import fsync_dir
from services.errors import PeerError
from services.mailstore import add_message, delivery_order, ensure_maildir, message_entries, name_order
from services.textwire import crlf_size

SEPARATOR = "."
UIDLIST = "dovecot-uidlist"
UIDLIST_LOCK = "dovecot-uidlist.lock"
UIDVALIDITY_FILE = "dovecot-uidvalidity"
SUBSCRIPTIONS = "subscriptions"  # Dovecot's file beside INBOX: one subscribed name per line
FOLDER_MARK = "maildirfolder"  # Maildir++: an empty file that says "I am a folder, not a root"
LOCK_WAIT = 2.0  # seconds to wait for another process's uidlist lock before answering NO
LOCK_STALE = 30.0  # a lock file older than this is left over from a crash (Dovecot uses 2 min)
# A directory changed this recently may change again within the same mtime tick: rescan it
# rather than trust the cached listing (Dovecot's "dirty" window does the same).
DIRTY_WINDOW = 1.0
SCAN_ATTEMPTS = 5  # rescans when a directory changes while being read (a rename may be missed)

FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")  # RFC 3501 §2.3.2

_UIDLIST_HEADER = re.compile(r"3 (.*)")
# Every "<uid>[ <fields>] :<name>" line of the list at once: one C pass over 10,000 lines.
_UIDLIST_LINES = re.compile(r"^(\d+)(?: [^:\r\n]*)? :([^\r\n]+)\r?$", re.MULTILINE)
_WIRE_SIZE = re.compile(r",W=(\d+)(?:,|$)")
_BAD_NAME_CHARS = frozenset('/\\%*"\r\n\0')


class StoreError(PeerError):
    """A mailbox request the store refuses; ``code`` is the IMAP response code (RFC 5530)."""

    def __init__(self, text: str, code: str = "CANNOT") -> None:
        super().__init__(text)
        self.code = code


class Message(NamedTuple):
    """One message as a listing found it. A tuple, built without a Python ``__init__``: a
    listing of 10,000 builds 10,000 of them (:func:`_message`). Its internal date is not here:
    that takes a stat(2), done only when asked (:meth:`Folder.internal_date`)."""

    uid: int
    key: str  # the Maildir unique name, without ":2,<info>"
    path: str  # a str, not a Path: a folder of 10,000 builds 10,000 of them at each listing
    flags: frozenset[str]
    in_new: bool  # still in new/: no IMAP session has claimed it (RFC 3501 §2.3.2, \Recent)

    def wire_size(self) -> int:
        """RFC822.SIZE: the name's ``,W=`` if there, else counted from the file."""
        found = _WIRE_SIZE.search(self.key)
        if found:
            return int(found.group(1))
        with open(self.path, "rb") as f:
            return crlf_size(f.read())


_message = functools.partial(tuple.__new__, Message)  # Message(*row) in C: no Python __new__ per message


@functools.lru_cache(maxsize=256)  # a folder's names carry a handful of distinct infos ("2,", "2,S", ...)
def flags_of(info: str) -> tuple[frozenset[str], str]:
    """The system flags in a name's ``2,<letters>``, and the letters that are not ours to read."""
    letters = info[2:] if info.startswith("2,") else ""
    flags = frozenset(LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS)
    return flags, "".join(c for c in letters if c not in LETTER_FLAGS)


@contextlib.contextmanager
def _no_collections() -> Iterator[None]:
    """No cyclic garbage collection while a listing is built. It makes tens of thousands of
    objects and no cycles, and each collection it set off walked every object of the server:
    with a few folders of 10,000 listed, 40-70 ms of a 190 ms first SELECT (in process)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _info(path: str) -> str:
    """The ``2,<letters>`` after the colon of a message file's name ("" if none)."""
    return os.path.basename(path).partition(":")[2]


def info_for(flags: Iterable[str], other: str = "") -> str:
    return "2," + "".join(sorted({FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS} | set(other)))


@dataclass(frozen=True)
class _Stamp:
    """What says a folder changed: the mtimes of new/, cur/ and the uidlist, and the list's inode."""

    new: int
    cur: int
    uidlist: tuple[int, int, int]


class Folder:
    """One mailbox: its messages in UID order, their flags, and UIDs that last."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self._root = root  # where dovecot-uidvalidity lives: the user's INBOX
        # As strings, made once: a look at an unchanged folder is three stat(2) calls, and
        # joining Paths for them cost more than the calls.
        self._new, self._cur, self._uidlist = (os.path.join(path, n) for n in ("new", "cur", UIDLIST))
        self.uidvalidity = 0
        self.uidnext = 1
        self._uids: dict[str, int] = {}
        self._uidlist_read: tuple[int, int, int] | None = None  # the list _uids was read from
        self._dates: dict[str, float] = {}  # internal dates looked up, by key: a file's mtime stays
        self._messages: list[Message] = []
        self._stamp: _Stamp | None = None
        self.claimed: list[int] = []
        # Of the listing messages() last returned, built once for every session that SELECTs it.
        # Never changed in place, only replaced: sessions' views share them until they differ.
        self.any_new = False  # a message still in new/
        self.uid_list: list[int] = []
        self.by_uid: dict[int, Message] = {}
        self.first_unseen: int | None = None  # the number of the first message without \Seen

    # -- the listing ------------------------------------------------------------------------------

    def messages(self, *, claim_new: bool = False) -> list[Message]:
        """The messages in UID order, new ones given UIDs. Cheap when nothing changed.

        ``claim_new``: a read-write session moves ``new/`` into ``cur/`` as Dovecot does; the UIDs
        it moved are in :attr:`claimed` afterwards (they are \\Recent to that session alone).
        """
        self.claimed = []
        stamp = self._current_stamp()
        if stamp is not None and stamp == self._stamp and not (claim_new and self.any_new):
            return self._messages  # the same object: callers may tell "nothing changed" by identity
        with _no_collections():
            return self._list(claim_new)

    def _list(self, claim_new: bool) -> list[Message]:
        """The listing afresh: what messages() returns when something may have changed."""
        found = self._scan()
        self._read_uidlist()
        uids = self._uids
        if self.uidvalidity == 0 or not uids.keys() >= found.keys():
            self._assign(found)  # also creates the list of a new, empty mailbox: STATUS needs its UIDVALIDITY
            uids = self._uids
        claimed: list[int] = []
        if claim_new and any(in_new for _, _, in_new in found.values()):
            claimed = self._claim(found)
        # One tuple per message, sorted by UID (unique: the sort never looks further), then made
        # Messages in C. The flags of a name's info come from a cache: a folder has few distinct ones.
        rows = sorted((uids[key], key, path, flags_of(name.partition(":")[2])[0], in_new)
                      for key, (name, path, in_new) in found.items())
        messages = list(map(_message, rows))
        self.claimed = sorted(claimed)
        self._messages = messages
        self.any_new = any(m.in_new for m in messages)
        self.uid_list = [m.uid for m in messages]
        self.by_uid = dict(zip(self.uid_list, messages, strict=True))
        self.first_unseen = next((n for n, m in enumerate(messages, 1) if "\\Seen" not in m.flags), None)
        if len(self._dates) > len(found):  # dates of messages gone
            self._dates = {k: d for k, d in self._dates.items() if k in found}
        stamp = self._current_stamp()
        # A listing of a folder that may still change within its mtime tick is used, but not
        # trusted: the next look lists it again, however much later it comes.
        self._stamp = None if stamp is None or self._dirty(stamp) else stamp
        return messages

    def _claim(self, found: dict[str, tuple[str, str, bool]]) -> list[int]:
        """Move what is in new/ into cur/ (``found`` updated): the UIDs moved.

        The 10,000 renames of a folder's first SELECT are most of its cost, as they are of
        Dovecot's: each is named relative to the two directories' descriptors, so the kernel
        does not walk the folder's path twice per message."""
        claimed = []
        cur = self._cur
        new_fd = os.open(self._new, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            cur_fd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for key, (name, _, in_new) in list(found.items()):
                    if in_new:
                        target = f"{key}:2,"
                        try:
                            os.rename(name, target, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
                        except FileNotFoundError:
                            continue  # POP3 removed it, or another session claimed it first
                        found[key] = (target, f"{cur}/{target}", False)
                        claimed.append(self._uids[key])
            finally:
                os.close(cur_fd)
        finally:
            os.close(new_fd)
        return claimed

    def _current_stamp(self) -> _Stamp | None:
        try:
            new = os.stat(self._new).st_mtime_ns
            cur = os.stat(self._cur).st_mtime_ns
        except FileNotFoundError:
            return None
        try:
            st = os.stat(self._uidlist)
            uidlist = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            uidlist = (0, 0, 0)
        return _Stamp(new, cur, uidlist)

    @staticmethod
    def _dirty(stamp: _Stamp) -> bool:
        recent = time.time_ns() - int(DIRTY_WINDOW * 1e9)
        return max(stamp.new, stamp.cur) >= recent

    def _scan(self) -> dict[str, tuple[str, str, bool]]:
        """Every message file: key -> (name, path, in new/), from the directories' listings alone
        (no stat(2) per message). A directory that changed while it was read is read again: a
        file renamed meanwhile may have been in neither listing."""
        for _ in range(SCAN_ATTEMPTS):
            before = self._current_stamp()
            try:
                # cur/ second: a message caught moving is listed once, in cur/
                found = {key: (entry.name, entry.path, in_new)
                         for key, entry, in_new in message_entries(self.path, missing_ok=False)}
            except FileNotFoundError:
                raise StoreError("the mailbox is gone", "NONEXISTENT") from None
            after = self._current_stamp()
            if before is not None and after is not None and (before.new, before.cur) == (after.new, after.cur):
                break
        return found

    # -- dovecot-uidlist ----------------------------------------------------------------------------

    def _read_uidlist(self) -> None:
        """The UIDs from dovecot-uidlist, unless the file is the one last read: same inode, mtime
        and size (every writer replaces it by a rename, or appends to it), and that mtime older
        than the dirty window (two writes in one mtime tick, the second into a reused inode
        with the same size, would look the same)."""
        try:
            with open(self._uidlist, encoding="utf-8", errors="surrogateescape") as f:
                st = os.fstat(f.fileno())
                seen = (st.st_ino, st.st_mtime_ns, st.st_size)
                if seen == self._uidlist_read and st.st_mtime_ns < time.time_ns() - int(DIRTY_WINDOW * 1e9):
                    return
                text = f.read()
        except FileNotFoundError:
            self._uids = {}
            self.uidvalidity = 0
            self._uidlist_read = None
            return
        self._uidlist_read = None  # until this read is done
        first, _, rest = text.partition("\n")
        header = _UIDLIST_HEADER.fullmatch(first.rstrip("\r"))
        fields = {f[0]: f[1:] for f in header.group(1).split() if f} if header else {}
        try:
            self.uidvalidity = int(fields["V"])
            self.uidnext = int(fields["N"])
        except (KeyError, ValueError):
            # Not a list we can read (another version, or damaged): start one afresh. A new
            # UIDVALIDITY tells every client to forget what it cached, which is then the truth.
            self._uids = {}
            self.uidvalidity = 0
            return
        uids = {name: int(uid) for uid, name in _UIDLIST_LINES.findall(rest)}
        self._uids = uids
        self.uidnext = max(self.uidnext, max(uids.values(), default=0) + 1)
        self._uidlist_read = seen

    def _assign(self, found: dict[str, tuple[str, str, bool]]) -> None:
        """Give the messages without a UID the next ones, in delivery order, and write the list."""
        with _UidlistLock(self.path):
            self._read_uidlist()  # another process may have written since we read
            if self.uidvalidity == 0:
                self.uidvalidity = next_uidvalidity(self._root)
                self.uidnext = 1
            orders = {k: name_order(k) or self._order_by_mtime(k, path) for k, (_, path, _) in found.items()
                      if k not in self._uids}
            fresh = sorted(orders, key=orders.__getitem__)
            uids = dict(self._uids)  # a new dict: the one read may be the last read's, kept for its stamp
            for key in fresh:
                uids[key] = self.uidnext
                self.uidnext += 1
            # Messages gone from disk leave the list; their UIDs are never handed out again.
            self._uids = {k: u for k, u in uids.items() if k in found}
            self._write_uidlist()

    @staticmethod
    def _order_by_mtime(key: str, path: str) -> tuple[int, int, int, int, str]:
        """Delivery order of a name that does not tell it (:func:`name_order` tells it for ours,
        and any name that starts with its seconds): from the file's mtime, the one stat(2) then."""
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            mtime = 0.0  # gone meanwhile: it leaves the list at the next look
        return delivery_order(key, mtime)

    def _write_uidlist(self) -> None:
        guid = secrets.token_hex(16)
        lines = [f"3 V{self.uidvalidity} N{self.uidnext} G{guid}"]
        lines += [f"{uid} :{key}" for key, uid in sorted(self._uids.items(), key=operator.itemgetter(1))]
        lock = self.path / UIDLIST_LOCK
        with open(lock, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        os.rename(lock, self._uidlist)  # also releases the dotlock
        fsync_dir(self.path)
        self._uidlist_read = (st.st_ino, st.st_mtime_ns, st.st_size)  # what _uids now holds

    # -- changes ------------------------------------------------------------------------------------

    def read(self, message: Message) -> bytes:
        """The stored bytes; ``StoreError`` (EXPUNGEISSUED) if the message is gone."""
        for attempt in range(2):
            path = message.path if attempt == 0 else self._fresh_path(message.key)
            if path is None:
                break
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                continue
        raise StoreError("message was expunged", "EXPUNGEISSUED")

    def internal_date(self, message: Message) -> float:
        """RFC 3501 §2.3.3: the file's mtime (Dovecot's too), looked up at the first need and kept;
        ``StoreError`` (EXPUNGEISSUED) if the message is gone."""
        date = self._dates.get(message.key)
        if date is not None:
            return date
        for attempt in range(2):
            path = message.path if attempt == 0 else self._fresh_path(message.key)
            if path is None:
                break
            try:
                date = self._dates[message.key] = os.stat(path).st_mtime
                return date
            except FileNotFoundError:
                continue
        raise StoreError("message was expunged", "EXPUNGEISSUED")

    def _fresh_path(self, key: str) -> str | None:
        self._stamp = None
        return next((m.path for m in self.messages() if m.key == key), None)

    def set_flags(self, message: Message, flags: Iterable[str]) -> Message | None:
        """Rename the file to carry ``flags``: the message as it is now, or None if it is gone."""
        wanted = frozenset(f for f in flags if f in FLAG_LETTERS)
        for attempt in range(2):
            path = message.path if attempt == 0 else self._fresh_path(message.key)
            if path is None:
                return None
            _, other = flags_of(_info(path))
            target = os.path.join(self.path, "cur", f"{message.key}:{info_for(wanted, other)}")
            if target != path:
                try:
                    os.rename(path, target)
                except FileNotFoundError:
                    continue
                self._stamp = None
            return Message(message.uid, message.key, target, wanted, False)
        return None

    def remove(self, messages: Iterable[Message]) -> None:
        """Delete message files durably (EXPUNGE); one already gone counts as removed."""
        touched = False
        for message in messages:
            for attempt in range(2):
                path = message.path if attempt == 0 else self._fresh_path(message.key)
                if path is None:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                touched = True
                break
        if touched:
            fsync_dir(self.path / "cur")
            fsync_dir(self.path / "new")
            self._stamp = None

    def add(self, data: bytes, flags: Iterable[str], mtime: float | None = None) -> int:
        """Store a message (APPEND) durably and return its UID."""
        return self.add_many([(data, flags, mtime)])[0]

    def add_many(self, items: Iterable[tuple[bytes, Iterable[str], float | None]]) -> list[int]:
        """Store messages (COPY, MOVE) durably, one at a time as ``items`` yields them, and return
        their UIDs: given by one listing after the last, not one per message (a COPY of 1,000
        listed a 10,000-message folder 1,000 times)."""
        keys = [add_message(self.path, data, info_for(flags), mtime) for data, flags, mtime in items]
        if not keys:
            return []
        self._stamp = None
        self.messages()
        return [self._uids[key] for key in keys]

    def counts(self) -> tuple[int, int, int]:
        """STATUS: messages, recent (still in new/), unseen."""
        messages = self.messages()
        return (len(messages), sum(m.in_new for m in messages),
                sum("\\Seen" not in m.flags for m in messages))


class _UidlistLock:
    """Dovecot's dotlock on a folder's uidlist: ``dovecot-uidlist.lock``, created exclusively."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / UIDLIST_LOCK

    def __enter__(self) -> _UidlistLock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
                return self
            except FileExistsError:
                try:
                    if time.time() - os.stat(self.path).st_mtime > LOCK_STALE:
                        self.path.unlink(missing_ok=True)  # its holder crashed
                        continue
                except FileNotFoundError:
                    continue
            if time.monotonic() >= deadline:
                raise StoreError("the mailbox is busy, try again", "INUSE")
            # Only another process (Dovecot, on the reference hosts) holds it, briefly; sessions
            # of this server run one at a time and never leave it held.
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)  # gone already if the new list was renamed from it


def next_uidvalidity(root: Path) -> int:
    """A UIDVALIDITY greater than any this user's mailboxes had (the time, if it is later)."""
    hint = root / UIDVALIDITY_FILE
    try:
        last = int(hint.read_text().strip(), 16)
    except (FileNotFoundError, ValueError):
        last = 0
    value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1  # RFC 3501 §9: nz-number, 32 bits
    tmp = root / (UIDVALIDITY_FILE + ".tmp")
    tmp.write_text(f"{value:08x}\n")
    os.rename(tmp, hint)
    return value


# -- the folders of one user ------------------------------------------------------------------------


class Mailboxes:
    """A user's folders: INBOX at ``root``, the others as Maildir++ subdirectories.

    ``folders``: the listings already read, by path, shared by every session of the server (what
    Dovecot keeps in its index): a SELECT of a folder nothing changed since is not read again.
    """

    def __init__(self, root: Path, folders: dict[Path, Folder] | None = None) -> None:
        self.root = root
        self._folders: dict[Path, Folder] = {} if folders is None else folders

    def path_of(self, name: str) -> Path:
        if name.upper() == "INBOX":
            return self.root
        check_name(name)
        return self.root / ("." + name)

    def exists(self, name: str) -> bool:
        return (self.path_of(name) / "cur").is_dir() or name.upper() == "INBOX"

    def folder(self, name: str) -> Folder:
        path = self.path_of(name)
        if name.upper() == "INBOX":
            ensure_maildir(path)
        elif not (path / "cur").is_dir():
            raise StoreError(f"no mailbox {name}", "NONEXISTENT")
        folder = self._folders.get(path)
        if folder is None:
            folder = self._folders[path] = Folder(path, self.root)
        return folder

    def names(self) -> list[str]:
        """INBOX, then every folder, sorted."""
        ensure_maildir(self.root)
        found = []
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") and entry.name not in (".", "..") and entry.is_dir():
                name = entry.name[1:]
                try:
                    check_name(name)
                except StoreError:
                    continue
                if (Path(entry.path) / "cur").is_dir():
                    found.append(name)
        return ["INBOX", *sorted(found)]

    def create(self, name: str) -> None:
        name = name.rstrip(SEPARATOR)  # RFC 3501 §6.3.3: "foo." means create foo
        if name.upper() == "INBOX" or self.exists(name):
            raise StoreError(f"mailbox {name} already exists", "ALREADYEXISTS")
        path = self.path_of(name)
        ensure_maildir(path)
        mark = path / FOLDER_MARK
        mark.touch()
        fsync_dir(path)

    def delete(self, name: str) -> None:
        if name.upper() == "INBOX":
            raise StoreError("INBOX cannot be deleted")
        if not self.exists(name):
            raise StoreError(f"no mailbox {name}", "NONEXISTENT")
        path = self.path_of(name)
        self._folders.pop(path, None)
        # Renamed out of sight first, so that no half-deleted mailbox is ever listed.
        doomed_path = self.root / f".{secrets.token_hex(8)}.deleting"
        os.rename(path, doomed_path)
        fsync_dir(self.root)
        shutil.rmtree(doomed_path, ignore_errors=True)

    def rename(self, old: str, new: str) -> None:
        new = new.rstrip(SEPARATOR)
        if not self.exists(old):
            raise StoreError(f"no mailbox {old}", "NONEXISTENT")
        if new.upper() == "INBOX" or self.exists(new):
            raise StoreError(f"mailbox {new} already exists", "ALREADYEXISTS")
        target = self.path_of(new)
        if old.upper() == "INBOX":
            self._rename_inbox(new)
            return
        # RFC 3501 §6.3.5: the folder's children move with it.
        prefix = "." + old + SEPARATOR
        children = [e.name for e in os.scandir(self.root) if e.name.startswith(prefix)]
        os.rename(self.path_of(old), target)
        for child in children:
            os.rename(self.root / child, self.root / ("." + new + child[len("." + old):]))
        for path in [p for p in self._folders if p.parent == self.root]:
            del self._folders[path]  # this user's folders only: the others' listings stand
        fsync_dir(self.root)

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501 §6.3.5: renaming INBOX moves its messages to the new mailbox; INBOX stays, empty."""
        self.create(new)
        target = self.path_of(new)
        for sub in ("new", "cur"):
            for entry in os.scandir(self.root / sub):
                if not entry.name.startswith("."):
                    os.rename(entry.path, target / sub / entry.name)
            fsync_dir(target / sub)
            fsync_dir(self.root / sub)

    # -- subscriptions (RFC 3501 §6.3.6) -------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS).read_text("utf-8", "surrogateescape")
        except FileNotFoundError:
            return []
        # Dovecot 2.3 writes "V\t2" and a blank line before the names; older files have names only.
        return [line for line in text.splitlines() if line and line != "V\t2"]

    def subscribe(self, name: str, on: bool) -> None:
        if name.upper() != "INBOX":
            check_name(name)
        names = [n for n in self.subscriptions() if n != name]
        if on:
            names.append(name)
        ensure_maildir(self.root)
        tmp = self.root / (SUBSCRIPTIONS + ".tmp")
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("".join(n + "\n" for n in names))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.root / SUBSCRIPTIONS)
        fsync_dir(self.root)


def check_name(name: str) -> None:
    """A folder name that maps onto one Maildir++ directory and nothing else."""
    parts = name.split(SEPARATOR)
    if (not name or any(not p for p in parts) or any(c in _BAD_NAME_CHARS for c in name)
            or any(not 0x20 <= ord(c) < 0x7F for c in name) or name.endswith(".deleting")):
        raise StoreError(f"invalid mailbox name {name!r}", "CANNOT")

