"""The readiness probe with `--announced`: a target is asked only once its host's address is given.

Real sockets on the loopback and the probe run as `labctl up` runs it, as a process reading its stdin.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from services import probe


@pytest.fixture
def smtp_greeter() -> Iterator[tuple[int, list[float]]]:
    """A listener that greets with 220 and notes when each connection came."""
    srv = socket.create_server(("127.0.0.1", 0))
    connected: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            connected.append(time.monotonic())
            with conn:
                conn.sendall(b"220 test ESMTP\r\n")
                conn.recv(64)
                conn.sendall(b"221 bye\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1], connected
    srv.close()


def test_a_target_is_asked_only_after_its_host_is_announced(smtp_greeter: tuple[int, list[float]]) -> None:
    port, connected = smtp_greeter
    announced = probe.Announcements()
    results: list[dict[str, object]] = []
    t = threading.Thread(target=lambda: results.extend(
        probe.probe([probe.Target("smtp", "127.0.0.1", port)], 5.0, announced)))
    t.start()
    time.sleep(0.2)
    assert connected == []  # the port answers, but its host has not been named yet
    named = time.monotonic()
    announced.add("127.0.0.1")
    t.join(5)
    assert results[0]["ready"] is True and connected and connected[0] >= named


def test_the_end_of_input_fails_the_hosts_never_started_at_once(smtp_greeter: tuple[int, list[float]]) -> None:
    port, connected = smtp_greeter
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services", "probe", "--announced", "--timeout", "20",
         f"smtp:127.0.0.1:{port}", f"smtp:127.0.0.2:{port}"],
        input=b"127.0.0.1\n", capture_output=True, timeout=15,
    )
    assert time.monotonic() - started < 5  # not the 20 s deadline
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1
    assert lines[0]["ready"] is True
    assert lines[1] == {"target": f"smtp:127.0.0.2:{port}", "ready": False, "detail": "its host was not started"}
    assert len(connected) == 1


def test_announcements_wait_until_the_deadline() -> None:
    announced = probe.Announcements()
    started = time.monotonic()
    assert announced.wait("10.0.0.1", time.monotonic() + 0.1) is False
    assert 0.1 <= time.monotonic() - started < 1
    announced.add("10.0.0.1")
    assert announced.wait("10.0.0.1", time.monotonic()) is True
