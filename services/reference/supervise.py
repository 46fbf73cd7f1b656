"""Run a role's daemons in the foreground until SIGTERM, as our own services run.

A reference role is one or two daemons (Postfix and Dovecot on a mail host) under our process as
PID 1. SIGTERM or SIGINT is passed on to each daemon, which then shuts down in its own orderly way
(Postfix's master finishes its deliveries and exits); if a daemon exits by itself the others are
stopped too and the role exits non-zero, so `labctl status` and the readiness probe show it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("services.reference")

STOP_GRACE = 2.5  # seconds before SIGKILL; labctl's docker stop timeout is 3 s


async def supervise(commands: Sequence[Sequence[str]]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    procs = []
    failed = False
    try:
        for argv in commands:
            procs.append(await asyncio.create_subprocess_exec(*argv))
            log.info("started %s (pid %d)", " ".join(argv), procs[-1].pid)
    except OSError as exc:
        log.error("cannot start %s: %s", commands[len(procs)][0], exc)
        failed = True
        stop.set()
    waits = {asyncio.ensure_future(p.wait()): argv for p, argv in zip(procs, commands, strict=False)}
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([*waits, stopping], return_when=asyncio.FIRST_COMPLETED)
    signalled = stopping in done and not failed
    for fut in done:
        if fut in waits:
            log.error("%s exited with status %s; stopping the others", " ".join(waits[fut]), fut.result())
    if signalled:
        log.info("stopping on signal")
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_GRACE)
    except TimeoutError:
        for p in procs:
            if p.returncode is None:
                log.warning("pid %d did not stop within %.1f s; killing it", p.pid, STOP_GRACE)
                p.kill()
        await asyncio.gather(*(p.wait() for p in procs))
    stopping.cancel()
    return 0 if signalled else 1


def remove_stale(pid_files: Iterable[Path]) -> None:
    """Remove the PID files of daemons that cannot be running: this container has just started."""
    for path in pid_files:
        path.unlink(missing_ok=True)


def run(commands: Sequence[Sequence[str]]) -> int:
    return asyncio.run(supervise(commands))
