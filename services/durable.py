"""Making directory changes durable, and sharing that cost between threads.

A new name (a link, a rename) survives a crash only once the directory holding it is fsync'd.
When many threads store files in the same directory at once, each needs that fsync, but one
fsync started after a thread's change covers it as well as every other change made before it:
:class:`DirectorySync` lets concurrent callers share one (group commit, as databases do with
their logs), so a burst of N messages costs about one directory sync, not N in a row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("services.durable")

T = TypeVar("T")
R = TypeVar("R")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """``sync()`` returns once an fsync of the directory that began after the call has finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out: one per change that needs to be made durable
        self._synced = 0  # every ticket up to this one is covered by a finished fsync
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._running:
                    # The fsync in flight may have begun before our change: wait for it, then
                    # see whether the next one (ours or another thread's) covers us.
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._requested  # every change made before this moment
                self._cond.release()
                try:
                    fsync_dir(self.path)
                except BaseException:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                    raise
                self._cond.acquire()
                self._running = False
                self._synced = max(self._synced, covers)
                self._cond.notify_all()


class Batcher(Generic[T, R]):
    """Blocking work for the event loop, done by one thread in batches (group commit).

    ``work`` gets every item submitted since its last call and returns one result per item (a
    value, or the exception for that item). Items submitted while a batch is in the thread wait
    for the next: under load the batches grow, and the fsyncs of a batch run back to back in one
    thread, with one wake-up of the loop per batch rather than a thread hand-off per item (which
    made the threads fight the loop for the GIL).
    """

    def __init__(self, work: Callable[[list[T]], Sequence[R | BaseException]]) -> None:
        self._work = work
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Future[None] | None = None

    async def submit(self, item: T) -> R:
        return await self.put(item)

    def put(self, item: T) -> asyncio.Future[R]:
        """Hand ``item`` over without waiting; the future (held here until its batch is done)
        gets its result. For work nobody needs to wait for, such as a removal."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._drain())
        return done

    async def settled(self) -> None:
        """Wait until everything submitted so far is done."""
        while self._running is not None and not self._running.done():
            await asyncio.shield(self._running)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            results: Sequence[R | BaseException]
            try:
                results = await asyncio.to_thread(self._work, [item for item, _ in batch])
            except Exception as exc:  # a bug of ours: every item of the batch fails with it
                log.exception("a batch of blocking work failed")
                results = [exc] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                if done.done():  # its caller went away meanwhile; the work is done anyway
                    continue
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)
