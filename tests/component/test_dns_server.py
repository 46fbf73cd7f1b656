"""The lab DNS server on 127.0.0.1, a free port, asked by dnspython and by raw sockets.

The server runs on an asyncio loop in a background thread, so the tests can use the blocking
clients a student's tools resemble (``dns.query.udp``/``tcp``) and plain sockets for the garbage.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from services.dns import server as dns_server
from services.dns.server import DnsServer, start
from services.dns.zones import load_dir

ZONES = load_dir(Path(__file__).parent.parent / "unit" / "data" / "zones")
HOST = "127.0.0.1"
TIMEOUT = 5.0  # a socket wait that only runs out when the server is broken
Rcode = dns.rcode.Rcode
R = TypeVar("R")


class Loop:
    """An event loop in a thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.stop()


@pytest.fixture(scope="module")
def server(loop: Loop) -> Iterator[DnsServer]:
    srv = loop.run(start(ZONES, HOST, 0))
    yield srv
    loop.run(srv.close())


def query(qname: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return dns.message.make_query(qname, rdtype, **kw)


def udp(server: DnsServer, q: dns.message.Message) -> dns.message.Message:
    return dns.query.udp(q, HOST, port=server.port, timeout=TIMEOUT)


def tcp(server: DnsServer, q: dns.message.Message) -> dns.message.Message:
    return dns.query.tcp(q, HOST, port=server.port, timeout=TIMEOUT)


def frame(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def read_frame(sock: socket.socket) -> bytes:
    """One length-prefixed reply; b"" if the server closed the connection instead."""
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
        chunk = sock.recv(65537)
        if not chunk:
            assert data == b"", f"connection closed inside a reply after {len(data)} octets"
            return b""
        data += chunk
    length = int.from_bytes(data[:2], "big")
    assert len(data) == 2 + length, "more than one reply arrived at once; read_frame expects one"
    return data[2:]


def connect(server: DnsServer) -> socket.socket:
    sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
    return sock


# -- real clients ----------------------------------------------------------------------------------

TRANSPORTS = [pytest.param(udp, id="udp"), pytest.param(tcp, id="tcp")]


@pytest.mark.parametrize("ask", TRANSPORTS)
def test_an_address(server: DnsServer, ask: Any) -> None:
    reply = ask(server, query("mail.stevenchoy.example"))
    assert reply.rcode() == Rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert [r.to_text() for r in reply.answer[0]] == ["10.89.0.110"]


@pytest.mark.parametrize("ask", TRANSPORTS)
def test_mx_with_the_exchange_address(server: DnsServer, ask: Any) -> None:
    reply = ask(server, query("stevenchoy.example", "MX"))
    assert [r.to_text() for r in reply.answer[0]] == ["10 mail.stevenchoy.example."]
    assert [rrset.to_text() for rrset in reply.additional] == ["mail.stevenchoy.example. 300 IN A 10.89.0.110"]


@pytest.mark.parametrize("ask", TRANSPORTS)
def test_nxdomain_nodata_and_refused(server: DnsServer, ask: Any) -> None:
    nx = ask(server, query("nobody.ouhk.example"))
    assert nx.rcode() == Rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask(server, query("smtp.ouhk.example", "AAAA"))
    assert nodata.rcode() == Rcode.NOERROR and nodata.answer == [] and len(nodata.authority) == 1
    refused = ask(server, query("www.example.com"))
    assert refused.rcode() == Rcode.REFUSED
    assert not refused.flags & (dns.flags.AA | dns.flags.RA)


def test_a_big_answer_is_truncated_over_udp_and_whole_over_tcp(server: DnsServer) -> None:
    q = query("big.edge.example", "TXT")
    over_udp = udp(server, q)
    assert over_udp.flags & dns.flags.TC
    assert over_udp.answer == []
    over_tcp = tcp(server, q)
    assert not over_tcp.flags & dns.flags.TC
    assert len(over_tcp.answer[0]) == 20
    reply, used_tcp = dns.query.udp_with_fallback(q, HOST, port=server.port, timeout=TIMEOUT)
    assert used_tcp and len(reply.answer[0]) == 20  # what a stub resolver does on TC


def test_an_edns_client_gets_a_bigger_udp_answer(server: DnsServer) -> None:
    reply = udp(server, query("medium.edge.example", "TXT", use_edns=0, payload=4096))
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 8


def test_one_log_line_per_query(server: DnsServer, caplog: pytest.LogCaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The log's limit of QUERY_LOG_PER_SECOND is the process's: other tests' queries in the same
    # second must not use it up.
    monkeypatch.setattr(dns_server, "_log_reply", dns_server._QueryLog())
    caplog.set_level(logging.INFO, logger="services.dns")
    udp(server, query("andy.ouhk.example"))
    tcp(server, query("nobody.lab.example", "MX"))
    lines = [r.getMessage() for r in caplog.records if r.name == "services.dns"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"udp {HOST}:") and lines[0].endswith(" andy.ouhk.example. A NOERROR")
    assert lines[1].startswith(f"tcp {HOST}:") and lines[1].endswith(" nobody.lab.example. MX NXDOMAIN")


# -- garbage over UDP ------------------------------------------------------------------------------


def test_udp_garbage_is_dropped_or_formerr_and_the_next_query_is_answered(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((HOST, server.port))
        sock.send(b"\x00")  # no header: no reply
        sock.send(b"\xff" * 11)
        sock.send(struct.pack("!HHHHHH", 0xBEEF, 0x0100, 0, 0, 0, 0))  # a header without a question
        good = query("mail.stevenchoy.example")
        sock.send(good.to_wire())
        formerr = dns.message.from_wire(sock.recv(65535))  # the first reply is to the third datagram
        assert (formerr.id, formerr.rcode()) == (0xBEEF, Rcode.FORMERR)
        reply = dns.message.from_wire(sock.recv(65535))
        assert reply.id == good.id and reply.rcode() == Rcode.NOERROR


# -- TCP framing -----------------------------------------------------------------------------------


def test_several_queries_on_one_connection_and_formerr_keeps_it_open(server: DnsServer) -> None:
    with connect(server) as sock:
        first = query("smtp.ouhk.example")
        sock.sendall(frame(first.to_wire()))
        assert dns.message.from_wire(read_frame(sock)).id == first.id
        sock.sendall(frame(struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x40junk"))
        formerr = dns.message.from_wire(read_frame(sock))
        assert (formerr.id, formerr.rcode()) == (0xBEEF, Rcode.FORMERR)
        again = query("ouhk.example", "MX")
        sock.sendall(frame(again.to_wire()))
        reply = dns.message.from_wire(read_frame(sock))
        assert reply.id == again.id and reply.additional


def test_pipelined_queries_are_answered_in_order(server: DnsServer) -> None:
    queries = [query(name) for name in ("andy.ouhk.example", "betty.stevenchoy.example", "ns.lab.example")]
    with connect(server) as sock:
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries))  # all before reading any reply
        data = b""
        replies: list[dns.message.Message] = []
        while len(replies) < len(queries):
            chunk = sock.recv(65535)
            assert chunk, "closed before every query was answered"
            data += chunk
            while len(data) >= 2 and len(data) >= 2 + int.from_bytes(data[:2], "big"):
                length = int.from_bytes(data[:2], "big")
                replies.append(dns.message.from_wire(data[2:2 + length]))
                data = data[2 + length:]
    assert [r.id for r in replies] == [q.id for q in queries]
    assert [r.answer[0][0].to_text() for r in replies] == ["10.89.0.10", "10.89.0.20", "10.89.0.53"]


@pytest.mark.parametrize(("garbage", "why"), [
    (frame(b"\x00\x01\x02"), "a message too short for a header"),
    (frame(b""), "a zero-length message"),
    (b"\x00\x40" + b"\x00" * 10, "the connection ends inside a message"),
    (b"\x00", "the connection ends inside the length prefix"),
])
def test_a_broken_stream_closes_that_connection_only(server: DnsServer, garbage: bytes, why: str) -> None:
    with connect(server) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        assert read_frame(sock) == b"", why
    assert tcp(server, query("mail.stevenchoy.example")).rcode() == Rcode.NOERROR


def test_an_orderly_close_after_a_query(server: DnsServer) -> None:
    with connect(server) as sock:
        q = query("mail.stevenchoy.example")
        sock.sendall(frame(q.to_wire()))
        sock.shutdown(socket.SHUT_WR)
        assert dns.message.from_wire(read_frame(sock)).id == q.id
        assert read_frame(sock) == b""


# -- server limits and lifecycle -------------------------------------------------------------------


def test_an_idle_connection_is_closed(loop: Loop) -> None:
    srv = loop.run(start(ZONES, HOST, 0, idle_timeout=0.2))
    try:
        with connect(srv) as sock:
            assert read_frame(sock) == b""  # closed by the server well before TIMEOUT
    finally:
        loop.run(srv.close())


def test_connections_beyond_the_limit_are_closed_and_the_others_served(loop: Loop) -> None:
    srv = loop.run(start(ZONES, HOST, 0, max_tcp_connections=2))
    try:
        with connect(srv) as a, connect(srv) as b:
            for sock in (a, b):  # an answered query proves the server holds the connection
                sock.sendall(frame(query("ns.lab.example").to_wire()))
                assert read_frame(sock)
            with connect(srv) as c:
                assert read_frame(c) == b""
            a.sendall(frame(query("ns.lab.example").to_wire()))
            assert read_frame(a)
        # UDP is not limited by TCP connections
        assert udp(srv, query("ns.lab.example")).rcode() == Rcode.NOERROR
    finally:
        loop.run(srv.close())


def test_udp_and_tcp_share_the_port_and_close_ends_open_connections(loop: Loop) -> None:
    srv = loop.run(start(ZONES, HOST, 0))
    assert srv.port > 0
    with connect(srv) as sock:
        sock.sendall(frame(query("ns.lab.example").to_wire()))
        assert read_frame(sock)
        loop.run(srv.close())
        assert read_frame(sock) == b""
    with pytest.raises(OSError), socket.create_connection((HOST, srv.port), timeout=TIMEOUT):
        pass


# -- reload (SIGHUP): a scenario changes a record live ------------------------------------------


def test_reload_serves_the_changed_zone_and_keeps_the_old_one_when_broken(loop: Loop, tmp_path: Path) -> None:
    from services.dns.server import reload

    zone = tmp_path / "live.example.zone"
    head = ("$ORIGIN live.example.\n$TTL 300\n@ IN SOA ns.live.example. h.live.example. (1 3600 600 86400 300)\n"
            "@ IN NS ns.live.example.\nns IN A 10.89.0.53\n")
    zone.write_text(head + "@ IN MX 10 mail.live.example.\n")
    srv = loop.run(start(load_dir(tmp_path), HOST, 0))
    try:
        before = udp(srv, query("live.example", "MX"))
        assert [r.to_text() for r in before.answer[0]] == ["10 mail.live.example."]

        zone.write_text(head.replace("(1 ", "(2 ") + "@ IN MX 0 .\n")
        assert loop.run(asyncio.to_thread(reload, srv, tmp_path)) is True
        after = udp(srv, query("live.example", "MX"))
        assert [r.to_text() for r in after.answer[0]] == ["0 ."]
        over_tcp = dns.query.tcp(query("live.example", "MX"), HOST, port=srv.port, timeout=TIMEOUT)
        assert [r.to_text() for r in over_tcp.answer[0]] == ["0 ."]

        zone.write_text(head + "@ IN MX ten mail.live.example.\n")  # broken: the old zones stay
        assert loop.run(asyncio.to_thread(reload, srv, tmp_path)) is False
        kept = udp(srv, query("live.example", "MX"))
        assert [r.to_text() for r in kept.answer[0]] == ["0 ."]
    finally:
        loop.run(srv.close())


def test_the_readiness_probe_s_hand_built_query_gets_its_answer(server: DnsServer) -> None:
    from services import probe

    zone = "stevenchoy.example"  # one of the zones in tests/unit/data/zones
    [ready] = probe.probe([probe.Target.parse(f"dns:{HOST}:{server.port}:{zone}")], timeout=2.0)
    assert ready["ready"] is True, ready
    # A zone the server does not serve: REFUSED, never taken for ready.
    [other] = probe.probe([probe.Target.parse(f"dns:{HOST}:{server.port}:gmail.com")], timeout=0.3)
    assert other["ready"] is False and "rcode 5" in str(other["detail"]), other


def test_answers_at_once_while_the_kept_replies_are_still_being_made(loop: Loop,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The replies kept per question are made on a worker thread after the server listens: until
    they are there it answers each query afresh, the same octets, and then from them."""
    from services.dns.cache import Answerer

    made = threading.Event()
    real = Answerer.precomputed

    def slow(self: Answerer) -> Any:
        made.wait(TIMEOUT)  # held until the first answers have been checked
        return real(self)

    monkeypatch.setattr(Answerer, "precomputed", slow)
    srv = loop.run(start(ZONES, HOST, 0, precompute_after=0.0))
    try:
        answerer = srv._tcp.answerer
        q = query("mail.stevenchoy.example", "A")
        before = udp(srv, q)
        assert before.rcode() == Rcode.NOERROR and before.answer
        assert len(answerer._made) == 0  # answered afresh: nothing was made yet
        made.set()
        assert srv._precomputing is not None
        loop.run(_done(srv))
        assert len(answerer._made) > 0
        after = udp(srv, q)
        assert after.to_wire()[2:] == before.to_wire()[2:]  # the same reply, from what was made
    finally:
        made.set()
        loop.run(srv.close())


async def _done(srv: DnsServer) -> None:
    assert srv._precomputing is not None
    await srv._precomputing
