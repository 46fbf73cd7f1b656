"""The sender MTA's durable queue: what has been accepted with ``250`` and is not yet delivered.

Layout under the spool root::

    msg/<id>     one line of JSON (envelope sender, queue time, the recipients' first state), a
                 LF, then the message exactly as received; written once, never changed
    state/<id>   JSON: the recipients' state once an attempt changed it (absent until then)
    tmp/         files being written; never read, emptied at start-up
    corrupt/     entries that could not be read, kept for a human, never delivered
    lock         flock(2) target so `queue --flush` and the MTA do not lose each other's update

Crash safety (design decision 8: nothing is acknowledged before it is durable). A message is
written in ``tmp/``, fsync'd, linked into ``msg/``, and ``msg/`` is fsync'd: that link is the
commit point of an enqueue, and costs two fsyncs, the second shared by every enqueue in flight
(:class:`services.durable.DirectorySync`). Envelope and data in one file, the state file only
when an attempt fails: a message delivered at the first attempt never costs a second file.
A state change is written in ``tmp/``, fsync'd, renamed over ``state/<id>``, and ``state/``
is fsync'd. Unlinking ``msg/<id>`` is the commit point of a removal; a ``state/<id>`` without its
message is what a crash in a removal leaves, and :meth:`Spool.recover` deletes it. After a crash
at any instant a message is either absent or complete.

Only one process enqueues and delivers (the MTA). ``python3 -m services queue`` opens the
same spool with ``recover=False`` and only reads it or rewrites states under the lock.

The owning process (``recover=True``) also keeps an index of the entries in memory: the disk is
read once, at recovery, and every later change goes to the disk first and then to the index. So
the delivery worker's "what is due?" costs no disk reads; re-reading every state file per pass
made that question grow with the queue, exactly when the queue is long. The queue command's
``--flush`` writes the disk from outside; the MTA's own :meth:`Spool.flush` (on SIGUSR1) reloads
the index from the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from services import config
from services.durable import Batcher, DirectorySync, fsync_dir
from services.errors import LocalError

log = logging.getLogger("services.smtp.spool")

# The MTA main and `python3 -m services queue` both open this spool.
DEFAULT_SPOOL = config.SPOOL_DIR / "queue"

# The data of messages just queued stay in memory (up to this much) for the delivery worker, which
# usually takes them within milliseconds: no second read of a file we have just written.
RECENT_DATA_LIMIT = 16 * 1024 * 1024
ENTRY_LOCK_STRIPES = 64  # locks shared by hash of the queue id: bounded, and rarely contended
STATE_VERSION = 1  # bump when the state file format changes incompatibly
MAX_HEADER = 1 << 20  # the envelope line of msg/<id>; a message has at most a few thousand recipients

_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_TIME_DIGITS = 6  # 62**6 seconds is ~1800 years: ids sort by queue time, like sendmail's
_ID_RANDOM_DIGITS = 6  # 62**6 ~ 5.7e10 per second; os.link() below still catches a collision


class SpoolError(LocalError):
    """The spool cannot do what was asked (unknown queue id, unreadable entry)."""


class Status(StrEnum):
    PENDING = "pending"  # still to be delivered; tried again at next_attempt
    DELIVERED = "delivered"  # a 2xx from the remote MX, or written to a local mailbox
    BOUNCED = "bounced"  # given up: a bounce went to the sender (none if the sender was <>)


@dataclass(frozen=True)
class RecipientState:
    address: str
    status: Status = Status.PENDING
    attempts: int = 0
    next_attempt: float = 0.0  # epoch seconds; meaningful while pending
    last_attempt: float | None = None
    last_error: str = ""  # human-readable reason of the last failed attempt
    dsn_status: str = ""  # RFC 3463 code of the last outcome ("4.4.1", "5.1.1")
    remote_mta: str = ""  # the MX host that gave the last reply
    diagnostic: str = ""  # that host's reply, "550 5.1.1 No such user"
    attempt_times: tuple[float, ...] = ()  # when each attempt ended (epoch seconds), oldest first
    tried: tuple[str, ...] = ()  # the last attempt's failed hosts with why, in the order tried
    # Given up on after a last attempt that no SMTP reply explained: what went wrong then
    # ("mail.stevenchoy.example[10.89.0.110]:25: connection refused"), for the bounce.
    attempt_error: str = ""

    @property
    def pending(self) -> bool:
        return self.status is Status.PENDING


@dataclass(frozen=True)
class QueueEntry:
    id: str
    sender: str  # "" is the null reverse-path <> (a bounce)
    queued_at: float
    size: int
    recipients: tuple[RecipientState, ...]

    @property
    def done(self) -> bool:
        return not any(r.pending for r in self.recipients)

    def due_recipients(self, now: float) -> tuple[RecipientState, ...]:
        return tuple(r for r in self.recipients if r.pending and r.next_attempt <= now)

    @property
    def next_attempt(self) -> float | None:
        times = [r.next_attempt for r in self.recipients if r.pending]
        return min(times) if times else None

    def recipient(self, address: str) -> RecipientState:
        for r in self.recipients:
            if r.address == address:
                return r
        raise SpoolError(f"{self.id}: no recipient {address!r}")


def is_null_sender(sender: str) -> bool:
    """The null reverse-path (RFC 5321 §4.5.5); aiosmtpd reports it as "<>"."""
    return sender in ("", "<>")


def new_queue_id(now: float) -> str:
    """A short id like sendmail's ``j8U9hrH01679``: queue time then random, base 62."""
    t = int(now)
    head = []
    for _ in range(_ID_TIME_DIGITS):
        t, digit = divmod(t, len(_ID_ALPHABET))
        head.append(_ID_ALPHABET[digit])
    r = secrets.randbelow(len(_ID_ALPHABET) ** _ID_RANDOM_DIGITS)  # one draw, not one per digit
    tail = []
    for _ in range(_ID_RANDOM_DIGITS):
        r, digit = divmod(r, len(_ID_ALPHABET))
        tail.append(_ID_ALPHABET[digit])
    return "".join(reversed(head)) + "".join(tail)


def _valid_id(name: str) -> bool:
    return len(name) == _ID_TIME_DIGITS + _ID_RANDOM_DIGITS and all(c in _ID_ALPHABET for c in name)


def _entry_to_json(entry: QueueEntry, *, indent: int | None = 1) -> bytes:
    # By hand, not dataclasses.asdict: its recursive deep copy showed up in the profile of every enqueue and record.
    doc: dict[str, Any] = {
        "version": STATE_VERSION, "id": entry.id, "sender": entry.sender, "queued_at": entry.queued_at,
        "size": entry.size, "recipients": [vars(r).copy() for r in entry.recipients],
    }
    # indent=None gives one line (JSON escapes every LF inside strings): the header of msg/<id>.
    return json.dumps(doc, indent=indent, sort_keys=True).encode("utf-8")


def _entry_from_json(raw: bytes) -> QueueEntry:
    doc = json.loads(raw)
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"state version {doc.get('version')!r}, expected {STATE_VERSION}")
    recipients = tuple(
        RecipientState(**{**r, "status": Status(r["status"]), "attempt_times": tuple(r.get("attempt_times", ())),
                          "tried": tuple(r.get("tried", ()))}) for r in doc["recipients"]
    )
    return QueueEntry(
        id=doc["id"],
        sender=doc["sender"],
        queued_at=float(doc["queued_at"]),
        size=int(doc["size"]),
        recipients=recipients,
    )


@dataclass(frozen=True)
class _Unlink:
    queue_id: str


@dataclass
class Staged:
    """A message written to ``tmp/`` and not yet committed (see :meth:`Spool.commit`)."""

    entry: QueueEntry  # its id may change once, if the one drawn is taken
    tmp: Path
    fd: int  # still open, for its fsync
    data: bytes


class Spool:
    """The queue on disk. Thread-safe; every method does its own (short, fsync'd) disk I/O."""

    def __init__(self, root: Path, *, recover: bool = True) -> None:
        self.root = root
        self._msg = root / "msg"
        self._state = root / "state"
        self._tmp = root / "tmp"
        self._corrupt = root / "corrupt"
        for d in (root, self._msg, self._state, self._tmp, self._corrupt):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._msg_sync = DirectorySync(self._msg)
        self._entry_locks = [threading.Lock() for _ in range(ENTRY_LOCK_STRIPES)]
        self._lock_path = root / "lock"
        # id -> entry, in queue order; None until recover(): then every read goes to the disk.
        self._index: dict[str, QueueEntry] | None = None
        self._index_lock = threading.Lock()
        self._recent: dict[str, bytes] = {}  # id -> data, for the owner's first delivery attempt
        self._recent_size = 0
        # enqueue_async's group commit and remove_soon's unlinks, on one thread, in batches
        self._background: Batcher[Staged | _Unlink, str | None] = Batcher(self._commit_and_unlink)
        if recover:
            self.recover()

    # -- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, queue_id: str | None = None) -> Iterator[None]:
        """Exclusive for one entry (``queue_id``), or for the whole spool (flush, recovery).

        Work on different entries proceeds in parallel, so their fsyncs overlap: one lock over
        the whole spool made every message wait for every other's disk writes. The flock on a
        file (shared for one entry, exclusive for the spool) holds against the queue CLI in
        another process as well as against other threads here (each call opens its own file).
        """
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if queue_id is not None else fcntl.LOCK_EX)
            if queue_id is None:
                yield
            else:
                with self._entry_locks[hash(queue_id) % ENTRY_LOCK_STRIPES]:
                    yield
        finally:
            os.close(fd)  # releases the flock

    # -- writing ---------------------------------------------------------------------------

    def _write_unsynced(self, content: bytes) -> tuple[int, Path]:
        """A new file in ``tmp/`` with ``content``, still open (for the fsync) and not yet synced."""
        fd, name = tempfile.mkstemp(dir=self._tmp)
        try:
            view = memoryview(content)
            while view:  # raw os.write, no buffered file object: this runs once per message
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            os.unlink(name)
            raise
        return fd, Path(name)

    def _write_tmp(self, content: bytes) -> Path:
        """A new file in ``tmp/`` with ``content``, synced and closed."""
        fd, path = self._write_unsynced(content)
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            path.unlink()
            raise
        return path

    def _commit_state(self, entry: QueueEntry) -> None:
        tmp = self._write_tmp(_entry_to_json(entry))
        os.replace(tmp, self._state / entry.id)  # atomic: readers see the old or the new state
        fsync_dir(self._state)

    def enqueue(
        self, sender: str, recipients: Sequence[str], data: bytes, *, now: float, queue_id: str | None = None
    ) -> str:
        """Store a message durably; return its queue id. On return, it survives a crash.

        ``queue_id`` (from :func:`new_queue_id`) is used if it is still free, so a Received
        header written before the enqueue can name the id the queue will show.
        """
        [result] = self.commit([self.stage(sender, recipients, data, now=now, queue_id=queue_id)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def enqueue_async(
        self, sender: str, recipients: Sequence[str], data: bytes, *, now: float, queue_id: str | None = None
    ) -> str:
        """:meth:`enqueue` for the event loop, with group commit.

        The message is written on the loop (into the page cache: fast), and one thread makes the
        messages staged meanwhile durable together: their fsyncs back to back, one sync of
        ``msg/``, one wake-up of the loop for the batch. A thread hand-off per message (eight
        sessions enqueuing at once, each thread fighting the loop for the GIL) cost the MTA more
        CPU than receiving the message.
        """
        staged = self.stage(sender, recipients, data, now=now, queue_id=queue_id)
        queue_id = await self._background.submit(staged)
        assert queue_id is not None  # a staged message's result is its id
        return queue_id

    def remove_soon(self, queue_id: str) -> None:
        """:meth:`remove` for the event loop: forgotten at once, its files unlinked by the thread
        that commits (unlinking cost the loop a tenth of its time under load). No durability is
        lost: a removal was never synced; a crash before it means a duplicate, never a loss."""
        self._forget(queue_id)
        self._background.put(_Unlink(queue_id))  # nobody waits: errors are logged by the thread

    async def settled(self) -> None:
        """Wait until every enqueue and removal handed to the loop so far is done on disk."""
        await self._background.settled()

    def _commit_and_unlink(self, items: list[Staged | _Unlink]) -> list[str | None | OSError]:
        """The background thread's batch: removals first, then the commits (ids in their places)."""
        for item in items:
            if isinstance(item, _Unlink):
                with self._locked(item.queue_id):
                    for path in (self._msg / item.queue_id, self._state / item.queue_id):
                        try:
                            path.unlink(missing_ok=True)
                        except OSError as exc:
                            log.error("spool: cannot remove %s: %s", path, exc)
        committed = iter(self.commit([item for item in items if isinstance(item, Staged)]))
        return [None if isinstance(item, _Unlink) else next(committed) for item in items]

    def stage(
        self, sender: str, recipients: Sequence[str], data: bytes, *, now: float, queue_id: str | None = None
    ) -> Staged:
        """Write a message to ``tmp/``, not yet synced nor queued: :meth:`commit` does that."""
        if not recipients:
            raise ValueError("a message needs at least one recipient")
        if queue_id is not None and not _valid_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        unique = list(dict.fromkeys(recipients))  # RCPT twice is one delivery
        entry = QueueEntry(
            id=queue_id or new_queue_id(now),
            sender="" if is_null_sender(sender) else sender,
            queued_at=now,
            size=len(data),
            recipients=tuple(RecipientState(address=r, next_attempt=now) for r in unique),
        )
        fd, tmp = self._write_unsynced(_entry_to_json(entry, indent=None) + b"\n" + data)
        return Staged(entry, tmp, fd, data)

    def commit(self, batch: Sequence[Staged]) -> list[str | OSError]:
        """Make staged messages durable and queued: each one's queue id, or why it failed.

        Each file is fsync'd and linked into ``msg/`` under its id; then one sync of ``msg/``
        covers every link: the commit point of them all.
        """
        results: list[str | OSError] = []
        committed: list[Staged] = []
        for staged in batch:
            try:
                try:
                    os.fsync(staged.fd)
                finally:
                    os.close(staged.fd)
                self._claim(staged)
                committed.append(staged)
                results.append(staged.entry.id)
            except OSError as exc:
                results.append(exc)
            finally:
                staged.tmp.unlink(missing_ok=True)
        if committed:
            try:
                self._msg_sync.sync()  # the commit point: from here on a crash keeps the messages
            except OSError as exc:
                # Linked but maybe not durable: the clients get a 4xx and may send again; the
                # messages stay queued and are delivered (a duplicate at worst, never a loss).
                return [exc if isinstance(r, str) else r for r in results]
        with self._index_lock:
            for staged in committed:
                if self._index is not None and self._recent_size + len(staged.data) <= RECENT_DATA_LIMIT:
                    self._recent[staged.entry.id] = staged.data
                    self._recent_size += len(staged.data)
        return results

    def _claim(self, staged: Staged) -> None:
        """Link the staged file into ``msg/`` under its id, drawing another id if it is taken."""
        while True:
            with self._locked(staged.entry.id):
                try:
                    # link(2) fails if the name exists: an atomic claim of the id.
                    os.link(staged.tmp, self._msg / staged.entry.id)
                except FileExistsError:
                    pass
                else:
                    self._remember(staged.entry)
                    return
            # Taken (a clash of random ids, or a chosen id reused): the header names the id, so
            # the file is written again under a new one.
            staged.entry = replace(staged.entry, id=new_queue_id(staged.entry.queued_at))
            staged.tmp.unlink(missing_ok=True)
            staged.tmp = self._write_tmp(_entry_to_json(staged.entry, indent=None) + b"\n" + staged.data)

    def record(self, queue_id: str, updates: Iterable[RecipientState]) -> QueueEntry:
        """Replace the state of the named recipients (matched by address); return the entry."""
        by_address = {u.address: u for u in updates}
        with self._locked(queue_id):
            entry = self._load(queue_id)
            unknown = set(by_address) - {r.address for r in entry.recipients}
            if unknown:
                raise SpoolError(f"{queue_id}: no recipient {sorted(unknown)!r}")
            entry = replace(
                entry, recipients=tuple(by_address.get(r.address, r) for r in entry.recipients)
            )
            self._commit_state(entry)
            self._remember(entry)
            return entry

    def remove(self, queue_id: str) -> None:
        """Forget a message: the message file (the commit), then its state file if it has one.

        No fsync here: a removal that a crash undoes only means the message is delivered once
        more, a duplicate (which RFC 5321 §6.1 prefers to a loss, and the only risk); waiting for
        the disk would cost every message one more fsync. A state left without its data after
        such a crash is set aside by :meth:`recover`.
        """
        with self._locked(queue_id):
            try:
                (self._msg / queue_id).unlink()
            except FileNotFoundError:
                raise SpoolError(f"no queue entry {queue_id}") from None
            with contextlib.suppress(FileNotFoundError):
                (self._state / queue_id).unlink()
            self._forget(queue_id)

    def flush(self, now: float) -> int:
        """Make every pending recipient due at ``now``; return how many there were."""
        count = 0
        with self._locked():
            for entry in self._scan():
                pending = [r for r in entry.recipients if r.pending and r.next_attempt > now]
                if not pending:
                    continue
                count += len(pending)
                self._commit_state(
                    replace(
                        entry,
                        recipients=tuple(
                            replace(r, next_attempt=now) if r in pending else r for r in entry.recipients
                        ),
                    )
                )
            if self._index is not None:  # `queue --flush` may have rewritten states behind our back
                self._reindex(self._scan())
        return count

    # -- the in-memory index ---------------------------------------------------------------

    def _remember(self, entry: QueueEntry) -> None:
        with self._index_lock:
            if self._index is not None:
                self._index[entry.id] = entry

    def _forget(self, queue_id: str) -> None:
        with self._index_lock:
            if self._index is not None:
                self._index.pop(queue_id, None)
        self.take_recent(queue_id)

    def take_recent(self, queue_id: str) -> bytes | None:
        """The data of a message queued by this process and not yet taken, else None. No I/O."""
        with self._index_lock:
            data = self._recent.pop(queue_id, None)
            if data is not None:
                self._recent_size -= len(data)
            return data

    def _reindex(self, entries: Iterable[QueueEntry]) -> None:
        ordered = sorted(entries, key=lambda e: (e.queued_at, e.id))
        with self._index_lock:
            self._index = {e.id: e for e in ordered}

    def queued(self) -> list[QueueEntry]:
        """Every message in the queue in the order queued: from memory in the MTA, else from the disk."""
        with self._index_lock:
            if self._index is not None:
                return list(self._index.values())
        return self.entries()

    # -- reading ---------------------------------------------------------------------------

    def _load(self, queue_id: str) -> QueueEntry:
        """The entry's latest state: its state file if an attempt wrote one, else its header."""
        try:
            raw = (self._state / queue_id).read_bytes()
        except FileNotFoundError:
            try:
                with open(self._msg / queue_id, "rb") as f:
                    raw = f.readline(MAX_HEADER)
            except FileNotFoundError:
                raise SpoolError(f"no queue entry {queue_id}") from None
        try:
            entry = _entry_from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{queue_id}: unreadable state: {exc}") from exc
        if entry.id != queue_id:
            raise SpoolError(f"{queue_id}: the state names another entry, {entry.id}")
        return entry

    def _scan(self) -> list[QueueEntry]:
        entries = []
        for path in sorted(self._msg.iterdir()):
            try:
                entries.append(self._load(path.name))
            except SpoolError as exc:
                # Gone since iterdir (delivered), or corrupt (recover() moves it aside).
                log.debug("skipping %s: %s", path.name, exc)
        return entries

    def count(self) -> int:
        """How many messages the disk holds committed, by name only: nothing is read or parsed."""
        return sum(1 for _ in os.scandir(self._msg))

    def entries(self) -> list[QueueEntry]:
        """Every message in the queue, oldest first, read from the disk."""
        return sorted(self._scan(), key=lambda e: (e.queued_at, e.id))

    def entry(self, queue_id: str) -> QueueEntry:
        return self._load(queue_id)

    def due(self, now: float) -> list[QueueEntry]:
        """The messages with at least one pending recipient whose next attempt is due."""
        return [e for e in self.queued() if e.due_recipients(now)]

    def next_due(self) -> float | None:
        """When the earliest pending recipient is due, or None for an empty queue."""
        times = [t for e in self.queued() if (t := e.next_attempt) is not None]
        return min(times) if times else None

    def read(self, queue_id: str) -> bytes:
        """The message data as received."""
        try:
            raw = (self._msg / queue_id).read_bytes()
        except FileNotFoundError:
            raise SpoolError(f"{queue_id}: message data missing") from None
        header_end = raw.find(b"\n")
        if header_end < 0:
            raise SpoolError(f"{queue_id}: message file has no envelope line")
        return raw[header_end + 1:]

    # -- start-up --------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Finish what a crash interrupted; return the ids of the complete entries left.

        Call once at MTA start, before any enqueue: tmp files and data without state are
        enqueues (or removals) that never committed; their client got no ``250``.
        """
        with self._locked():
            for path in self._tmp.iterdir():
                log.info("spool: discarding unfinished write %s", path.name)
                path.unlink()
            kept: list[QueueEntry] = []
            for path in sorted(self._msg.iterdir()):
                qid = path.name
                try:
                    if not _valid_id(qid):
                        raise SpoolError(f"{qid}: not a queue id")
                    entry = self._load(qid)
                except SpoolError as exc:
                    log.error("spool: moving %s aside to %s: %s", qid, self._corrupt, exc)
                    os.replace(path, self._corrupt / qid)
                    if (self._state / qid).exists():
                        os.replace(self._state / qid, self._corrupt / f"{qid}.state")
                    continue
                if entry.done:  # crashed between the last record() and remove()
                    path.unlink()
                    (self._state / qid).unlink(missing_ok=True)
                    continue
                kept.append(entry)
            fsync_dir(self._msg)
            kept_ids = {e.id for e in kept}
            for path in self._state.iterdir():
                if path.name not in kept_ids:
                    log.info("spool: discarding the state of %s, a removal a crash interrupted", path.name)
                    path.unlink()
            fsync_dir(self._state)
            self._reindex(kept)
            return sorted(kept_ids)
