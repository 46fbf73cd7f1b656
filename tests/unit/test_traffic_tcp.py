"""TCP reassembly: reordering, retransmission, overlap, gaps, mid-stream start, two vantages."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.traffic.packet import Segment, parse_frame
from labctl.traffic.pcap import Frame
from labctl.traffic.tcp import Connection, Reassembler
from tests.unit.packets import ANDY, SMTP, Packet, Tcp


def _segments(packets: list[Packet]) -> list[Segment]:
    out = []
    for p in packets:
        seg = parse_frame(Frame(round(p.time * 1e9), 1, p.frame, p.host, len(p.frame)))
        assert isinstance(seg, Segment)
        out.append(seg)
    return out


def _reassemble(packets: list[Packet], finish: bool = True) -> list[Connection]:
    r = Reassembler()
    for seg in _segments(packets):
        r.add(seg)
    if finish:
        r.finish()
    return r.connections


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        if pos >= len(data):
            break
        out.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


def _conversation(client_data: bytes, sizes: list[int]) -> tuple[Tcp, list[Packet]]:
    t = Tcp(ANDY, 41234, SMTP, 25).handshake()
    data_packets = [t.segment(True, chunk) for chunk in _chunks(client_data, sizes)]
    return t, data_packets


def test_in_order_stream_with_times_per_chunk() -> None:
    t, _ = _conversation(b"EHLO andy\r\nQUIT\r\n", [11, 6])
    t.s(b"221 bye\r\n").close()
    [conn] = _reassemble(t.packets)
    view = conn.to_server.view()
    assert view.data == b"EHLO andy\r\nQUIT\r\n"
    assert conn.to_client.view().data == b"221 bye\r\n"
    assert view.time_at(11) > view.time_at(0)  # QUIT's segment came later
    assert (conn.client, conn.server) == ((ANDY, 41234), (SMTP, 25))
    assert not conn.joined_midway and conn.accepted_ns is not None and conn.to_server.fin_ns is not None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.lists(st.integers(1, 60), min_size=1, max_size=30),
       st.randoms(use_true_random=False), st.integers(0, 2**32 - 1))
def test_any_order_with_retransmissions_gives_the_same_bytes(data: bytes, sizes: list[int], rnd: random.Random,
                                                              isn: int) -> None:
    t = Tcp(ANDY, 41234, SMTP, 25, isn_c=isn).handshake()  # any ISN: sequence numbers may wrap
    handshake = list(t.packets)
    segs = [t.segment(True, chunk) for chunk in _chunks(data, sizes)]
    shuffled = segs + rnd.sample(segs, k=min(len(segs), 3))  # some sent twice
    rnd.shuffle(shuffled)
    [conn] = _reassemble(handshake + shuffled)
    view = conn.to_server.view()
    assert view.data == data and not view.gaps


def test_overlapping_retransmission_of_a_different_size() -> None:
    t = Tcp(ANDY, 41234, SMTP, 25).handshake()
    base = t.cseq
    t.segment(True, b"HELO a\r\n")
    t.cseq = base + 3  # a retransmission that starts inside the first and runs past it
    t.segment(True, b"O a\r\nMAIL FROM:<x>\r\n")
    [conn] = _reassemble(t.packets)
    assert conn.to_server.view().data == b"HELO a\r\nMAIL FROM:<x>\r\n"
    assert conn.to_server.duplicates == 5


def test_a_missing_segment_is_a_gap_not_a_crash() -> None:
    t, segs = _conversation(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", [17, 15, 6])
    packets = [p for p in t.packets if p is not segs[1]]
    [conn] = _reassemble(packets, finish=False)
    view = conn.to_server.view()  # before the end: the held data is shown after the hole
    assert view.data == b"MAIL FROM:<a@b>\r\nDATA\r\n"
    assert [(g.at, g.missing) for g in view.gaps] == [(17, 15)]
    assert conn.to_server.data == b"MAIL FROM:<a@b>\r\n"  # not given up on yet: the hole may still fill
    assert view.gap_in(17, 23) == 15


def test_capture_starting_mid_stream() -> None:
    t = Tcp(ANDY, 41234, SMTP, 25).handshake().c(b"EHLO a\r\n").s(b"250 ok\r\n")
    t.c(b"MAIL FROM:<a@b>\r\n").s(b"250 2.1.0 ok\r\n")
    [conn] = _reassemble(t.packets[4:])  # after the SYNs and the first segment
    assert conn.joined_midway
    assert (conn.client, conn.server) == ((ANDY, 41234), (SMTP, 25))  # from the well-known port
    assert conn.to_server.view().data == b"MAIL FROM:<a@b>\r\n"
    assert conn.to_client.view().data == b"250 ok\r\n250 2.1.0 ok\r\n"


def test_the_same_connection_captured_on_both_hosts_appears_once() -> None:
    a = Tcp(ANDY, 41234, SMTP, 25, host="andy").handshake().c(b"EHLO a\r\n").s(b"250 ok\r\n").close()
    b = Tcp(ANDY, 41234, SMTP, 25, host="smtp", t=a.packets[0].time + 0.0001).handshake().c(b"EHLO a\r\n")
    b.s(b"250 ok\r\n").close()
    merged = sorted(a.packets + b.packets, key=lambda p: p.time)
    [conn] = _reassemble(merged)
    assert conn.vantages == {"andy", "smtp"}
    assert conn.to_server.view().data == b"EHLO a\r\n"
    assert conn.to_server.view().time_at(0) == round(a.packets[3].time * 1e9)  # the first copy's time


def test_port_reuse_with_a_new_isn_is_a_new_connection() -> None:
    first = Tcp(ANDY, 41234, SMTP, 25).handshake().c(b"QUIT\r\n").close()
    second = Tcp(ANDY, 41234, SMTP, 25, isn_c=900_000, t=first.t + 1).handshake().c(b"NOOP\r\n")
    conns = _reassemble(first.packets + second.packets)
    assert [c.to_server.view().data for c in conns] == [b"QUIT\r\n", b"NOOP\r\n"]


def test_refused_and_unanswered_connections() -> None:
    refused, = _reassemble(Tcp(SMTP, 40000, "10.89.0.110", 25).refuse().packets)
    assert refused.refused and not refused.unanswered
    silent, = _reassemble(Tcp(SMTP, 40001, "10.89.0.110", 25).unanswered(4).packets)
    assert silent.unanswered and silent.syn_attempts == 4


def test_follow_feeds_more_packets_later_and_prints_each_event_once() -> None:
    from labctl.traffic.decode import TrafficDecoder
    from labctl.traffic.follow import Follower

    t = Tcp(ANDY, 41234, SMTP, 25).handshake().s(b"220 ready\r\n").c(b"EHLO a\r\n").s(b"250 hi\r\n")
    t.c(b"QUIT\r\n").s(b"221 bye\r\n").close()
    frames = [Frame(round(p.time * 1e9), 1, p.frame, "h", len(p.frame)) for p in t.packets]
    decoder, follower = TrafficDecoder(), Follower()
    polls: list[list[str]] = []
    fed = 0
    for cut in (5, 6, len(frames)):  # the capture grows: to EHLO, to its reply, to the end
        fed += decoder.feed_frames(frames[fed:cut])
        polls.append([e.text for _conv, events in follower.poll(decoder.conversations()) for e in events])
    # A whole line is printed at once; only a line (reply, message) still arriving waits for its end.
    assert polls == [["220 ready", "EHLO a"], ["250 hi"], ["QUIT", "221 bye"]]


def test_a_syn_captured_on_both_ends_is_counted_once() -> None:
    # issue 14, defect 6: "10 SYNs" for 5 when the client and the server both captured them.
    sent = Tcp(SMTP, 40002, "10.89.0.110", 25, host="smtp").unanswered(5).packets
    arrived = [Packet(p.time + 0.0001, p.frame, "mail") for p in sent[1:]]  # the first one was lost
    silent, = _reassemble(sorted(sent + arrived, key=lambda p: p.time))
    assert silent.unanswered and silent.syn_attempts == 5


def test_syns_are_counted_once_in_the_unanswered_note() -> None:
    from tests.unit.decoding import decode_captures
    from tests.unit.packets import pcapng

    sent = Tcp(SMTP, 40003, "10.89.0.110", 25, host="smtp").unanswered(5).packets
    both = sorted(sent + [Packet(p.time + 0.0001, p.frame, "mail") for p in sent], key=lambda p: p.time)
    [conv], _ = decode_captures(pcapng(both))
    assert "5 SYNs, no reply" in conv.events[0].text
