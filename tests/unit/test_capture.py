"""The recorder's ring bounds and the --since grammar (the lab side is in tests/lab)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from labctl.errors import LabctlError
from labctl.traffic.render import parse_since
from services import capture


def _file(directory: Path, name: str, size: int, mtime: float) -> Path:
    path = directory / name
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_prune_removes_the_oldest_files_until_under_budget(tmp_path: Path) -> None:
    old = _file(tmp_path, "a.pcap0", 400, 1000)
    middle = _file(tmp_path, "b.pcap0", 400, 2000)
    new = _file(tmp_path, "c.pcap0", 400, 3000)
    removed = capture.prune(tmp_path, budget=900)
    assert removed == [old]
    assert middle.exists() and new.exists()


def test_prune_keeps_everything_within_budget(tmp_path: Path) -> None:
    _file(tmp_path, "a.pcap0", 100, 1000)
    assert capture.prune(tmp_path, budget=100) == []


def test_tcpdump_rings_its_files_and_writes_every_packet_at_once(tmp_path: Path) -> None:
    cmd = capture.tcpdump_command(tmp_path, "run1")
    assert cmd[:3] == ["tcpdump", "-i", "any"]  # follows interfaces that come and go
    assert "-U" in cmd  # packet-buffered: a killed host loses nothing it captured
    assert cmd[cmd.index("-C") + 1] == str(capture.FILE_MB)
    assert cmd[cmd.index("-W") + 1] == str(capture.FILES_PER_RUN)
    assert cmd[-1] == str(tmp_path / "run1.pcap")


NOW = dt.datetime(2026, 11, 29, 15, 0, 0).timestamp()


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", NOW - 90),
    ("10m", NOW - 600),
    ("2h", NOW - 7200),
    ("1.5m", NOW - 90),
    ("14:05", dt.datetime(2026, 11, 29, 14, 5).timestamp()),
    ("9:05:30", dt.datetime(2026, 11, 29, 9, 5, 30).timestamp()),
    ("2026-11-28T23:59", dt.datetime(2026, 11, 28, 23, 59).timestamp()),
    ("1764400000", 1764400000.0),
])
def test_since_accepts_ages_times_and_dates(text: str, expected: float) -> None:
    assert parse_since(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "25:00", "-5m", ""])
def test_since_rejects_anything_else_saying_what_it_takes(text: str) -> None:
    with pytest.raises(LabctlError, match="give a duration ago"):
        parse_since(text, NOW)
