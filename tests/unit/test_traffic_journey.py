"""labctl trace: the six steps from synthetic and real captures; missing steps; the diagrams; the CLI."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from labctl import cli
from labctl.errors import LabctlError
from labctl.traffic import diagram, journey
from tests.unit.decoding import decode_captures
from tests.unit.packets import (
    ANDY,
    BETTY,
    MAIL,
    NAMES,
    NS,
    SMTP,
    T0,
    Packet,
    Tcp,
    ether,
    pcap,
    pcapng,
    udp_packet,
)

DATA = Path(__file__).parent / "data" / "traffic"
MID = "<trip.1@ouhk.example>"


def _message(received: bool) -> bytes:
    head = b"Received: from andy by smtp.ouhk.example\r\n" if received else b""
    return head + (f"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: Trip\r\n"
                   f"Message-ID: {MID}\r\n\r\nSee you.\r\n").encode()


def _smtp(client: str, server: str, port: int, t: float, message: bytes, host: str, final: bytes) -> list[Packet]:
    s = Tcp(client, port, server, 25, t=t, host=host).handshake().s(b"220 ready\r\n")
    s.c(b"MAIL FROM:<andy@ouhk.example>\r\n").s(b"250 2.1.0 ok\r\n")
    s.c(b"RCPT TO:<betty@stevenchoy.example>\r\n").s(b"250 2.1.5 ok\r\n").c(b"DATA\r\n").s(b"354 go\r\n")
    s.c(message + b".\r\n").s(final).c(b"QUIT\r\n").s(b"221 bye\r\n").close()
    return s.packets


def _dns(t: float) -> list[Packet]:
    q = dns.message.make_query("stevenchoy.example", "MX")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("stevenchoy.example.", 60, "IN", "MX", "10 mail.stevenchoy.example."))
    return [udp_packet(t, SMTP, 40000, NS, 53, q.to_wire(), host="smtp"),
            udp_packet(t + 0.001, NS, 53, SMTP, 40000, r.to_wire(), host="smtp")]


def _pop3(t: float) -> list[Packet]:
    p = Tcp(BETTY, 37000, MAIL, 110, t=t, host="betty").handshake().s(b"+OK ready\r\n")
    p.c(b"USER betty\r\n").s(b"+OK\r\n").c(b"PASS pw\r\n").s(b"+OK\r\n").c(b"RETR 1\r\n")
    p.s(b"+OK message follows\r\n" + _message(True) + b".\r\n").c(b"QUIT\r\n").s(b"+OK bye\r\n").close()
    return p.packets


def capture(*, mx: str = "up", fetched: bool = True) -> list[Packet]:
    packets = _smtp(ANDY, SMTP, 41000, T0, _message(False), "andy", b"250 2.0.0 Q1 Message accepted for delivery\r\n")
    packets += _dns(T0 + 1)
    if mx == "down":
        packets += Tcp(SMTP, 42000, MAIL, 25, t=T0 + 2, host="smtp").unanswered(3).packets
    elif mx == "refusing":
        packets += Tcp(SMTP, 42000, MAIL, 25, t=T0 + 2, host="smtp").refuse().packets
        packets += _smtp(SMTP, MAIL, 42001, T0 + 3, _message(True), "smtp", b"451 4.3.0 try again later\r\n")
    if mx != "down":
        packets += _smtp(SMTP, MAIL, 42002, T0 + 4, _message(True), "smtp", b"250 2.0.0 M9 Message accepted\r\n")
    if fetched:
        packets += _pop3(T0 + 10)
    return sorted(packets, key=lambda p: p.time)


def _trace(packets: list[Packet], **kw: str) -> journey.Journey:
    convs, _ = decode_captures(pcapng(packets), NAMES)
    return journey.trace(convs, **kw)


def test_the_six_steps_of_the_article() -> None:
    j = _trace(capture(), message_id=MID)
    assert j.complete
    assert [(s.number, s.name, s.source, s.target) for s in j.steps] == [
        (1, "submission", "andy", "smtp.ouhk.example"),
        (2, "MX query", "smtp.ouhk.example", "ns.lab.example"),
        (3, "MX answer", "ns.lab.example", "smtp.ouhk.example"),
        (4, "relay", "smtp.ouhk.example", "mail.stevenchoy.example"),
        (5, "storage acknowledgement", "mail.stevenchoy.example", "smtp.ouhk.example"),
        (6, "retrieval", "mail.stevenchoy.example", "betty"),
    ]
    assert j.steps[1].summary == "MX? stevenchoy.example"
    assert j.steps[2].summary == "MX 10 mail.stevenchoy.example"
    assert j.steps[4].summary == "250 2.0.0 M9 Message accepted"
    times = [s.time for s in j.steps]
    assert times == sorted(times)  # type: ignore[type-var]
    assert [h for h, _ in j.participants] == ["andy", "smtp.ouhk.example", "ns.lab.example",
                                              "mail.stevenchoy.example", "betty"]
    assert _trace(capture(), subject="trip").message_id == MID  # by subject, case-insensitive


def test_mx_down_shows_the_relay_missing_and_the_unanswered_syns() -> None:
    j = _trace(capture(mx="down", fetched=False), message_id=MID)
    found = [s.found for s in j.steps]
    assert found == [True, True, True, False, False, False]
    assert "3 SYNs, no reply" in j.steps[3].instead[0]
    text = journey.timeline(j)
    assert "4. --            relay                    MISSING" in text
    assert "3 of 6 steps seen on the wire" in text


def test_a_refused_connection_and_a_4xx_before_the_retry_that_worked() -> None:
    j = _trace(capture(mx="refusing"), message_id=MID)
    assert j.complete
    notes = j.steps[3].notes
    assert any("connection refused (RST)" in n for n in notes)
    assert any("451 4.3.0 try again later" in n for n in notes)


def test_missing_retrieval() -> None:
    j = _trace(capture(fetched=False), message_id=MID)
    assert [s.found for s in j.steps] == [True] * 5 + [False]
    assert "no POP3 or IMAP retrieval" in j.steps[5].instead[0]


def test_unknown_message_lists_what_was_seen() -> None:
    with pytest.raises(LabctlError, match=r"messages seen:\n  <trip.1@ouhk.example>  Trip"):
        _trace(capture(), message_id="<other@x>")


def test_mermaid_and_svg() -> None:
    j = _trace(capture(mx="down", fetched=False), message_id=MID)
    text = diagram.mermaid(j)
    assert text.startswith("sequenceDiagram\n")
    assert "P0->>P1: 1. submission: #lt;message" in text
    assert "P1--xP3: 4. relay: missing" in text and "Note over P1,P3: seen instead:" in text
    svg = ET.fromstring(diagram.svg(j))
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    words = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "andy" in words and "4. relay: missing" in words and "seen instead" in words


def test_real_lab_capture_all_six_steps() -> None:
    """Captured with tcpdump in a real lab: labctl send (port 25, then 587 with AUTH), labctl fetch."""
    caps = {h: (DATA / f"{h}.pcap").read_bytes() for h in ("andy", "smtp", "mail", "betty", "ns")}
    convs, decoder = decode_captures(caps, NAMES)
    assert decoder.problems == []
    smtp = [c for c in convs if c.protocol == "smtp"]
    assert len(smtp) == 4 and all(c.decodable and c.state == "closed" for c in smtp)
    assert all(len(c.vantages) == 2 for c in smtp)  # each seen on both its hosts, shown once
    for subject in ("hi", "second one"):
        assert journey.trace(convs, subject=subject).complete


def test_real_capture_with_the_mx_down_then_back() -> None:
    caps = {h: (DATA / f"{h}.pcap").read_bytes() for h in ("down-smtp", "up-smtp")}
    convs, _ = decode_captures(caps, NAMES)
    j = journey.trace(convs, subject="while down")
    assert [s.found for s in j.steps] == [True] * 5 + [False]
    assert any("unanswered" in n for n in j.steps[3].notes)


def test_cli_traffic_and_trace_on_a_pcap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lab.pcap"
    path.write_bytes(pcap(capture()))
    assert cli.main(["traffic", "--pcap", str(path), "--json", "--proto", "pop3", "--hide-secrets"]) == 0
    [conv] = json.loads(capsys.readouterr().out)
    assert conv["protocol"] == "pop3" and conv["client"] == {"ip": BETTY, "port": 37000, "name": "betty"}
    assert [e["text"] for e in conv["events"]][3] == "PASS ********   (a password in clear text)"
    assert conv["messages"][0]["message_id"] == MID

    assert cli.main(["traffic", "--pcap", str(path), "--host", "ns"]) == 0
    assert "smtp.ouhk.example -> ns.lab.example: MX? stevenchoy.example" in capsys.readouterr().out

    svg = tmp_path / "trace.svg"
    assert cli.main(["trace", MID, "--pcap", str(path), "-o", str(svg)]) == 0
    assert "6 of 6 steps seen on the wire" in capsys.readouterr().out
    ET.parse(svg)

    path.write_bytes(pcap(capture(mx="down")))
    assert cli.main(["trace", "--subject", "Trip", "--pcap", str(path), "--mermaid"]) == 3  # a step is missing
    assert cli.main(["trace", "--pcap", str(path)]) == 1  # no message named
    path.write_bytes(b"not a capture")
    assert cli.main(["traffic", "--pcap", str(path)]) == 1
    assert "not a pcap or pcapng file" in capsys.readouterr().err


# -- each finder alone: what it finds, and what it says when the step is missing ----------------------


def _sightings(packets: list[Packet]) -> journey.Sightings:
    convs, _ = decode_captures(pcapng(packets), NAMES)
    crossings = {proto: tuple(sorted((journey.Transfer(c, m) for c in convs if c.protocol == proto
                                      for m in c.messages), key=lambda t: t.msg.time))
                 for proto in ("smtp", "pop3")}
    return journey.Sightings(convs, crossings["smtp"], crossings["pop3"])


def test_find_submission() -> None:
    step, sub = journey.find_submission(_sightings(capture()))
    assert sub is not None and sub.conv.server.host == "smtp.ouhk.example"
    assert (step.found, step.source, step.target, step.summary) == (True, "andy", "smtp.ouhk.example",
                                                                    "<message, 6 lines, 117 octets>")
    assert "from <andy@ouhk.example> to <betty@stevenchoy.example>; answered 250" in step.detail
    step, sub = journey.find_submission(_sightings(_pop3(T0)))
    assert sub is None and step.instead == ("no SMTP transfer of this message was captured",)


def test_find_mx_query_takes_the_mta_s_query_for_a_recipient_domain_after_the_submission() -> None:
    seen = _sightings(capture())
    _, sub = journey.find_submission(seen)
    step, lookup = journey.find_mx_query(seen, sub)
    assert lookup is not None and lookup.query.text == "MX? stevenchoy.example"
    assert (step.source, step.target, step.detail) == ("smtp.ouhk.example", "ns.lab.example", "DNS over UDP")
    # The same query before the submission is not this message's lookup.
    early = [p for p in capture() if p.time < T0 + 1 or p.time >= T0 + 2] + _dns(T0 - 5)
    seen = _sightings(sorted(early, key=lambda p: p.time))
    step, lookup = journey.find_mx_query(seen, journey.find_submission(seen)[1])
    assert lookup is None and step.instead[0].startswith("no MX query from smtp.ouhk.example for stevenchoy.example")
    assert journey.find_mx_query(seen, None)[0].instead[0].startswith("no MX query from the MTA")


def test_find_mx_answer_pairs_by_id_and_leaves_the_additional_section_out() -> None:
    q = dns.message.make_query("stevenchoy.example", "MX")
    other = dns.message.make_response(dns.message.make_query("stevenchoy.example", "MX"))
    other.id = (q.id + 1) % 65536
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("stevenchoy.example.", 60, "IN", "MX", "10 mail.stevenchoy.example."))
    r.additional.append(dns.rrset.from_text("mail.stevenchoy.example.", 60, "IN", "A", MAIL))
    lookup_packets = [udp_packet(T0 + 1, SMTP, 40000, NS, 53, q.to_wire(), host="smtp"),
                      udp_packet(T0 + 1.001, NS, 53, SMTP, 40000, other.to_wire(), host="smtp"),
                      udp_packet(T0 + 1.002, NS, 53, SMTP, 40000, r.to_wire(), host="smtp")]
    seen = _sightings(_smtp(ANDY, SMTP, 41000, T0, _message(False), "andy", b"250 ok\r\n") + lookup_packets)
    _, lookup = journey.find_mx_query(seen, journey.find_submission(seen)[1])
    step, answer = journey.find_mx_answer(lookup)
    assert answer is not None and answer.id == q.id and answer.exchanges == ("mail.stevenchoy.example",)
    assert (step.summary, step.detail) == ("MX 10 mail.stevenchoy.example", "rcode NOERROR")
    assert (step.source, step.target) == ("ns.lab.example", "smtp.ouhk.example")
    seen = _sightings(_smtp(ANDY, SMTP, 41000, T0, _message(False), "andy", b"250 ok\r\n") + lookup_packets[:2])
    step, answer = journey.find_mx_answer(journey.find_mx_query(seen, journey.find_submission(seen)[1])[1])
    assert answer is None and step.instead == ("no answer to the MX query was captured",)
    assert journey.find_mx_answer(None)[0].instead == ("no MX query, so no answer",)


def test_find_relay_notes_the_attempts_before_the_one_that_worked() -> None:
    seen = _sightings(capture(mx="refusing"))
    step, relay = journey.find_relay(seen, journey.find_submission(seen)[1])
    assert relay is not None and relay.msg.reply_code == 250 and relay.conv.client.port == 42002
    assert [n.split(" ", 3)[3] for n in step.notes] == [
        "smtp.ouhk.example -> mail.stevenchoy.example:25: connection refused (RST)",
        "smtp.ouhk.example -> mail.stevenchoy.example: message refused: 451 4.3.0 try again later"]
    seen = _sightings(capture(mx="down", fetched=False))
    step, relay = journey.find_relay(seen, journey.find_submission(seen)[1])
    assert relay is None and "3 SYNs, no reply" in step.instead[0]
    assert journey.find_relay(seen, None)[0].instead == (
        "no SMTP connection from the MTA to an MX after the submission",)


def test_find_relay_names_a_failed_reply_of_a_session_that_carried_no_message() -> None:
    s = Tcp(SMTP, 42003, MAIL, 25, t=T0 + 2, host="smtp").handshake().s(b"220 ready\r\n")
    s.c(b"MAIL FROM:<andy@ouhk.example>\r\n").s(b"421 4.3.2 shutting down\r\n").close()
    seen = _sightings(sorted(capture(mx="down", fetched=False) + s.packets, key=lambda p: p.time))
    step, _ = journey.find_relay(seen, journey.find_submission(seen)[1])
    assert any(i.endswith("mail.stevenchoy.example:25: 421 4.3.2 shutting down") for i in step.instead)


def test_find_storage() -> None:
    seen = _sightings(capture())
    _, relay = journey.find_relay(seen, journey.find_submission(seen)[1])
    step = journey.find_storage(relay)
    assert (step.found, step.summary, step.source) == (True, "250 2.0.0 M9 Message accepted", "mail.stevenchoy.example")
    refused = _smtp(SMTP, MAIL, 42001, T0 + 3, _message(True), "smtp", b"451 4.3.0 try again later\r\n")
    seen = _sightings(_smtp(ANDY, SMTP, 41000, T0, _message(False), "andy", b"250 ok\r\n") + refused)
    step = journey.find_storage(journey.find_relay(seen, journey.find_submission(seen)[1])[1])
    assert step.instead == ("the MX answered 451 4.3.0 try again later",)
    assert journey.find_storage(None).instead == ("no relay, so nothing stored on the MX",)


def test_find_retrieval() -> None:
    seen = _sightings(capture())
    sub = journey.find_submission(seen)[1]
    step, fetched = journey.find_retrieval(seen, sub, journey.find_relay(seen, sub)[1])
    assert fetched is not None and (step.source, step.target) == ("mail.stevenchoy.example", "betty")
    assert step.summary.startswith("RETR 1: <message, ")
    other = Tcp(BETTY, 37001, MAIL, 110, t=T0 + 11, host="betty").handshake().s(b"+OK ready\r\n")
    other.c(b"QUIT\r\n").s(b"+OK bye\r\n").close()
    seen = _sightings(sorted(capture(fetched=False) + other.packets, key=lambda p: p.time))
    sub = journey.find_submission(seen)[1]
    step, fetched = journey.find_retrieval(seen, sub, journey.find_relay(seen, sub)[1])
    assert fetched is None
    assert step.instead[0].endswith("betty -> mail.stevenchoy.example:110: POP3 session, 0 message(s) retrieved, "
                                    "not this one")


# -- a backup MX on the path (issue 14, defects 1 and 7) ------------------------------------------------

MX2 = "10.89.0.111"
BACKUP_NAMES = {**NAMES, MX2: "mx2.stevenchoy.example"}


def _arp_request(t: float, asker: str, target: str, host: str) -> Packet:
    """An ARP who-has (RFC 826) broadcast by ``asker``, as captured on ``host``."""
    body = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x02\x42\x0a\x59\x00\x19" + socket.inet_aton(asker)
            + b"\x00" * 6 + socket.inet_aton(target))
    return Packet(t, ether(body, 0x0806), host)


def backup_capture(*, onward: bool = True) -> list[Packet]:
    """The primary MX switched off: the MTA's ARP requests for it go unanswered (no SYN), mx2 takes
    the message, and once the primary is back, mx2 hands it on (its first try refused)."""
    packets = _smtp(ANDY, SMTP, 41000, T0, _message(False), "andy", b"250 2.0.0 Q1 Message accepted for delivery\r\n")
    packets += _dns(T0 + 1)
    # Broadcast: captured on the asker and on every host that is up (here also mx2), counted once.
    packets += [_arp_request(T0 + 1.1 + k, SMTP, MAIL, host) for k in range(3) for host in ("smtp", "mx2")]
    packets += _smtp(SMTP, MX2, 42000, T0 + 4.2, _message(True), "smtp",
                     b"250 2.0.0 B7 queued for relaying\r\n")
    packets += Tcp(MX2, 43000, MAIL, 25, t=T0 + 6, host="mx2").refuse().packets
    if onward:
        packets += _smtp(MX2, MAIL, 43001, T0 + 8, _message(True), "mx2", b"250 2.0.0 M9 Message accepted\r\n")
        packets += _pop3(T0 + 10)
    return sorted(packets, key=lambda p: p.time)


def _backup_trace(packets: list[Packet]) -> journey.Journey:
    convs, decoder = decode_captures(pcapng(packets), BACKUP_NAMES)
    return journey.trace(convs, message_id=MID, lookups=decoder.neighbour_lookups())


def test_a_backup_mx_is_a_hop_of_the_relay_and_its_250_is_no_storage() -> None:
    j = _backup_trace(backup_capture())
    assert j.complete
    relay, stored, fetched = j.steps[3], j.steps[4], j.steps[5]
    assert (relay.source, relay.target) == ("smtp.ouhk.example", "mx2.stevenchoy.example")
    assert "queued it to relay it on (a backup MX)" in relay.detail
    [hop] = relay.hops
    assert (hop.source, hop.target) == ("mx2.stevenchoy.example", "mail.stevenchoy.example")
    assert any("connection refused (RST)" in n for n in hop.notes)
    assert (stored.source, stored.target, stored.summary) == ("mail.stevenchoy.example", "mx2.stevenchoy.example",
                                                              "250 2.0.0 M9 Message accepted")
    assert (fetched.source, fetched.target) == ("mail.stevenchoy.example", "betty")
    assert [h for h, _ in j.participants] == ["andy", "smtp.ouhk.example", "ns.lab.example",
                                              "mx2.stevenchoy.example", "mail.stevenchoy.example", "betty"]
    text = journey.timeline(j)
    assert "relay, hop 2             mx2.stevenchoy.example -> mail.stevenchoy.example" in text
    assert "6 of 6 steps seen on the wire" in text


def test_the_switched_off_primary_shows_as_unanswered_arp_before_the_backup() -> None:
    j = _backup_trace(backup_capture())
    [note] = j.steps[3].notes
    assert note.endswith("smtp.ouhk.example -> mail.stevenchoy.example: ARP who-has 10.89.0.110 unanswered "
                         "(3 requests): the host is down or off the network, so not even a SYN could be sent")


def test_a_backup_mx_still_holding_the_message_has_not_stored_it() -> None:
    j = _backup_trace(backup_capture(onward=False))
    stored = j.steps[4]
    assert not stored.found
    assert stored.instead[0].startswith("mx2.stevenchoy.example queued it (250 2.0.0 B7 queued for relaying)")
    assert any("connection refused (RST)" in i for i in stored.instead[1:])


def test_the_diagram_draws_each_hop_and_the_retrieval_from_the_mx_that_stored_it() -> None:
    text = diagram.mermaid(_backup_trace(backup_capture()))
    assert "participant P3 as mx2.stevenchoy.example (backup MX)" in text
    assert "participant P4 as mail.stevenchoy.example (MX)" in text
    assert "P1->>P3: 4. relay: " in text and "P3->>P4: 4. relay, hop 2: " in text
    assert "P4->>P3: 5. storage acknowledgement: 250 2.0.0 M9" in text
    assert "P4->>P5: 6. retrieval: " in text
    svg = ET.fromstring(diagram.svg(_backup_trace(backup_capture())))
    words = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "4. relay, hop 2" in words and "backup MX" in words
