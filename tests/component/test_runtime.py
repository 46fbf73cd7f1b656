"""services.runtime's idle host: it waits without an event loop and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

# What a MUA host's role does after joining the lab, with the log it has: it says it is ready,
# once a signal would stop it cleanly, and whether asyncio was ever imported (it must not be).
IDLE_HOST = """
import sys
from services import runtime
runtime.setup_logging("mua")
sys.exit(runtime.wait_for_signal(lambda: (runtime.log.info("ready"), print("asyncio" in sys.modules, flush=True))))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_idle_host_waits_without_asyncio_and_exits_0_on_a_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, "-c", IDLE_HOST], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "False"  # no event loop, no asyncio
        assert proc.poll() is None  # still waiting
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "mua INFO ready" in err and "mua INFO stopping on signal" in err
    assert "Traceback" not in err
