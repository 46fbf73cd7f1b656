"""``labctl traffic --follow``: every event printed once, whole, however the capture grows.

The replay tests feed real and synthetic captures a few frames at a time and hold the follower to
what one decode of the whole capture prints, conversation by conversation (defect 11).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.traffic.decode import TrafficDecoder
from labctl.traffic.follow import UNANSWERED_SETTLE, Follower
from labctl.traffic.model import CLIENT, SERVER, Conversation, Endpoint, Event
from labctl.traffic.pcap import Frame, merge_frames
from tests.unit.packets import ANDY, NAMES, SMTP, T0, Tcp, pcap


def conversation(start: float, replies: int, state: str) -> Conversation:
    # The last line of an open connection is still arriving: the decoders mark it partial.
    events = [Event(start + i, SERVER if i % 2 == 0 else CLIENT, "reply" if i % 2 == 0 else "command", f"line {i}",
                    complete=state != "open" or i < replies - 1)
              for i in range(replies)]
    return Conversation("smtp", "tcp", Endpoint("10.89.0.10", 40000), Endpoint("10.89.0.25", 25),
                        start=start, end=start + replies, events=events, state=state)


def test_an_open_conversation_holds_back_its_partial_last_event_until_it_closes() -> None:
    follower = Follower()
    [(_, first)] = follower.poll([conversation(10.0, 3, "open")])
    assert [e.text for e in first] == ["line 0", "line 1"]
    [(_, rest)] = follower.poll([conversation(10.0, 4, "closed")])
    assert [e.text for e in rest] == ["line 2", "line 3"]
    assert follower.poll([conversation(10.0, 4, "closed")]) == []


def test_a_connection_whose_start_moves_as_the_other_host_s_capture_arrives_is_not_printed_again() -> None:
    # Seen first in the server's capture; the client's file, read later, has the SYN a little earlier.
    follower = Follower()
    follower.poll([conversation(10.0, 3, "open")])
    [(_, rest)] = follower.poll([conversation(9.9995, 4, "closed")])
    assert [e.text for e in rest] == ["line 2", "line 3"]


def test_the_same_client_port_much_later_is_a_new_connection() -> None:
    follower = Follower()
    follower.poll([conversation(10.0, 2, "closed")])
    [(_, again)] = follower.poll([conversation(10.0, 2, "closed"), conversation(100.0, 2, "closed")])
    assert [e.text for e in again] == ["line 0", "line 1"]


def test_a_connection_first_seen_with_nothing_to_print_then_with_an_earlier_start_is_followed() -> None:
    # Defect 11: Activity 1 by hand, the 220 still arriving in one look (nothing printable), HELO in
    # the next, its start moved by the other host's capture: this raised KeyError in Follower._key.
    follower = Follower()
    assert follower.poll([conversation(10.0, 1, "open")]) == []
    [(_, lines)] = follower.poll([conversation(9.9995, 3, "open")])
    assert [e.text for e in lines] == ["line 0", "line 1"]


def test_an_unanswered_syn_waits_until_it_has_been_unanswered_for_a_while() -> None:
    syn = Conversation("smtp", "tcp", Endpoint("10.89.0.10", 40000), Endpoint("10.89.0.25", 25), start=10.0,
                       end=10.0, events=[Event(10.0, "-", "unanswered", "connection attempt unanswered: 1 SYN")],
                       state="unanswered")
    follower = Follower()
    assert follower.poll([syn], now=10.5) == []  # a SYN-ACK may still come: nothing to take back later
    [(_, lines)] = follower.poll([syn], now=10.0 + UNANSWERED_SETTLE)
    assert [e.kind for e in lines] == ["unanswered"]


# -- replay: the follower fed a capture a few frames at a time prints what one full decode prints ---------

DATA = Path(__file__).parent / "data" / "traffic"


def activity_1_by_hand() -> bytes:
    """The article's Activity 1 typed at a telnet prompt: every line its own segment, seconds apart."""
    s = Tcp(ANDY, 40100, SMTP, 25, t=T0, step=0.6).handshake()
    s.s(b"220 smtp.ouhk.example ESMTP maillab\r\n").c(b"HELO andy\r\n").s(b"250 smtp.ouhk.example\r\n")
    s.c(b"MAIL FROM: andy@ouhk.example\r\n").s(b"250 2.1.0 Sender ok\r\n")
    s.c(b"RCPT TO: betty@stevenchoy.example\r\n").s(b"250 2.1.5 Recipient ok\r\n")
    s.c(b"DATA\r\n").s(b'354 Enter mail, end with "." on a line by itself\r\n')
    s.c(b"This is the first line of testing message.\r\n").c(b"This is the second line of testing message.\r\n")
    s.c(b".\r\n").s(b"250 2.0.0 Q1 Message accepted for delivery\r\n")
    s.c(b"QUIT\r\n").s(b"221 2.0.0 Bye\r\n").close()
    late = Tcp(ANDY, 40101, SMTP, 25, t=T0 + 20, step=2.5).unanswered(2)  # SYN, retransmitted
    answered = Tcp(ANDY, 40102, SMTP, 25, t=T0 + 30, step=0.4)
    answered.unanswered(1)
    answered.handshake().s(b"220 ready\r\n").c(b"QUIT\r\n").s(b"221 bye\r\n").close()  # SYN-ACK to the 2nd SYN
    return pcap(s.packets + late.packets + answered.packets)


CAPTURES = {
    "activity-1-by-hand": lambda: {"andy": [activity_1_by_hand()]},
    "lab": lambda: {p.stem: [p.read_bytes()] for p in DATA.glob("*.pcap") if "-smtp" not in p.stem},
    "down-smtp": lambda: {"smtp": [(DATA / "down-smtp.pcap").read_bytes()]},
    "up-smtp": lambda: {"smtp": [(DATA / "up-smtp.pcap").read_bytes()]},
}


def shown(event: Event) -> tuple[float, str, str, str]:
    return (event.time, event.direction, event.kind, event.text)


ConvId = tuple[str, str, int, str, int]
Printed = dict[ConvId, list[tuple[float, str, str, str]]]


def full_decode(frames: list[Frame], keylog: str = "") -> Printed:
    decoder = TrafficDecoder(NAMES)
    decoder.add_keys(keylog)
    decoder.feed_frames(frames)
    decoder.tcp.finish()
    out: Printed = {}
    for conv in decoder.conversations():
        out.setdefault(conv_id(conv), []).extend(shown(e) for e in conv.events)
    return out


def conv_id(conv: Conversation) -> ConvId:
    return (conv.transport, conv.client.ip, conv.client.port, conv.server.ip, conv.server.port)


def replayed(frames: list[Frame], looks: list[int], keylog: str = "") -> Printed:
    decoder = TrafficDecoder(NAMES)
    decoder.add_keys(keylog)  # a TLS session's secrets are logged during its handshake: there from the first look
    follower = Follower()
    out: Printed = {}
    at = 0
    for size in itertools.cycle(looks):
        if at >= len(frames):
            break
        decoder.feed_frames(frames[at:at + size])
        at += size
        for conv, events in follower.poll(decoder.conversations(), now=decoder.latest):
            out.setdefault(conv_id(conv), []).extend(shown(e) for e in events)
    decoder.tcp.finish()
    for conv, events in follower.poll(decoder.conversations(), final=True):
        out.setdefault(conv_id(conv), []).extend(shown(e) for e in events)
    return out


@pytest.mark.parametrize("capture", sorted(CAPTURES))
@pytest.mark.parametrize("look", [1, 2, 4, 8])
def test_a_capture_replayed_a_few_frames_at_a_time_prints_what_one_full_decode_prints(capture: str, look: int) -> None:
    frames = list(merge_frames(CAPTURES[capture]()))
    assert replayed(frames, [look]) == full_decode(frames)


@settings(max_examples=60, deadline=None)
@given(capture=st.sampled_from(sorted(CAPTURES)), looks=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_any_sequence_of_looks_prints_what_one_full_decode_prints(capture: str, looks: list[int]) -> None:
    frames = list(merge_frames(CAPTURES[capture]()))
    assert replayed(frames, looks) == full_decode(frames)
