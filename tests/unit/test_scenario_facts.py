"""Traffic facts checked against decoded conversations (the shape labctl.traffic produces)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from labctl.scenario import model as m
from labctl.scenario.facts import check_fact
from labctl.scenario.steps import StepFailed

ADDRESSES = {"smtp": "10.89.0.25", "mail": "10.89.0.110", "mx2": "10.89.0.100", "betty": "10.89.0.20",
             "ns": "10.89.0.53"}


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True)
class Event:
    kind: str
    text: str
    secrets: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Conversation:
    protocol: str
    transport: str
    client: Endpoint
    server: Endpoint
    state: str
    events: tuple[Event, ...] = ()


TRAFFIC = [
    Conversation("dns", "udp", Endpoint("10.89.0.25", 40000), Endpoint("10.89.0.53", 53), "closed",
                 (Event("query", "MX? stevenchoy.example", info={"questions": ["MX? stevenchoy.example"]}),
                  Event("answer", "MX 10 mail.stevenchoy.example"))),
    Conversation("smtp", "tcp", Endpoint("10.89.0.25", 41000), Endpoint("10.89.0.110", 25), "refused"),
    Conversation("smtp", "tcp", Endpoint("10.89.0.25", 41002), Endpoint("10.89.0.100", 25), "closed",
                 (Event("command", "MAIL FROM:<andy@ouhk.example>"),)),
    Conversation("pop3", "tcp", Endpoint("10.89.0.20", 42000), Endpoint("10.89.0.110", 110), "closed",
                 (Event("auth", "USER betty"), Event("auth", "PASS betty-secret", secrets=("betty-secret",)))),
]


@pytest.mark.parametrize(("fact", "seen"), [
    (m.MxQueried("smtp", "stevenchoy.example"), "smtp asked MX? stevenchoy.example"),
    (m.ConnectionRefused("mail", 25), "a connection to mail:25 was refused"),
    (m.Cleartext("pop3", "PASS"), "PASS crossed the wire in clear: 'PASS betty-secret'"),
    (m.Connected("smtp", "mx2", 25), "smtp talked to mx2:25"),
])
def test_facts_the_traffic_shows(fact: m.Fact, seen: str) -> None:
    assert check_fact(fact, TRAFFIC, ADDRESSES) == seen


@pytest.mark.parametrize(("fact", "expected", "seen"), [
    (m.MxQueried("smtp", "nomx.example"), "smtp to query the MX of nomx.example",
     "its DNS queries: MX? stevenchoy.example"),
    (m.MxQueried("betty", "stevenchoy.example"), "betty to query the MX", "its DNS queries: none"),
    (m.ConnectionRefused("mx2", 25), "a refused connection to mx2:25", "connections to it: closed"),
    (m.Cleartext("smtp", "AUTH"), "SMTP AUTH readable on the wire", "no AUTH seen"),
    (m.Connected("smtp", "mail", 25), "a connection from smtp to mail:25", "refused"),
])
def test_facts_it_does_not_show_say_what_was_seen(fact: m.Fact, expected: str, seen: str) -> None:
    with pytest.raises(StepFailed) as info:
        check_fact(fact, TRAFFIC, ADDRESSES)
    assert expected in info.value.expected and seen == info.value.seen
