"""Making directory changes durable, and sharing that cost between threads.

A new name (a link, a rename) survives a crash only once the directory holding it is fsync'd.
When many threads store files in the same directory at once, each needs that fsync, but one
fsync started after a thread's change covers it as well as every other change made before it:
:class:`DirectorySync` lets concurrent callers share one (group commit, as databases do with
their logs), so a burst of N messages costs about one directory sync, not N in a row.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


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
