"""The durable queue: what enqueue promises, what a crash leaves behind, what the CLI shows."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.smtp import queuecli
from services.smtp.spool import (
    DEFAULT_SPOOL,
    QueueEntry,
    RecipientState,
    Spool,
    SpoolError,
    Status,
    new_queue_id,
)

T0 = 1_700_000_000.0
MESSAGE = b"From: andy@ouhk.test\r\nTo: betty@stevenchoy.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "queue")


# -- enqueue and read back -----------------------------------------------------------------


def test_enqueue_stores_envelope_state_and_data(spool: Spool) -> None:
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test", "carol@stevenchoy.test"], MESSAGE, now=T0)
    assert re.fullmatch(r"[0-9A-Za-z]{12}", qid)
    [entry] = spool.entries()
    assert entry == QueueEntry(
        id=qid,
        sender="andy@ouhk.test",
        queued_at=T0,
        size=len(MESSAGE),
        recipients=(
            RecipientState("betty@stevenchoy.test", Status.PENDING, attempts=0, next_attempt=T0),
            RecipientState("carol@stevenchoy.test", Status.PENDING, attempts=0, next_attempt=T0),
        ),
    )
    assert spool.read(qid) == MESSAGE
    assert files(spool.root / "tmp") == []  # nothing half-written is left behind


def test_entries_survive_reopening(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    a = first.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    b = first.enqueue("andy@ouhk.test", ["carol@stevenchoy.test"], b"x\r\n", now=T0 + 1)
    first.record(a, [RecipientState("betty@stevenchoy.test", attempts=1, next_attempt=T0 + 5, last_error="450")])
    again = Spool(tmp_path)
    assert [e.id for e in again.entries()] == [a, b]
    assert again.entries() == first.entries()
    assert again.read(b) == b"x\r\n"


def test_null_sender_is_stored_empty_and_duplicate_recipients_once(spool: Spool) -> None:
    qid = spool.enqueue("<>", ["andy@ouhk.test", "andy@ouhk.test"], MESSAGE, now=T0)
    entry = spool.entry(qid)
    assert entry.sender == ""
    assert [r.address for r in entry.recipients] == ["andy@ouhk.test"]


def test_enqueue_uses_a_chosen_id_while_it_is_free(spool: Spool) -> None:
    chosen = new_queue_id(T0)
    assert spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0, queue_id=chosen) == chosen
    again = spool.enqueue("andy@ouhk.test", ["carol@stevenchoy.test"], MESSAGE, now=T0, queue_id=chosen)
    assert again != chosen  # taken: a fresh one instead, never an overwrite
    assert spool.entry(chosen).recipients[0].address == "betty@stevenchoy.test"
    with pytest.raises(ValueError):
        spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0, queue_id="../etc/passwd")


def test_enqueue_without_recipients_is_refused(spool: Spool) -> None:
    with pytest.raises(ValueError):
        spool.enqueue("andy@ouhk.test", [], MESSAGE, now=T0)


@settings(max_examples=30, deadline=None)
@given(
    sender=st.one_of(st.just(""), st.emails()),
    recipients=st.lists(st.emails(), min_size=1, max_size=4),
    data=st.binary(max_size=2000),
)
def test_any_message_round_trips(tmp_path_factory: pytest.TempPathFactory, sender: str, recipients: list[str],
                                 data: bytes) -> None:
    root = tmp_path_factory.mktemp("spool")
    qid = Spool(root).enqueue(sender, recipients, data, now=T0)
    entry = Spool(root).entry(qid)
    assert entry.sender == sender
    assert [r.address for r in entry.recipients] == list(dict.fromkeys(recipients))
    assert Spool(root).read(qid) == data and entry.size == len(data)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 2**35), st.floats(0, 2**35))
def test_queue_ids_sort_by_queue_time(t1: float, t2: float) -> None:
    if int(t1) < int(t2):
        assert new_queue_id(t1) < new_queue_id(t2)


def test_ids_are_unique_under_concurrent_enqueue(spool: Spool) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(15):
            qid = spool.enqueue("andy@ouhk.test", [f"u{n}-{i}@stevenchoy.test"], f"{n}-{i}".encode(), now=T0)
            with lock:
                ids.append(qid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 8 * 15
    assert {e.id for e in spool.entries()} == set(ids)
    for e in spool.entries():  # every entry's data is its own
        n_i = e.recipients[0].address.split("@")[0][1:]
        assert spool.read(e.id) == n_i.encode()


# -- state changes -------------------------------------------------------------------------


def test_a_message_has_one_file_until_an_attempt_changes_its_state(spool: Spool) -> None:
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    assert files(spool.root / "msg") == [qid] and files(spool.root / "state") == []
    header, _, data = (spool.root / "msg" / qid).read_bytes().partition(b"\n")
    assert json.loads(header)["recipients"][0]["address"] == "betty@stevenchoy.test"
    assert data == MESSAGE


def test_record_rewrites_the_state_by_rename(spool: Spool) -> None:
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test", "carol@stevenchoy.test"], MESSAGE, now=T0)
    state_file = spool.root / "state" / qid
    spool.record(qid, [RecipientState("carol@stevenchoy.test", attempts=1, next_attempt=T0 + 5)])
    inode_before = state_file.stat().st_ino
    betty = RecipientState("betty@stevenchoy.test", Status.DELIVERED, attempts=1, last_attempt=T0 + 1,
                           dsn_status="2.0.0", remote_mta="mail.stevenchoy.test")
    updated = spool.record(qid, [betty])
    # A new file renamed over the old one: a reader (or a crash) never sees it half-written.
    assert state_file.stat().st_ino != inode_before
    assert updated.recipients[0] == betty
    assert updated.recipients[1].status is Status.PENDING
    assert spool.entry(qid) == updated
    assert json.loads(state_file.read_bytes())["recipients"][0]["status"] == "delivered"
    assert files(spool.root / "tmp") == []


def test_record_of_an_unknown_recipient_or_entry_fails(spool: Spool) -> None:
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    with pytest.raises(SpoolError):
        spool.record(qid, [RecipientState("mallory@evil.test")])
    with pytest.raises(SpoolError):
        spool.record("AAAAAAAAAAAA", [RecipientState("betty@stevenchoy.test")])


def test_remove_deletes_state_and_data(spool: Spool) -> None:
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    spool.record(qid, [RecipientState("betty@stevenchoy.test", attempts=1, next_attempt=T0 + 5)])
    spool.remove(qid)
    assert spool.entries() == []
    assert files(spool.root / "msg") == [] and files(spool.root / "state") == []
    with pytest.raises(SpoolError):
        spool.remove(qid)
    with pytest.raises(SpoolError):
        spool.read(qid)


def test_due_next_due_and_flush(spool: Spool) -> None:
    a = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    b = spool.enqueue("andy@ouhk.test", ["carol@stevenchoy.test", "dave@stevenchoy.test"], MESSAGE, now=T0)
    spool.record(a, [RecipientState("betty@stevenchoy.test", attempts=1, next_attempt=T0 + 20)])
    spool.record(b, [RecipientState("carol@stevenchoy.test", attempts=1, next_attempt=T0 + 10),
                     RecipientState("dave@stevenchoy.test", Status.DELIVERED, attempts=1)])
    assert spool.due(T0) == []
    assert spool.next_due() == T0 + 10
    assert [e.id for e in spool.due(T0 + 10)] == [b]
    assert {e.id for e in spool.due(T0 + 20)} == {a, b}
    assert spool.flush(T0 + 1) == 2  # the delivered recipient is not made pending again
    assert {e.id for e in spool.due(T0 + 1)} == {a, b}
    assert spool.entry(b).recipient("dave@stevenchoy.test").status is Status.DELIVERED
    assert spool.entry(b).due_recipients(T0 + 1) == (
        RecipientState("carol@stevenchoy.test", attempts=1, next_attempt=T0 + 1),
    )


# -- crash recovery ------------------------------------------------------------------------


def test_a_tmp_file_without_its_rename_is_ignored_and_cleaned(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    before = spool.entries()
    # What a crash mid-write leaves: a half state in tmp/ (never renamed into state/).
    (tmp_path / "tmp" / "tmpabc123").write_bytes(b'{"version": 1, "id": "' + qid.encode() + b'", "rec')
    assert spool.entries() == before  # readers never look in tmp/
    assert Spool(tmp_path).entries() == before
    assert files(tmp_path / "tmp") == []


def test_a_state_without_its_message_is_a_removal_a_crash_interrupted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    gone = spool.enqueue("andy@ouhk.test", ["carol@stevenchoy.test"], MESSAGE, now=T0)
    spool.record(gone, [RecipientState("carol@stevenchoy.test", attempts=1, next_attempt=T0 + 5)])
    (tmp_path / "msg" / gone).unlink()  # the commit of the removal happened, the state's unlink did not
    reopened = Spool(tmp_path)
    assert [e.id for e in reopened.entries()] == [kept]
    assert files(tmp_path / "state") == []


def test_unreadable_state_is_set_aside_never_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    bad = spool.enqueue("andy@ouhk.test", ["carol@stevenchoy.test"], MESSAGE, now=T0)
    (tmp_path / "state" / bad).write_bytes(b"{ not json")
    headless = spool.enqueue("andy@ouhk.test", ["dave@stevenchoy.test"], MESSAGE, now=T0)
    (tmp_path / "msg" / headless).write_bytes(b'{"version": 1, "id": "' + headless.encode() + b'", "rec')
    misnamed = spool.enqueue("andy@ouhk.test", ["erin@stevenchoy.test"], MESSAGE, now=T0)
    os.rename(tmp_path / "msg" / misnamed, tmp_path / "msg" / "ABCDEFabcdef")
    reopened = Spool(tmp_path)
    assert [e.id for e in reopened.entries()] == [good]
    assert files(tmp_path / "corrupt") == sorted([bad, f"{bad}.state", headless, "ABCDEFabcdef"])


def test_finished_entry_left_by_a_crash_is_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    spool.record(qid, [RecipientState("betty@stevenchoy.test", Status.DELIVERED, attempts=1)])
    assert Spool(tmp_path).entries() == []
    assert files(tmp_path / "msg") == [] and files(tmp_path / "state") == []


def test_opening_without_recovery_touches_nothing(tmp_path: Path) -> None:
    Spool(tmp_path)
    (tmp_path / "tmp" / "in-progress").write_bytes(b"the MTA is writing this")
    Spool(tmp_path, recover=False)
    assert files(tmp_path / "tmp") == ["in-progress"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc (Linux)")
def test_files_are_fsynced_on_enqueue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a crash test (that needs a power cut) but the next best: every file and directory
    # involved is synced, observed through os.fsync being called on each.
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    spool = Spool(tmp_path)
    monkeypatch.setattr(os, "fsync", spy)
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    # Two fsyncs: the message file (envelope and data in one) while in tmp/, then msg/ once
    # it is linked there under its id.
    [file_synced, dir_synced] = synced
    assert file_synced.startswith(str(tmp_path / "tmp") + "/") and dir_synced == str(tmp_path / "msg")
    assert files(tmp_path / "msg") == [qid] and files(tmp_path / "tmp") == []


# -- the queue command ---------------------------------------------------------------------


def test_queue_cli_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = Spool(tmp_path)
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    spool.record(qid, [RecipientState("betty@stevenchoy.test", attempts=2, next_attempt=T0 + 40,
                                      last_error="host mail.stevenchoy.test[10.0.0.3] said: 451 4.3.0 later")])
    assert queuecli.main(["--json", "--spool", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    [entry] = doc["entries"]
    assert entry["id"] == qid and entry["sender"] == "andy@ouhk.test" and entry["size"] == len(MESSAGE)
    [rcpt] = entry["recipients"]
    assert rcpt["address"] == "betty@stevenchoy.test"
    assert rcpt["status"] == "pending" and rcpt["attempts"] == 2 and rcpt["next_attempt"] == T0 + 40
    assert "451 4.3.0" in rcpt["last_error"]


def test_queue_cli_listing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.enqueue("", ["andy@ouhk.test"], MESSAGE, now=T0)
    spool.record(qid, [RecipientState("andy@ouhk.test", attempts=1, next_attempt=T0 + 90, last_error="boom")])
    text = queuecli.render(spool.entries(), T0 + 30)
    assert qid in text and "<>" in text and "30s ago" in text
    assert "<andy@ouhk.test>  pending, 1 attempt(s), next try in 1m00s" in text
    assert "last error: boom" in text
    assert queuecli.render([], T0) == "Mail queue is empty\n"


def test_queue_cli_flush_makes_everything_due(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = Spool(tmp_path)
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    spool.record(qid, [RecipientState("betty@stevenchoy.test", attempts=1, next_attempt=4e9)])
    assert queuecli.main(["--flush", "--spool", str(tmp_path)]) == 0
    assert spool.entry(qid).recipients[0].next_attempt < 4e9
    # PID 1 on a test machine is not our MTA: it must not be signalled.
    assert "no running MTA found" in capsys.readouterr().err


def test_queue_cli_without_spool(tmp_path: Path) -> None:
    assert queuecli.main(["--spool", str(tmp_path / "absent")]) == 1


def test_relative_times() -> None:
    assert queuecli.relative(0.2) == "now"
    assert queuecli.relative(5) == "in 5s"
    assert queuecli.relative(-75) == "1m15s ago"
    assert queuecli.relative(3 * 3600 + 120) == "in 3h02m"


def test_default_spool_is_under_the_lab_spool_dir() -> None:
    assert DEFAULT_SPOOL.name == "queue" and DEFAULT_SPOOL.parent.name == "maillab"


# -- the owner's in-memory index -----------------------------------------------------------


def test_the_index_follows_every_change_without_reading_the_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    a = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    b = spool.enqueue("andy@ouhk.test", ["carol@stevenchoy.test"], MESSAGE, now=T0 + 1)
    # Proof that due() answers from memory: a state file changed behind its back is not seen.
    (tmp_path / "state" / a).write_bytes(b"not json")
    assert [e.id for e in spool.due(T0 + 1)] == [a, b]
    spool.record(b, [RecipientState("carol@stevenchoy.test", attempts=1, next_attempt=T0 + 60)])
    assert [e.id for e in spool.due(T0 + 1)] == [a]
    assert spool.next_due() == T0
    spool.remove(a)
    assert spool.due(T0 + 1) == [] and spool.next_due() == T0 + 60
    assert [e.id for e in spool.queued()] == [b]


def test_the_disk_is_the_truth_at_start_up_and_after_an_outside_flush(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    spool.record(qid, [RecipientState("betty@stevenchoy.test", attempts=1, next_attempt=T0 + 60)])
    assert [e.id for e in Spool(tmp_path).due(T0 + 60)] == [qid]  # a restart rebuilds it from the disk
    cli = Spool(tmp_path, recover=False)  # `queue --flush` in another process
    assert cli.flush(T0 + 5) == 1
    assert spool.due(T0 + 5) == []  # the MTA has not looked yet
    assert spool.flush(T0 + 5) == 0  # what SIGUSR1 makes it do: nothing left to change, but it reloads
    assert [e.id for e in spool.due(T0 + 5)] == [qid]


def test_data_just_queued_is_handed_over_once_from_memory(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    assert spool.take_recent(qid) == MESSAGE
    assert spool.take_recent(qid) is None  # a retry reads the file
    assert spool.read(qid) == MESSAGE
    other = spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0)
    spool.remove(other)
    assert spool.take_recent(other) is None  # removal frees it
    assert Spool(tmp_path, recover=False).take_recent(qid) is None  # only the owner keeps data


# -- group commit from the event loop ------------------------------------------------------


def test_concurrent_async_enqueues_share_their_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    spool = Spool(tmp_path)
    batches: list[int] = []
    real_commit = spool.commit

    def counting_commit(batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return real_commit(batch)

    monkeypatch.setattr(spool, "commit", counting_commit)

    async def many() -> list[str]:
        return await asyncio.gather(*(
            spool.enqueue_async("andy@ouhk.test", [f"u{i}@stevenchoy.test"], MESSAGE + b"%d\r\n" % i, now=T0)
            for i in range(20)))

    ids = asyncio.run(many())
    assert len(set(ids)) == 20 and sum(batches) == 20
    assert len(batches) < 20  # the messages staged while a batch was syncing went in the next one
    reopened = Spool(tmp_path)  # all of it durable and complete, as after a crash
    assert sorted(e.id for e in reopened.entries()) == sorted(ids)
    assert {reopened.read(i) for i in ids} == {MESSAGE + b"%d\r\n" % i for i in range(20)}
    assert files(tmp_path / "tmp") == []


def test_an_async_enqueue_that_cannot_be_synced_fails_and_the_others_succeed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    spool = Spool(tmp_path)
    real_fsync = os.fsync
    calls = 0

    def fsync_failing_second(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    async def three() -> list[Any]:
        return await asyncio.gather(*(
            spool.enqueue_async("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0) for _ in range(3)),
            return_exceptions=True)

    monkeypatch.setattr(os, "fsync", fsync_failing_second)
    results = asyncio.run(three())
    failed = [r for r in results if isinstance(r, OSError)]
    assert len(failed) == 1 and failed[0].errno == 28
    assert sorted(e.id for e in Spool(tmp_path).entries()) == sorted(r for r in results if isinstance(r, str))


def test_a_taken_id_is_replaced_and_the_header_names_the_new_one(spool: Spool) -> None:
    chosen = new_queue_id(T0)
    assert spool.enqueue("andy@ouhk.test", ["betty@stevenchoy.test"], MESSAGE, now=T0, queue_id=chosen) == chosen
    other = spool.enqueue("andy@ouhk.test", ["carol@stevenchoy.test"], b"second\r\n", now=T0, queue_id=chosen)
    assert other != chosen
    header = (spool.root / "msg" / other).read_bytes().partition(b"\n")[0]
    assert json.loads(header)["id"] == other and spool.read(other) == b"second\r\n"
