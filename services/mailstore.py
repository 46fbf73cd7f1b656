"""Mailboxes on disk, in Maildir format (https://cr.yp.to/proto/maildir.html).

The recipient MX delivers with :func:`deliver`; the POP3 server reads, deletes and locks with
:class:`Maildir`; the IMAP server (:mod:`services.imap.store`) reads the same files, keeps its flags
in their names and adds messages with :func:`add_message`. The POP3 lock is POP3's alone: IMAP
sessions never take it, so a POP3 session does not lock IMAP out, and each side copes with files
the other renamed or removed (a POP3 DELE+QUIT is an expunge to IMAP).

Maildir needs no locking to deliver: a message is written under a unique name in ``tmp/`` and
renamed into ``new/`` only once it is complete and on disk, so a reader never sees half a message
and a crash leaves at worst a stray file in ``tmp/``.

Messages are stored with LF line endings, the Maildir convention; POP3 puts the CRLFs back on the
wire, and a message's name carries its size in that form (:func:`services.textwire.wire_size`)
when its last line has a line end (then POP3, IMAP and Dovecot count the same).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.durable import DirectorySync, fsync_dir
from services.errors import PeerError
from services.textwire import wire_size

SUBDIRS = ("tmp", "new", "cur")
LOCK_NAME = ".lock"  # a dot name: Maildir readers skip it, and it is no valid message name
DIR_MODE = 0o700
FILE_MODE = 0o600
# A new name is unique by construction; a clash means a stale tmp/ file from a crashed delivery
# with a recycled pid, and the next counter value is free. More clashes than this is a bug.
UNIQUE_ATTEMPTS = 8

# Maildir's unique names, as we write them: "<seconds>.M<microseconds>P<pid>Q<counter>.<host>",
# then Maildir++'s ",S=<octets on disk>" and Dovecot's ",W=<octets with CRLF line ends>": the
# size POP3's STAT and LIST report (and IMAP's RFC822.SIZE), known from the name without reading
# the file.
_OUR_NAME = re.compile(r"(\d+)\.M(\d+)P(\d+)Q(\d+)\.")
_WIRE_SIZE = re.compile(r",W=(\d+)(?:,|$)")
_LEADING_SECONDS = re.compile(r"(\d+)\.")
_BAD_NAME_CHARS = ("/", "\\", "\0")


class BadMailboxName(PeerError, ValueError):
    """An address that cannot name a mailbox directory (path tricks, empty parts)."""


@dataclass(frozen=True)
class StoredMessage:
    key: str  # the Maildir unique name, without the ":2,flags" info of cur/
    size: int  # octets on disk (LF line endings)
    path: Path


def mailbox_dir(root: Path, address: str) -> Path:
    """The Maildir of ``user@domain`` under ``root``: ``root/<domain>/<user>``, lower-cased."""
    user, at, domain = address.lower().rpartition("@")
    if not at:
        raise BadMailboxName(f"{address!r} is not a user@domain address")
    for part in (user, domain):
        # A leading dot also rules out "." and "..", and keeps the lock file's namespace ours.
        if not part or part.startswith(".") or any(c in part for c in _BAD_NAME_CHARS):
            raise BadMailboxName(f"{address!r} cannot name a mailbox")
    return root / domain / user


# -- delivery --------------------------------------------------------------------------------

_counter_lock = threading.Lock()
_deliveries = 0


def _escaped_hostname() -> str:
    # The Maildir spec escapes the two characters that would break a name or its ":2," info.
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


_HOSTNAME = _escaped_hostname()


def _unique_name() -> str:
    global _deliveries
    with _counter_lock:
        _deliveries += 1
        counter = _deliveries
        # Read under the lock so that names from one process sort in delivery order.
        now_us = time.time_ns() // 1000
    seconds, micros = divmod(now_us, 1_000_000)
    return f"{seconds}.M{micros}P{os.getpid()}Q{counter}.{_HOSTNAME}"


def _make_dir(path: Path) -> None:
    """Create ``path`` and any missing parents, each entry synced into its parent directory."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass  # another delivery thread got there first; it syncs too, and so do we
        fsync_dir(directory.parent)


def ensure_maildir(mailbox: Path) -> None:
    """Create the Maildir's ``tmp/``, ``new/`` and ``cur/`` where missing, each synced into its parent."""
    for sub in SUBDIRS:
        if not (mailbox / sub).is_dir():
            _make_dir(mailbox / sub)


def _write_new_tmp(mailbox: Path, data: bytes) -> str:
    sizes = f",S={len(data)}"
    if not data or data.endswith(b"\n"):
        # Dovecot's W= (RFC822.SIZE, every LF a CRLF) is POP3's size only when the last line
        # has its line end (POP3 adds one, IMAP does not); Dovecot trusts a W= it finds, so a
        # message without one gets none and is counted from the file.
        sizes += f",W={wire_size(data)}"
    for _ in range(UNIQUE_ATTEMPTS):
        key = _unique_name() + sizes
        tmp = mailbox / "tmp" / key
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return key
    raise FileExistsError(errno.EEXIST, "no unique Maildir name found", str(mailbox / "tmp"))


def deliver(mailbox: Path, message: bytes) -> str:
    """Store ``message`` durably in ``mailbox`` and return its unique key.

    When this returns, the message is in ``new/`` and on disk: an SMTP server may answer ``250``
    (with that reply it takes responsibility for the message, RFC 5321 §6.1). Raises ``OSError``.
    Safe to call from several threads and processes at once.
    """
    [result] = deliver_batch([(mailbox, message)])
    if isinstance(result, OSError):
        raise result
    return result


def deliver_batch(items: list[tuple[Path, bytes]]) -> list[str | OSError]:
    """:func:`deliver` for several messages: each one's key, or why it could not be stored.

    The files are written and fsync'd one after the other, renamed into ``new/``, and each
    mailbox's ``new/`` is synced once for the batch. Nothing is reported stored before that.
    """
    results: list[str | OSError] = []
    moved: set[Path] = set()
    for mailbox, message in items:
        try:
            ensure_maildir(mailbox)
            key = _write_new_tmp(mailbox, message.replace(b"\r\n", b"\n"))
            tmp = mailbox / "tmp" / key
            try:
                os.rename(tmp, mailbox / "new" / key)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            moved.add(mailbox)
            results.append(key)
        except OSError as exc:
            results.append(exc)
    for mailbox in moved:
        try:
            _new_dir_sync(mailbox).sync()  # shared with other threads delivering to this mailbox
        except OSError as exc:  # renamed but maybe not durable: report it, the client retries
            results = [exc if isinstance(r, str) and m == mailbox else r
                       for (m, _), r in zip(items, results, strict=True)]
    return results


def add_message(mailbox: Path, message: bytes, info: str, mtime: float | None = None) -> str:
    """Store ``message`` durably in ``cur/`` with Maildir ``info`` (``2,FS``: its flags) and return its key.

    IMAP's APPEND, COPY and MOVE: the message is already seen by a client, so it skips ``new/``
    (Maildir: ``new/`` holds what no reader has looked at). ``mtime`` is its IMAP internal date
    (RFC 3501 §2.3.3). When this returns the file and its name are on disk (an ``OK`` may follow).
    """
    ensure_maildir(mailbox)
    key = _write_new_tmp(mailbox, message.replace(b"\r\n", b"\n"))
    tmp = mailbox / "tmp" / key
    try:
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.rename(tmp, mailbox / "cur" / f"{key}:{info}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(mailbox / "cur")
    return key


_dir_syncs: dict[Path, DirectorySync] = {}
_dir_syncs_lock = threading.Lock()


def _new_dir_sync(mailbox: Path) -> DirectorySync:
    with _dir_syncs_lock:
        sync = _dir_syncs.get(mailbox)
        if sync is None:
            sync = _dir_syncs[mailbox] = DirectorySync(mailbox / "new")
        return sync


# -- reading, deleting, locking ----------------------------------------------------------------


def delivery_order(key: str, mtime: float) -> tuple[int, int, int, int, str]:
    """The order messages were delivered in: from the name (:func:`name_order`), else ``mtime``."""
    return name_order(key) or (int(mtime), 0, 0, 0, key)


def name_order(key: str) -> tuple[int, int, int, int, str] | None:
    """:func:`delivery_order` when the name alone gives it (no mtime needed), else None."""
    ours = _OUR_NAME.match(key)
    if ours:
        seconds, micros, pid, counter = map(int, ours.groups())
        return (seconds, micros, counter, pid, key)
    # Names from other delivery agents start with the seconds too; failing that, trust mtime.
    leading = _LEADING_SECONDS.match(key)
    return (int(leading.group(1)), 0, 0, 0, key) if leading else None


def message_entries(mailbox: Path, *, missing_ok: bool) -> Iterator[tuple[str, os.DirEntry[str], bool]]:
    """(key, directory entry, in ``new/``) of every message file in ``new/``, then ``cur/``.

    From the directory listing alone: the file type comes from the entry (d_type), so no stat(2)
    per message where the file system gives it. ``cur/`` comes second: a message caught moving from
    ``new/`` is listed in both, and a caller keeping the last entry of a key keeps ``cur/``'s.
    ``missing_ok=False``: a missing ``new/`` or ``cur/`` raises ``FileNotFoundError``.
    """
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(os.path.join(mailbox, sub)))
        except FileNotFoundError:
            if missing_ok:
                continue
            raise
        in_new = sub == "new"
        for entry in entries:
            name = entry.name
            # A dot name is no message (the lock file, an editor's leftovers); is_file() is False
            # for a file removed while we looked.
            if name[0] != "." and entry.is_file(follow_symlinks=False):
                yield name.split(":", 1)[0], entry, in_new


def _check_key(key: str) -> None:
    if not key or key.startswith(".") or "/" in key or "\0" in key:
        raise FileNotFoundError(errno.ENOENT, "no such message", key)


class MailboxLock:
    """An exclusive, non-blocking lock on a mailbox, held by one open file.

    ``flock`` locks belong to an open file description, so two sessions in one process exclude
    each other just as two processes do, and the kernel drops the lock if the holder dies.
    """

    def __init__(self, mailbox: Path) -> None:
        self._mailbox = mailbox
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; ``False`` if someone does. Raises ``OSError``."""
        if self._fd is not None:
            return True
        ensure_maildir(self._mailbox)
        fd = os.open(self._mailbox / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock


class Maildir:
    """One mailbox: its messages in delivery order, their bytes, deletion, and the session lock.

    This is the mailbox the POP3 core expects (:class:`services.pop3.core.Mailbox`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = MailboxLock(path)
        self._paths: dict[str, str] = {}

    def _scan(self, *, sizes: bool) -> list[tuple[str, str, int | None]]:
        """(key, path, octets on disk or None) of every message in ``new/`` and ``cur/``, oldest
        delivery first; ``sizes=False`` looks at the names alone, with no stat(2) per message for
        the names that carry their delivery time (ours, and every agent's that starts with it)."""
        found: dict[str, tuple[tuple[int, int, int, int, str], str, int | None]] = {}
        for key, entry, _ in message_entries(self.path, missing_ok=True):
            try:
                size: int | None = None
                if sizes:
                    st = entry.stat(follow_symlinks=False)
                    order, size = delivery_order(key, st.st_mtime), st.st_size
                else:
                    order = name_order(key) or delivery_order(key, entry.stat(follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                continue  # deleted while we looked
            found[key] = (order, entry.path, size)
        ordered = sorted(found.items(), key=lambda item: item[1][0])
        self._paths = {key: path for key, (_, path, _) in ordered}
        return [(key, path, size) for key, (_, path, size) in ordered]

    def messages(self) -> list[StoredMessage]:
        """The messages in ``new/`` and ``cur/``, oldest delivery first, with their sizes on disk."""
        return [StoredMessage(key, size or 0, Path(path)) for key, path, size in self._scan(sizes=True)]

    def keys(self) -> list[str]:
        """The messages' keys, oldest delivery first, from the directories' names alone: what a
        POP3 login needs (the sizes are in the names, :meth:`wire_size`)."""
        return [key for key, _, _ in self._scan(sizes=False)]

    def wire_size(self, key: str) -> int | None:
        """The message's size with CRLF line ends from its name (``,W=``), or None: read it."""
        found = _WIRE_SIZE.search(key)
        return int(found.group(1)) if found else None

    def _path_of(self, key: str, *, fresh: bool) -> Path | None:
        _check_key(key)
        if fresh or key not in self._paths:
            self._scan(sizes=False)
        path = self._paths.get(key)
        return Path(path) if path is not None else None

    def read(self, key: str) -> bytes:
        """The stored bytes of message ``key``; ``FileNotFoundError`` if there is none."""
        for fresh in (False, True):  # a cached path may be stale if another agent moved the file
            path = self._path_of(key, fresh=fresh)
            if path is None:
                break
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue
        raise FileNotFoundError(errno.ENOENT, "no such message", key)

    def delete(self, key: str) -> None:
        """Remove message ``key`` durably; a message already gone counts as removed."""
        for fresh in (False, True):
            path = self._path_of(key, fresh=fresh)
            if path is None:
                return
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            self._paths.pop(key, None)
            fsync_dir(path.parent)
            return

    def try_lock(self) -> bool:
        """Take this mailbox's exclusive lock (creating the Maildir if needed); ``False`` if held."""
        return self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()
