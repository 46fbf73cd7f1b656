"""A service's log lines, written to stderr in batches rather than one write(2) per line.

A container's stderr is a pipe to containerd's shim, which hands each read on to dockerd, which
stores each line. The cost there is per write far more than per line: 20,000 lines written one at
a time cost dockerd 1.88 s of CPU, written ten at a time 0.48 s (``python bench/bench_logwrites.py``:
the lab image, the json-file driver, dockerd's utime + stime from /proc). Under a relay load the MTA and the MX
write four lines per message, so dockerd and the shim spent about 0.5 ms of CPU per message on
logs: a tenth of what the whole lab spent.

Lines logged on the event loop are held for at most :data:`FLUSH_DELAY` and written together;
a line from any other thread (or before the loop runs) is written at once, after those held, so
the order is kept. A SIGKILL loses at most the lines of the last ``FLUSH_DELAY``; an orderly exit
loses none (``logging.shutdown`` flushes every handler).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import asyncio

FLUSH_DELAY = 0.02  # seconds: far below what anyone watching `labctl logs -f` can notice


class CoalescingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that batches the lines logged on a running event loop."""

    def __init__(self, stream: TextIO, delay: float = FLUSH_DELAY) -> None:
        super().__init__(stream)
        self._delay = delay
        self._held: list[str] = []
        self._flush_due: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # handle() holds self.lock around this call: emit and flush never interleave.
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        # A process that never imported asyncio runs no event loop: looked up, not imported, so a
        # host without one (a MUA host) starts without asyncio.
        aio = sys.modules.get("asyncio")
        try:
            loop = aio.get_running_loop() if aio is not None else None
        except RuntimeError:
            loop = None
        if loop is None or loop.is_closed():
            self._held.append(line)
            self._write_held()
            return
        self._held.append(line)
        if self._flush_due is None:
            self._flush_due = loop.call_later(self._delay, self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            if self._flush_due is not None:
                self._flush_due.cancel()  # a flush from outside (shutdown) makes the timer's moot
                self._flush_due = None
            self._write_held()
        finally:
            self.release()

    def _write_held(self) -> None:
        if not self._held:
            return
        text, self._held = "".join(self._held), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # a closed or broken stderr: nothing to tell it with; logging's policy
            self.handleError(logging.makeLogRecord({"msg": text.rstrip("\n")}))
