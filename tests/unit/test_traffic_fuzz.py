"""Garbage in, never a crash: every traffic parser under hypothesis."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.traffic import dns, pop3, smtp
from labctl.traffic.packet import parse_frame
from labctl.traffic.pcap import CaptureError, CaptureReader, Frame
from labctl.traffic.tcp import StreamView
from tests.unit.packets import ANDY, SMTP, Tcp, pcap, pcapng

WIRE = st.lists(st.sampled_from([b"220 ok\r\n", b"250-a\r\n", b"250 b\r\n", b"354 go\r\n", b"334 VXNlcm5hbWU6\r\n",
                                 b"+OK\r\n", b"-ERR no\r\n", b".\r\n", b"..x\r\n", b"DATA\r\n", b"RETR 1\r\n",
                                 b"LIST\r\n", b"AUTH LOGIN\r\n", b"BDAT 5 LAST\r\n", b"STARTTLS\r\n", b"\r\n",
                                 b"\x00\xff", b"x" * 30]), max_size=25).map(b"".join)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _view(data: bytes) -> StreamView:
    return StreamView(data, [0], [1_790_000_000_000_000_000], [])


@FUZZ
@given(WIRE | st.binary(max_size=200), WIRE | st.binary(max_size=200), st.booleans())
def test_smtp_and_pop3_decoders_take_anything(client: bytes, server: bytes, midway: bool) -> None:
    for decode in (smtp.decode, pop3.decode):
        events, _messages, _ok = decode(_view(client), _view(server), midway=midway)
        assert all(e.text is not None for e in events)


@FUZZ
@given(st.binary(max_size=300))
def test_dns_describe_takes_anything(payload: bytes) -> None:
    assert dns.describe(payload, 0.0).kind in ("query", "answer", "undecodable")


@FUZZ
@given(st.binary(max_size=120), st.sampled_from([0, 1, 101, 108, 113, 276]))
def test_frames_take_anything(data: bytes, linktype: int) -> None:
    parse_frame(Frame(0, linktype, data, "h", len(data)))


@FUZZ
@given(st.integers(0, 400), st.integers(0, 255), st.booleans())
def test_capture_files_with_a_corrupt_byte_or_cut_short(at: int, value: int, ng: bool) -> None:
    packets = Tcp(ANDY, 41234, SMTP, 25).handshake().c(b"EHLO a\r\n").s(b"250 b\r\n").packets
    data = bytearray(pcapng(packets) if ng else pcap(packets))
    if at < len(data):
        data[at] = value
    for blob in (bytes(data), bytes(data[:at])):
        try:
            reader = CaptureReader(blob)
            for frame in reader:
                parse_frame(frame)
        except CaptureError:
            pass  # a clear "not a capture", never another exception
