"""Group commit of directory syncs: shared between threads, never skipped for anyone."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from services import durable
from services.durable import DirectorySync


def test_every_caller_waits_for_an_fsync_that_began_after_its_call(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    started = 0

    def slow_fsync(path: Path) -> None:
        nonlocal started
        with lock:
            started += 1
            n = started
            events.append(("begin", n))
        time.sleep(0.02)
        with lock:
            events.append(("end", n))

    monkeypatch.setattr(durable, "fsync_dir", slow_fsync)
    sync = DirectorySync(tmp_path)
    returned: list[tuple[int, int]] = []  # (how many syncs had begun at the call, how many had ended at return)

    def caller() -> None:
        with lock:
            begun_at_call = started
        sync.sync()
        with lock:
            ended = sum(1 for kind, _ in events if kind == "end")
        returned.append((begun_at_call, ended))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join()
    assert len(returned) == 16
    for begun_at_call, ended in returned:
        assert ended > begun_at_call  # an fsync that began after the call had ended before the return
    assert started < 16  # and they shared: fewer fsyncs than callers


def test_a_failed_fsync_reaches_the_caller_and_the_next_one_retries(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_once(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(5, "I/O error")

    monkeypatch.setattr(durable, "fsync_dir", failing_once)
    sync = DirectorySync(tmp_path)
    with pytest.raises(OSError):
        sync.sync()
    sync.sync()
    assert len(calls) == 2


def test_fsync_dir_syncs_a_real_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    durable.fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "f")
    assert os.path.exists(tmp_path / "f")


def test_the_batcher_runs_what_arrives_meanwhile_as_one_batch_and_fails_items_alone() -> None:
    import asyncio

    from services.durable import Batcher

    batches: list[list[int]] = []

    def work(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        time.sleep(0.02)  # a disk sync, say
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    async def run() -> list[int | BaseException]:
        batcher: Batcher[int, int] = Batcher(work)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)), return_exceptions=True)
        await batcher.settled()
        return list(results)

    results = asyncio.run(run())
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 20, 40, 60]
    assert [str(r) for r in results if isinstance(r, BaseException)] == ["odd 1", "odd 3", "odd 5", "odd 7"]
    assert sorted(i for b in batches for i in b) == list(range(8)) and len(batches) < 8
