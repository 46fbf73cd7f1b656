"""Traffic facts checked against decoded conversations (the shape labctl.traffic produces)."""

from __future__ import annotations

import pytest

from labctl.scenario import model as m
from labctl.scenario.facts import check_fact
from labctl.scenario.steps import StepFailed
from labctl.traffic.model import CLIENT, SERVER, Conversation, Endpoint, Event
from labctl.traffic.payload import Command, Credentials, DnsAnswer, DnsQuery, Question, Record

ADDRESSES = {"smtp": "10.89.0.25", "mail": "10.89.0.110", "mx2": "10.89.0.100", "betty": "10.89.0.20",
             "ns": "10.89.0.53"}
T = 1_790_000_000.0
MX = (Question("stevenchoy.example", "MX"),)


def conversation(protocol: str, transport: str, client: tuple[str, int], server: tuple[str, int], state: str,
                 *events: Event) -> Conversation:
    return Conversation(protocol, transport, Endpoint(*client), Endpoint(*server), T, T + 1, list(events),
                        state=state)


TRAFFIC = [
    conversation("dns", "udp", ("10.89.0.25", 40000), ("10.89.0.53", 53), "closed",
                 Event(T, CLIENT, "query", "MX? stevenchoy.example", payload=DnsQuery(7, 0x0100, MX)),
                 Event(T, SERVER, "answer", "MX 10 mail.stevenchoy.example", payload=DnsAnswer(
                     7, 0x8580, MX, "NOERROR", (Record("stevenchoy.example", "MX", 300, "10 mail.stevenchoy.example",
                                                       "mail.stevenchoy.example"),), ()))),
    conversation("smtp", "tcp", ("10.89.0.25", 41000), ("10.89.0.110", 25), "refused"),
    conversation("smtp", "tcp", ("10.89.0.25", 41002), ("10.89.0.100", 25), "closed",
                 Event(T, CLIENT, "command", "MAIL FROM:<andy@ouhk.example>",
                       payload=Command("MAIL", "FROM:<andy@ouhk.example>"))),
    conversation("pop3", "tcp", ("10.89.0.20", 42000), ("10.89.0.110", 110), "closed",
                 Event(T, CLIENT, "auth", "USER betty", payload=Credentials(user="betty")),
                 Event(T, CLIENT, "auth", "PASS betty-secret", ("betty-secret",), Credentials(secret="betty-secret"))),
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
