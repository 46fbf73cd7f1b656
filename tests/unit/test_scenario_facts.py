"""Traffic facts checked against decoded conversations (the shape labctl.traffic produces)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labctl.lab import ExecResult, HostStatus
from labctl.scenario import model as m
from labctl.scenario.facts import Looks, check_fact
from labctl.scenario.steps import StepFailed
from labctl.traffic.model import CLIENT, SERVER, Conversation, Endpoint, Event
from labctl.traffic.payload import CommandLine, Credentials, DnsAnswer, DnsQuery, Question, Record
from services.capture import CAPTURE_DIR
from tests.unit.decoding import decode_captures
from tests.unit.packets import ANDY, SMTP, T0, Tcp, pcap

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
                       payload=CommandLine("MAIL", "FROM:<andy@ouhk.example>"))),
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


# -- the looks at a growing capture: CaptureTail's pieces into one decoder, the pcapng saved once -----


class TailedLab:
    """Two running hosts whose capture directories are local ones: TAIL_SCRIPT runs here for real."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts_ = [HostStatus(role="mua", lab="t", name=name, fqdn=f"{name}.lab.example", address=ip,
                                  state="running", container=f"t-{name}")
                       for name, ip in (("andy", ANDY), ("smtp", SMTP))]
        for h in self.hosts_:
            (root / h.name).mkdir()

    def status(self) -> list[HostStatus]:
        return self.hosts_

    def hosts(self) -> list[HostStatus]:
        return self.hosts_

    def exec_in(self, host: HostStatus, cmd: list[str]) -> ExecResult:
        assert cmd[:2] == ["python3", "-c"] and cmd[3] == str(CAPTURE_DIR)
        ran = subprocess.run([sys.executable, "-c", cmd[2], str(self.root / host.name), cmd[4]], capture_output=True,
                             check=True)
        return ExecResult(ran.returncode, ran.stdout, ran.stderr)


def test_looks_decode_what_the_capture_gained_and_save_it_all_once(tmp_path: Path) -> None:
    conn = Tcp(ANDY, 40000, SMTP, 25, host="andy").handshake().s(b"220 smtp.ouhk.example ESMTP\r\n")
    for i in range(12):
        conn.c(f"NOOP {i}\r\n".encode()).s(b"250 2.0.0 Ok\r\n")
    packets = conn.close().packets
    lab = TailedLab(tmp_path)
    looks = Looks(lab, since=T0 + 0.0035)  # type: ignore[arg-type]
    for cut in range(0, len(packets) + 7, 7):  # both hosts captured it; the files grow between looks
        for host in ("andy", "smtp"):
            (tmp_path / host / "run.pcap0").write_bytes(pcap(packets[:cut]))
        convs = looks.look()
    [conv] = convs
    assert [e.text for e in conv.events if e.kind == "command"] == [f"NOOP {i}" for i in range(12)]
    assert conv.joined_midway and conv.vantages == ("andy", "smtp")  # the SYNs came before `since`
    assert looks.save(tmp_path / "capture.pcapng") == 2 * len([p for p in packets if p.time >= T0 + 0.0035])
    [again] = decode_captures((tmp_path / "capture.pcapng").read_bytes(), {ANDY: "andy.lab.example",
                                                                          SMTP: "smtp.lab.example"})[0]
    assert again.to_json() == conv.to_json()


# -- DNS lookups beyond MX, and the relay hops on the wire (issue 14) --------------------------------

GHOST = (Question("ghost.broken.example", "A"),)
A_MAIL = (Question("mail.stevenchoy.example", "A"),)
LOOKUPS = [
    *TRAFFIC,
    conversation("dns", "udp", ("10.89.0.25", 40001), ("10.89.0.53", 53), "closed",
                 Event(T, CLIENT, "query", "A? ghost.broken.example", payload=DnsQuery(8, 0x0100, GHOST)),
                 Event(T, SERVER, "answer", "NXDOMAIN", payload=DnsAnswer(8, 0x8583, GHOST, "NXDOMAIN", (), ())),
                 Event(T, CLIENT, "query", "A? mail.stevenchoy.example", payload=DnsQuery(9, 0x0100, A_MAIL)),
                 Event(T, SERVER, "answer", "10.89.0.110", payload=DnsAnswer(
                     9, 0x8580, A_MAIL, "NOERROR", (Record("mail.stevenchoy.example", "A", 60, "10.89.0.110"),), ()))),
]


@pytest.mark.parametrize(("fact", "seen"), [
    (m.DnsLooked("smtp", "ghost.broken.example", "A", "NXDOMAIN"), "smtp asked A? ghost.broken.example and got "
                                                                   "NXDOMAIN (A? ghost.broken.example)"),
    (m.DnsLooked(None, "ghost.broken.example", "A"), "10.89.0.25 asked A? ghost.broken.example and got NXDOMAIN "
                                                     "(A? ghost.broken.example)"),
    (m.DnsLooked("smtp", "mail.stevenchoy.example", "A", "10.89.0.110"), "smtp asked A? mail.stevenchoy.example "
                                                                         "and got A 10.89.0.110"),
    (m.DnsLooked("smtp", "mail.stevenchoy.example", "A", "mail"), "smtp asked A? mail.stevenchoy.example "
                                                                  "and got A 10.89.0.110"),
    (m.DnsLooked("smtp", "stevenchoy.example", "MX", "mail.stevenchoy.example"),
     "smtp asked MX? stevenchoy.example and got MX 10 mail.stevenchoy.example"),
])
def test_dns_lookup_facts(fact: m.DnsLooked, seen: str) -> None:
    assert check_fact(fact, LOOKUPS, ADDRESSES) == seen


def test_a_dns_fact_not_shown_lists_the_queries_and_their_answers() -> None:
    with pytest.raises(StepFailed) as failed:
        check_fact(m.DnsLooked("smtp", "ghost.broken.example", "A", "NOERROR"), LOOKUPS, ADDRESSES)
    assert failed.value.expected == "smtp to ask A? ghost.broken.example and get NOERROR"
    assert "A? ghost.broken.example -> NXDOMAIN (A? ghost.broken.example)" in failed.value.seen
    with pytest.raises(StepFailed, match="its DNS queries: .*MX\\? stevenchoy.example"):
        check_fact(m.DnsLooked("smtp", "stevenchoy.example", "AAAA"), LOOKUPS, ADDRESSES)


def test_an_mx_answer_names_its_hosts_addresses_in_the_additional_section() -> None:
    """The relay asks one question when the MX answer carries the addresses (RFC 1035 §3.3.9)."""
    mx = Record("stevenchoy.example", "MX", 300, "10 mail.stevenchoy.example", "mail.stevenchoy.example")
    glue = DnsAnswer(7, 0x8580, MX, "NOERROR", (mx,), (Record("mail.stevenchoy.example", "A", 300, "10.89.0.110"),))
    convs = [conversation("dns", "udp", ("10.89.0.25", 40000), ("10.89.0.53", 53), "closed",
                          Event(T, CLIENT, "query", "MX? stevenchoy.example", payload=DnsQuery(7, 0x0100, MX)),
                          Event(T, SERVER, "answer", glue.summary, payload=glue))]
    assert check_fact(m.DnsLooked("smtp", "stevenchoy.example", "MX", "mail"), convs, ADDRESSES).startswith(
        "smtp asked MX? stevenchoy.example and got MX 10 mail.stevenchoy.example")
    with pytest.raises(StepFailed):  # an address in neither section
        check_fact(m.DnsLooked("smtp", "stevenchoy.example", "MX", "mx2"), convs, ADDRESSES)


def test_the_relay_hops_are_read_from_the_smtp_conversations() -> None:
    from tests.unit.packets import pcapng
    from tests.unit.test_traffic_journey import BACKUP_NAMES, MX2, backup_capture

    convs, _ = decode_captures(pcapng(backup_capture()), BACKUP_NAMES)
    addresses = {**ADDRESSES, "mx2": MX2}
    assert check_fact(m.Relayed("betty@stevenchoy.example", ("smtp", "mx2", "mail")), convs, addresses) == (
        "the message <trip.1@ouhk.example> to betty@stevenchoy.example went smtp -> mx2 -> mail")
    with pytest.raises(StepFailed) as failed:
        check_fact(m.Relayed("betty@stevenchoy.example", ("smtp", "mail")), convs, addresses)
    assert failed.value.seen == ("its SMTP hand-overs: andy -> smtp.ouhk.example (250), smtp.ouhk.example -> "
                                 "mx2.stevenchoy.example (250), mx2.stevenchoy.example -> "
                                 "mail.stevenchoy.example (250)")
    convs, _ = decode_captures(pcapng(backup_capture(onward=False)), BACKUP_NAMES)
    with pytest.raises(StepFailed):
        check_fact(m.Relayed("betty@stevenchoy.example", ("smtp", "mx2", "mail")), convs, addresses)
