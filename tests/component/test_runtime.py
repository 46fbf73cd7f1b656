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


ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100590A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000590A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
# IPv6 as a lab host has it: the kernel's reject routes on lo, and no default route on eth0.
LO_REJECT = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
             "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n")
V6_DEFAULT = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
              "fe800000000000000000000000000001 00000400 00000001 00000000 00450003     eth0\n")


def test_a_default_route_is_looked_up_before_an_ip_process_is_started(tmp_path: Path) -> None:
    """Docker gives a container an IPv4 default route even on an internal network, and no IPv6
    one: each start of a role removes the first and starts no `ip` for the second."""
    from services.runtime import _has_default_route

    (tmp_path / "route").write_text(ROUTE)
    (tmp_path / "ipv6_route").write_text(LO_REJECT * 2)
    assert _has_default_route("-4", tmp_path)
    assert not _has_default_route("-6", tmp_path)
    (tmp_path / "route").write_text(ROUTE.splitlines()[0] + "\n" + ROUTE.splitlines()[2] + "\n")
    (tmp_path / "ipv6_route").write_text(LO_REJECT + V6_DEFAULT)
    assert not _has_default_route("-4", tmp_path)
    assert _has_default_route("-6", tmp_path)
    assert _has_default_route("-4", tmp_path / "missing")  # unreadable: try the removal anyway
