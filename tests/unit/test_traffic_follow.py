"""``labctl traffic --follow``: every event printed once, however the capture grows."""

from __future__ import annotations

from labctl.traffic.follow import Follower
from labctl.traffic.model import CLIENT, SERVER, Conversation, Endpoint, Event


def conversation(start: float, replies: int, state: str) -> Conversation:
    events = [Event(start + i, SERVER if i % 2 == 0 else CLIENT, "reply" if i % 2 == 0 else "command", f"line {i}")
              for i in range(replies)]
    return Conversation("smtp", "tcp", Endpoint("10.89.0.10", 40000), Endpoint("10.89.0.25", 25),
                        start=start, end=start + replies, events=events, state=state)


def test_an_open_conversation_holds_back_its_last_event_until_it_closes() -> None:
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
