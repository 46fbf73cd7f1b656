"""The reference roles' supervisor with real processes: signals passed on, a dead daemon noticed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from services.reference import supervise


def _armed(trap: str, ready: Path) -> list[str]:
    """A daemon that sets its TERM trap, then says so by creating `ready`.

    A signal that arrives before the shell has run `trap` kills it outright, so each test waits for
    `ready` before anything can send one: on a loaded machine the shell can take longer to start
    than the other daemon takes to exit.
    """
    return ["sh", "-c", f"trap {trap} TERM; touch {ready}; while :; do sleep 0.05; done"]


def _exits_once(ready: Path, status: int) -> list[str]:
    return ["sh", "-c", f"while [ ! -e {ready} ]; do sleep 0.01; done; exit {status}"]


def test_a_daemon_that_exits_stops_the_others_and_the_role_fails(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    # The survivor notes its SIGTERM, as a daemon's orderly shutdown would.
    ready = tmp_path / "ready"
    survivor = _armed(f"'touch {marker}; exit 0'", ready)
    started = time.monotonic()
    assert supervise.run([survivor, _exits_once(ready, 3)]) == 1
    assert marker.exists()
    assert time.monotonic() - started < supervise.STOP_GRACE


def test_sigterm_is_passed_on_and_the_role_exits_cleanly(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    ready = tmp_path / "ready"
    daemon = _armed(f"'touch {marker}; exit 0'", ready)

    async def signal_when_armed() -> None:
        while not ready.exists():
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    async def main() -> int:
        task = asyncio.ensure_future(signal_when_armed())
        status = await supervise.supervise([daemon])
        await task
        return status

    assert asyncio.run(main()) == 0
    assert marker.exists()


def test_a_daemon_deaf_to_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    started = time.monotonic()
    assert supervise.run([_armed("''", ready), _exits_once(ready, 1)]) == 1
    assert supervise.STOP_GRACE <= time.monotonic() - started < supervise.STOP_GRACE + 2


def test_a_missing_program_fails_the_role() -> None:
    assert supervise.run([["/nonexistent/daemon"]]) == 1
