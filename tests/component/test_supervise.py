"""The reference roles' supervisor with real processes: signals passed on, a dead daemon noticed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from services.reference import supervise


def test_a_daemon_that_exits_stops_the_others_and_the_role_fails(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    # The survivor notes its SIGTERM, as a daemon's orderly shutdown would.
    survivor = ["sh", "-c", f"trap 'touch {marker}; exit 0' TERM; while :; do sleep 0.05; done"]
    started = time.monotonic()
    assert supervise.run([survivor, ["sh", "-c", "sleep 0.3; exit 3"]]) == 1
    assert marker.exists()
    assert time.monotonic() - started < supervise.STOP_GRACE


def test_sigterm_is_passed_on_and_the_role_exits_cleanly(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    daemon = ["sh", "-c", f"trap 'touch {marker}; exit 0' TERM; while :; do sleep 0.05; done"]

    async def main() -> int:
        asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)
        return await supervise.supervise([daemon])

    assert asyncio.run(main()) == 0
    assert marker.exists()


def test_a_daemon_deaf_to_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    deaf = ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"]
    started = time.monotonic()
    assert supervise.run([deaf, ["false"]]) == 1
    assert supervise.STOP_GRACE <= time.monotonic() - started < supervise.STOP_GRACE + 2


def test_a_missing_program_fails_the_role() -> None:
    assert supervise.run([["/nonexistent/daemon"]]) == 1
