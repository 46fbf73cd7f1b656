"""The Maildir store: naming, durable atomic delivery, listing, reading, deleting, locking."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.mailstore import MailboxLock, Maildir, deliver, mailbox_dir, message_entries


def test_mailbox_dir_is_domain_then_user_lower_cased(tmp_path: Path) -> None:
    assert mailbox_dir(tmp_path, "Betty@StevenChoy.Example") == tmp_path / "stevenchoy.example" / "betty"
    assert mailbox_dir(tmp_path, "a.b+tag@x.example") == tmp_path / "x.example" / "a.b+tag"


@pytest.mark.parametrize("address", ["betty", "@x.example", "betty@", "..@x.example", "betty@..", ".@x",
                                     "../../etc@x.example", "betty@x/../../y", "a/b@x.example",
                                     "betty@x\\y", "bet\0ty@x.example", ".hidden@x.example"])
def test_mailbox_dir_rejects_path_tricks(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError):
        mailbox_dir(tmp_path, address)


def test_deliver_writes_new_with_lf_endings_and_leaves_tmp_empty(tmp_path: Path) -> None:
    box = tmp_path / "example" / "betty"
    key = deliver(box, b"Subject: hi\r\n\r\nline 1\r\nbare lf\nlast")
    assert sorted(p.name for p in box.iterdir()) == ["cur", "new", "tmp"]
    assert (box / "new" / key).read_bytes() == b"Subject: hi\n\nline 1\nbare lf\nlast"
    assert list((box / "tmp").iterdir()) == []
    assert stat.S_IMODE((box / "new" / key).stat().st_mode) == 0o600
    assert f"P{os.getpid()}Q" in key


def test_a_failed_delivery_leaves_nothing_behind(tmp_path: Path) -> None:
    box = tmp_path / "box"
    deliver(box, b"first\n")
    (box / "new").rename(box / "elsewhere")
    (box / "new").write_text("not a directory")  # the rename into new/ must fail
    with pytest.raises(OSError):
        deliver(box, b"second\n")
    assert list((box / "tmp").iterdir()) == []


def test_concurrent_deliveries_get_unique_keys_and_all_arrive(tmp_path: Path) -> None:
    box = tmp_path / "box"
    keys: list[str] = []
    guard = threading.Lock()

    def worker(n: int) -> None:
        for i in range(40):
            key = deliver(box, f"thread {n} message {i}\r\n".encode())
            with guard:
                keys.append(key)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == len(set(keys)) == 320
    listed = Maildir(box).messages()
    assert {m.key for m in listed} == set(keys)
    assert {Maildir(box).read(k) for k in keys} == {f"thread {n} message {i}\n".encode()
                                                    for n in range(8) for i in range(40)}


def test_a_reader_never_sees_a_partial_message(tmp_path: Path) -> None:
    box = tmp_path / "box"
    big = b"x" * 200_000 + b"\n"
    done = threading.Event()

    def writer() -> None:
        try:
            for _ in range(30):
                deliver(box, big)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    reader = Maildir(box)
    while True:
        finished = done.is_set()  # read first: the listing below then sees every delivery
        messages = reader.messages()
        for m in messages:
            assert m.size == len(big)
            assert reader.read(m.key) == big
        if finished:
            break
    t.join()
    assert len(messages) == 30


def test_messages_are_listed_in_delivery_order_from_new_and_cur(tmp_path: Path) -> None:
    box = tmp_path / "box"
    keys = [deliver(box, f"m{i}\n".encode()) for i in range(5)]
    # A MUA that read message 2 moved it to cur/ with an info suffix; the key stays the same.
    (box / "new" / keys[2]).rename(box / "cur" / f"{keys[2]}:2,S")
    (box / "new" / ".hidden").write_bytes(b"not a message")
    (box / "cur" / "subdir").mkdir()
    listed = Maildir(box).messages()
    assert [m.key for m in listed] == keys
    assert [m.size for m in listed] == [3] * 5
    assert listed[2].path == box / "cur" / f"{keys[2]}:2,S"
    assert Maildir(box).read(keys[2]) == b"m2\n"


def test_foreign_names_sort_by_their_leading_seconds(tmp_path: Path) -> None:
    box = tmp_path / "box"
    ours = deliver(box, b"ours\n")
    (box / "new" / "1000000000.V801I2M3.old-host").write_bytes(b"old\n")
    (box / "cur" / "9999999999.future:2,").write_bytes(b"future\n")
    assert Maildir(box).keys() == ["1000000000.V801I2M3.old-host", ours, "9999999999.future"]


def test_names_without_a_time_sort_by_mtime_and_keys_agree_with_messages(tmp_path: Path) -> None:
    # keys() looks at names alone where they carry the delivery time; a name that does not (no
    # leading seconds) still sorts by its file's mtime, as messages() sorts it.
    box = tmp_path / "box"
    ours = deliver(box, b"ours\n")
    for name, mtime in (("zzz-late", 4_000_000_000), ("aaa-early", 1_000_000_000)):
        (box / "new" / name).write_bytes(b"foreign\n")
        os.utime(box / "new" / name, (mtime, mtime))
    box_ = Maildir(box)
    assert box_.keys() == ["aaa-early", ours, "zzz-late"]
    assert [m.key for m in box_.messages()] == box_.keys()
    assert box_.read("zzz-late") == b"foreign\n"


def test_read_and_delete(tmp_path: Path) -> None:
    box = tmp_path / "box"
    a = deliver(box, b"a\n")
    b = deliver(box, b"b\n")
    md = Maildir(box)
    assert md.read(a) == b"a\n"
    md.delete(a)
    assert not (box / "new" / a).exists()
    assert md.keys() == [b]
    md.delete(a)  # already gone: still removed, no error
    for bad in (a, "", "../x", ".lock"):
        with pytest.raises(FileNotFoundError):
            md.read(bad)


def test_a_missing_mailbox_is_empty_and_locking_creates_it(tmp_path: Path) -> None:
    box = tmp_path / "d" / "betty"
    md = Maildir(box)
    assert md.messages() == []
    assert md.try_lock()
    assert (box / "new").is_dir() and (box / "cur").is_dir() and (box / "tmp").is_dir()
    assert md.keys() == []  # the lock file is no message
    md.unlock()


def test_lock_excludes_a_second_holder_in_this_process(tmp_path: Path) -> None:
    box = tmp_path / "box"
    first, second = Maildir(box), Maildir(box)
    assert first.try_lock()
    assert first.try_lock()  # idempotent for the holder
    assert not second.try_lock()
    first.unlock()
    assert second.try_lock()
    assert not first.try_lock()
    second.unlock()


HOLDER = """
import sys
from pathlib import Path
from services.mailstore import MailboxLock
lock = MailboxLock(Path(sys.argv[1]))
print("locked" if lock.acquire() else "busy", flush=True)
sys.stdin.read()  # hold until the test closes our stdin
"""


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    box = tmp_path / "box"
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(box)], cwd=root, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        ours = MailboxLock(box)
        assert not ours.acquire()
        holder.stdin.close()
        holder.wait(timeout=10)
    # The holder exited, and the kernel dropped its lock with its descriptor.
    assert ours.acquire() and ours.held
    ours.release()
    assert not ours.held


def test_deliver_batch_stores_each_message_and_reports_each_failure(tmp_path: Path) -> None:
    from services.mailstore import deliver_batch

    betty, carol = tmp_path / "betty", tmp_path / "carol"
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"a file where a mailbox should be")
    results = deliver_batch([(betty, b"one\r\n"), (blocked, b"two\r\n"), (carol, b"three\r\n"), (betty, b"four\r\n")])
    assert isinstance(results[1], OSError)
    keys = [r for r in results if isinstance(r, str)]
    assert len(keys) == 3
    assert sorted(p.read_bytes() for p in (betty / "new").iterdir()) == [b"four\n", b"one\n"]
    assert [p.read_bytes() for p in (carol / "new").iterdir()] == [b"three\n"]
    assert list((betty / "tmp").iterdir()) == []


@pytest.mark.parametrize("message", [b"Subject: hi\r\n\r\nbody\r\n", b"no line end", b"bare\rcr\r\r\n.dot\r\n", b""])
def test_a_delivered_name_carries_its_sizes_and_pop3_counts_the_same(tmp_path: Path, message: bytes) -> None:
    from services.textwire import wire_size

    box = tmp_path / "example" / "betty"
    key = deliver(box, message)
    stored = (box / "new" / key).read_bytes()
    assert f",S={len(stored)}" in key  # Maildir++
    if ",W=" in key:
        # Dovecot's W= is the virtual size: every LF a CRLF, nothing added at the end. Dovecot
        # trusts it: a wrong one and its FETCH BODY[] cuts the client off ("got too little data").
        dovecot_virtual = len(stored) + stored.count(b"\n") - stored.count(b"\r\n")
        assert f",W={dovecot_virtual}" in key
        assert Maildir(box).wire_size(key) == wire_size(stored)  # POP3 sends that many too
    else:
        # A last line without a line end: POP3 adds a CRLF (the dot must start a line), IMAP and
        # Dovecot do not, so no one size fits both; each counts from the file.
        assert stored and not stored.endswith(b"\n")
        assert Maildir(box).wire_size(key) is None


def test_a_name_without_a_size_field_is_read_to_count(tmp_path: Path) -> None:
    box = tmp_path / "example" / "betty"
    deliver(box, b"x\r\n")
    os.rename(box / "new" / os.listdir(box / "new")[0], box / "new" / "1796000000.V801I2M3.other-mda")
    [key] = Maildir(box).keys()
    assert Maildir(box).wire_size(key) is None


def test_message_entries_come_from_the_listing_new_first(tmp_path: Path) -> None:
    """The shared listing of POP3 and IMAP: keys without the info, new/ before cur/ (a message
    caught moving shows in both, cur/ last), no dot names, no directories; a missing new/ or cur/
    is empty or an error, as the caller asks."""
    box = tmp_path / "box"
    first, moving = deliver(box, b"one\n"), deliver(box, b"two\n")
    os.link(box / "new" / moving, box / "cur" / f"{moving}:2,S")  # in both, as mid-rename
    (box / "cur" / ".editor-swap").write_bytes(b"x")
    (box / "cur" / "subdir").mkdir()
    listed = [(key, entry.name, in_new) for key, entry, in_new in message_entries(box, missing_ok=False)]
    assert sorted(listed[:2]) == sorted([(first, first, True), (moving, moving, True)])
    assert listed[2:] == [(moving, f"{moving}:2,S", False)]
    for name in os.listdir(box / "new"):
        os.unlink(box / "new" / name)
    (box / "new").rmdir()
    assert [key for key, _, _ in message_entries(box, missing_ok=True)] == [moving]
    with pytest.raises(FileNotFoundError):
        list(message_entries(box, missing_ok=False))
