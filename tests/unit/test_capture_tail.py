"""`labctl traffic --follow` reads only what the capture gained: TAIL_SCRIPT and TailState.

TAIL_SCRIPT is run here for real (python3 on a directory of capture files written a little at a
time, as tcpdump writes them); what it sends goes through TailState, and the pieces through one
decoder, which must see every packet once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from labctl.capture import TAIL_SCRIPT, TailState, parse_tail
from labctl.traffic.decode import TrafficDecoder
from labctl.traffic.pcap import pcap_records_end
from tests.unit.decoding import read_frames
from tests.unit.packets import ANDY, SMTP, T0, Packet, Tcp, pcap, pcapng


def look(directory: Path, tail: TailState) -> list[bytes]:
    ran = subprocess.run([sys.executable, "-c", TAIL_SCRIPT, str(directory), json.dumps(tail.want())],
                         capture_output=True, check=True)
    return tail.take(parse_tail(ran.stdout))


def frames_of(pieces: list[bytes]) -> list[bytes]:
    return [bytes(f.data) for piece in pieces for f in read_frames(piece)]


def session(cport: int, lines: int, at: float = T0) -> list[Packet]:
    conn = Tcp(ANDY, cport, SMTP, 25, t=at).handshake().s(b"220 smtp.ouhk.example ESMTP\r\n")
    for i in range(lines):
        conn.c(f"NOOP {i}\r\n".encode()).s(b"250 2.0.0 Ok\r\n")
    return conn.close().packets


def test_records_end_at_the_last_whole_record() -> None:
    packets = session(40000, 2)
    data = pcap(packets)
    assert pcap_records_end(data) == len(data)
    assert pcap_records_end(data[:-1]) == len(pcap(packets[:-1]))  # the last record cut: up to the one before
    assert pcap_records_end(data[:30]) == 24  # the header, and half a record header
    assert pcap_records_end(data[:10]) == 0  # not even the header yet
    assert pcap_records_end(pcap(packets, big_endian=True)) == len(data)
    assert pcap_records_end(pcapng(packets)) is None


def test_each_look_gives_only_the_new_records_and_a_cut_record_comes_whole_next_time(tmp_path: Path) -> None:
    packets = session(40000, 20)
    whole = pcap(packets)
    path = tmp_path / "run.pcap0"
    tail = TailState()
    seen: list[bytes] = []
    # Written a little at a time, cutting records anywhere (tcpdump's writes end where they end).
    for cut in (0, 10, 24, 30, 200, 201, 777, 1500, len(whole) - 3, len(whole)):
        path.write_bytes(whole[:cut])
        pieces = look(tmp_path, tail)
        assert all(pcap_records_end(p) == len(p) for p in pieces)  # each piece a whole pcap of its own
        seen += frames_of(pieces)
    assert seen == [p.frame for p in packets]
    assert look(tmp_path, tail) == []  # nothing new


def test_a_file_written_again_from_the_start_is_read_from_the_start(tmp_path: Path) -> None:
    # The recorder's ring reuses its file names: run.pcap0 is rewritten once the ring wraps, and
    # its first record, written later, has a later time.
    first, second, third = session(40000, 3), session(40001, 5, T0 + 60), session(40002, 3, T0 + 120)
    path = tmp_path / "run.pcap0"
    tail = TailState()
    path.write_bytes(pcap(first))
    assert frames_of(look(tmp_path, tail)) == [p.frame for p in first]
    path.write_bytes(pcap(second))  # longer than before: only its first record tells it apart
    assert frames_of(look(tmp_path, tail)) == [p.frame for p in second]
    path.write_bytes(pcap(third[:2]))  # shorter than what was read
    assert frames_of(look(tmp_path, tail)) == [p.frame for p in third[:2]]


def test_new_files_and_pruned_files(tmp_path: Path) -> None:
    a, b = session(40000, 2), session(40001, 2)
    tail = TailState()
    (tmp_path / "run.pcap0").write_bytes(pcap(a))
    assert frames_of(look(tmp_path, tail)) == [p.frame for p in a]
    (tmp_path / "run.pcap1").write_bytes(pcap(b))
    (tmp_path / "run.pcap0").unlink()
    assert frames_of(look(tmp_path, tail)) == [p.frame for p in b]
    assert set(tail.files) == {"run.pcap1"}
    assert look(tmp_path / "missing", TailState()) == []  # no capture directory (capture off): nothing


def test_a_file_that_is_no_classic_pcap_is_given_whole_when_it_grows(tmp_path: Path) -> None:
    packets = session(40000, 2)
    path = tmp_path / "other.pcapng"
    tail = TailState()
    path.write_bytes(pcapng(packets[:4]))
    assert len(frames_of(look(tmp_path, tail))) == 4
    assert look(tmp_path, tail) == []
    path.write_bytes(pcapng(packets))
    assert len(frames_of(look(tmp_path, tail))) == len(packets)


def test_one_decoder_fed_piece_after_piece_sees_the_dialogue_once(tmp_path: Path) -> None:
    packets = session(40000, 30)
    whole = pcap(packets)
    path = tmp_path / "run.pcap0"
    tail = TailState()
    decoder = TrafficDecoder()
    for cut in range(0, len(whole) + 499, 499):
        path.write_bytes(whole[:cut])
        decoder.feed_captures({"smtp": look(tmp_path, tail)})
    decoder.tcp.finish()
    (conv,) = decoder.conversations()
    assert [e.text for e in conv.events if e.kind == "command"] == [f"NOOP {i}" for i in range(30)]
    assert conv.state == "closed"


def test_an_archive_copy_of_a_file_is_sliced_where_the_reading_stopped(tmp_path: Path) -> None:
    # A stopped host is read through the archive: whole files, sliced by TailState.start.
    packets = session(40000, 4)
    whole = pcap(packets)
    tail = TailState()
    (tmp_path / "run.pcap0").write_bytes(whole[:300])
    seen = frames_of(look(tmp_path, tail))
    start = tail.start("run.pcap0", whole)
    assert start > 0
    seen += frames_of(tail.take([("run.pcap0", start, whole[:40].hex(), whole[start:])]))
    assert seen == [p.frame for p in packets]
