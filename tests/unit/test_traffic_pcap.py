"""Reading pcap and pcapng, link types, truncated files, and the merged pcapng (read back by tshark)."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from labctl.traffic.packet import Datagram, Segment, parse_frame
from labctl.traffic.pcap import CaptureError, CaptureReader, Frame, write_merged_pcapng
from tests.unit.decoding import read_frames
from tests.unit.packets import ANDY, SMTP, T0, Packet, Tcp, ether, ipv4, pcap, pcapng, tcp, udp, udp_packet

DATA = Path(__file__).parent / "data" / "traffic"


def _session(host: str = "h") -> list[Packet]:
    return Tcp(ANDY, 41234, SMTP, 25, host=host).handshake().s(b"220 hi\r\n").c(b"QUIT\r\n").close().packets


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanos", [False, True])
def test_classic_pcap_both_byte_orders_micro_and_nano(big_endian: bool, nanos: bool) -> None:
    packets = _session()
    frames = list(read_frames(pcap(packets, big_endian=big_endian, nanos=nanos), source="andy"))
    assert [f.data for f in frames] == [p.frame for p in packets]
    assert all(f.interface == "andy" and f.linktype == 1 for f in frames)
    # A float of seconds near 2026 resolves ~240 ns: compare to the microsecond.
    assert all(abs(f.ts_ns - round(p.time * 1e9)) < 1000 for f, p in zip(frames, packets, strict=True))


@pytest.mark.parametrize("tsresol", [None, 9, 3, 0x80 | 20])
def test_pcapng_interfaces_names_and_timestamp_resolution(tsresol: int | None) -> None:
    a = _session("andy")
    b = [udp_packet(T0 + 0.0005, SMTP, 5353, "10.89.0.53", 53, b"x", host="smtp")]
    reader = CaptureReader(pcapng(sorted(a + b, key=lambda p: p.time), tsresol=tsresol))
    frames = list(reader)
    assert reader.format == "pcapng" and reader.problem is None
    assert {f.interface for f in frames} == {"andy", "smtp"}
    units = {None: 1e6, 9: 1e9, 3: 1e3, 0x80 | 20: 2**20}[tsresol]
    for f in frames:
        assert abs(f.time - round(f.time * units) / units) < 1e-6


def test_pcapng_simple_packet_block_and_unknown_blocks_are_read_or_skipped() -> None:
    shb = bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000")
    idb = struct.pack("<IIHHII", 1, 20, 1, 0, 0, 20)
    frame = _session()[3].frame
    body = struct.pack("<I", len(frame)) + frame + b"\0" * (-len(frame) % 4)
    spb = struct.pack("<II", 3, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    custom = struct.pack("<II", 0xBAD, 16) + b"\0" * 4 + struct.pack("<I", 16)  # a block type we do not know
    frames = list(read_frames(shb + idb + custom + spb))
    assert [f.data for f in frames] == [frame]


def _ip_tcp() -> bytes:
    return ipv4(ANDY, SMTP, 6, tcp(41234, 25, 1, 1, 0x18, b"EHLO x\r\n"))


@pytest.mark.parametrize("linktype,frame", [
    (1, ether(_ip_tcp())),
    (1, ether(b"\x00\x01" + b"\x08\x00" + _ip_tcp(), ethertype=0x8100)),  # 802.1Q tagged
    (101, _ip_tcp()),
    (113, b"\x00\x00\x00\x01\x00\x06" + b"\0" * 8 + b"\x08\x00" + _ip_tcp()),
    (276, b"\x08\x00\x00\x00" + b"\0" * 16 + _ip_tcp()),
    (0, struct.pack("<I", 2) + _ip_tcp()),
    (0, struct.pack(">I", 2) + _ip_tcp()),
])
def test_link_types(linktype: int, frame: bytes) -> None:
    seg = parse_frame(Frame(0, linktype, frame, "h", len(frame)))
    assert isinstance(seg, Segment)
    assert (seg.src, seg.sport, seg.dst, seg.dport, seg.payload) == (ANDY, 41234, SMTP, 25, b"EHLO x\r\n")


def test_ipv6_udp_and_non_ip_frames() -> None:
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    payload = udp(5353, 53, b"q")
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64, src, dst) + payload
    d = parse_frame(Frame(0, 1, ether(ip6, 0x86DD), "h", 0))
    assert isinstance(d, Datagram) and (d.src, d.dport, d.payload) == ("::1", 53, b"q")
    arp = ether(b"\0" * 28, 0x0806)
    assert parse_frame(Frame(0, 1, arp, "h", len(arp))) is None
    assert parse_frame(Frame(0, 1, b"\x01", "h", 1)) is None  # cut short by the snap length
    assert parse_frame(Frame(0, 999, b"whatever", "h", 8)) is None  # a link type we do not read


@pytest.mark.parametrize("cut", [1, 10, 17, 30])
def test_truncated_final_record_ends_quietly(cut: int) -> None:
    packets = _session()
    for data in (pcap(packets), pcapng(packets)):
        reader = CaptureReader(data[:-cut])
        frames = list(reader)
        assert reader.problem is not None
        assert [f.data for f in frames] == [p.frame for p in packets[:-1]]


def test_a_corrupt_record_stops_the_reading_there_and_keeps_what_came_before() -> None:
    packets = _session()
    data = bytearray(pcap(packets))
    third = 24 + sum(16 + len(p.frame) for p in packets[:2])
    struct.pack_into("<I", data, third + 8, 10**7)  # the third record claims 10 MB
    reader = CaptureReader(bytes(data), source="andy.pcap")
    assert [f.data for f in reader] == [p.frame for p in packets[:2]]
    assert reader.problem == f"andy.pcap: a record claims 10000000 octets (corrupt) at octet {third}; read up to there"
    problems: list[str] = []
    merged = io.BytesIO()
    assert write_merged_pcapng({"andy": [bytes(data)]}, merged, problems=problems) == 2
    assert problems == [reader.problem.replace("andy.pcap", "andy")]


def test_not_a_capture_is_a_clear_error() -> None:
    with pytest.raises(CaptureError, match="not a pcap or pcapng file"):
        CaptureReader(b"GET / HTTP/1.1\r\n", source="x.pcap")
    assert list(read_frames(b"")) == []


def _sources() -> dict[str, list[bytes]]:
    # andy's capture rotated into two files; smtp's in one; timestamps interleave across hosts.
    andy = _session("andy")
    smtp = Tcp(ANDY, 41234, SMTP, 25, host="smtp", t=T0 + 0.0005).handshake().s(b"220 hi\r\n").packets
    return {"andy": [pcap(andy[:4], nanos=True), pcap(andy[4:])], "smtp": [pcap(smtp)]}


def test_merged_pcapng_orders_by_time_and_keeps_each_host() -> None:
    out = io.BytesIO()
    count = write_merged_pcapng(_sources(), out)
    reader = CaptureReader(out.getvalue())
    frames = list(reader)
    assert count == len(frames) == 8 + 4
    assert [f.ts_ns for f in frames] == sorted(f.ts_ns for f in frames)
    assert {f.interface for f in frames} == {"andy", "smtp"}
    assert sum(f.interface == "smtp" for f in frames) == 4


def test_merged_pcapng_since_leaves_out_older_packets() -> None:
    out = io.BytesIO()
    count = write_merged_pcapng(_sources(), out, since=T0 + 0.0046)
    assert count == len(list(read_frames(out.getvalue()))) == 4  # andy's last four


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        # CI installs it (tools/ensure-host), so there it must be found; a laptop may lack it.
        message = "tshark is not installed: run tools/ensure-host (apt-get install tshark)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_tshark_reads_the_merged_pcapng_with_the_same_packets_and_host_names(tmp_path: Path) -> None:
    sources = {p.stem: [p.read_bytes()] for p in sorted(DATA.glob("*.pcap")) if "-" not in p.stem}
    merged = tmp_path / "merged.pcapng"
    with merged.open("wb") as f:
        count = write_merged_pcapng(sources, f)
    expected = sum(len(list(read_frames(b[0]))) for b in sources.values())
    assert count == expected
    run = subprocess.run([_tshark(), "-r", str(merged), "-T", "fields", "-e", "frame.interface_name",
                          "-e", "frame.time_epoch"], capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    assert len(rows) == count
    assert {r[0] for r in rows} == set(sources)
    times = [float(r[1]) for r in rows]
    assert times == sorted(times)
