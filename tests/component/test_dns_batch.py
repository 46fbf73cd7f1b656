"""UDP in batches (``services/dns/batch.py``) on real sockets on 127.0.0.1, and the server without it.

Each client socket is a peer of its own: a reply must reach the socket its query came from, a
datagram answered with nothing must not shift the others, and a reply the kernel refuses must be
reported for its own slot while the rest still leave.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from services.dns.batch import DATAGRAM_MAX, REPLY_MAX, Batch, open_batch
from services.dns.server import UDP_BURST, start
from tests.component.test_dns_server import HOST, TIMEOUT, ZONES, Loop, loop  # noqa: F401 - a fixture


@pytest.fixture
def server_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def clients(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((HOST, 0))
        c.settimeout(TIMEOUT)
        out.append(c)
    return out


def receive_all(batch: Batch, expected: int) -> list[bytes]:
    """What the socket holds, waiting for the loopback to deliver ``expected`` datagrams."""
    got: list[bytes] = []
    for _ in range(1000):
        try:
            got += batch.receive()
        except BlockingIOError:
            if len(got) >= expected:
                return got
            time.sleep(0.001)
    return got


def test_each_reply_goes_to_the_peer_its_datagram_came_from(server_socket: socket.socket) -> None:
    batch = open_batch(server_socket, 8)
    assert batch is not None
    peers = clients(5)
    for i, c in enumerate(peers):
        c.sendto(b"query %d" % i, server_socket.getsockname())
    datagrams = receive_all(batch, 5)
    assert sorted(datagrams) == [b"query %d" % i for i in range(5)]
    by_peer = {batch.peer(slot): data for slot, data in enumerate(datagrams)}
    assert set(by_peer) == {c.getsockname() for c in peers}
    # Datagram 2 gets no reply: the run of slots splits around it and nothing shifts.
    replies: list[bytes | None] = [b"reply to " + d if slot != 2 else None for slot, d in enumerate(datagrams)]
    assert batch.send(replies) == []
    for c in peers:
        asked = by_peer[c.getsockname()]
        if asked == datagrams[2]:
            c.settimeout(0.2)
            with pytest.raises(TimeoutError):
                c.recv(100)
        else:
            assert c.recv(100) == b"reply to " + asked
        c.close()


def test_the_empty_socket_says_so_and_a_datagram_is_read_whole(server_socket: socket.socket) -> None:
    batch = open_batch(server_socket, 4)
    assert batch is not None
    with pytest.raises(BlockingIOError):
        batch.receive()
    (c,) = clients(1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    big = bytes(range(256)) * 255 + b"end"  # 65,283 octets: the largest a test can send on loopback
    assert len(big) <= DATAGRAM_MAX
    c.sendto(big, server_socket.getsockname())
    c.sendto(b"after", server_socket.getsockname())
    assert receive_all(batch, 2) == [big, b"after"]
    # A reply longer than a slot (none is made today) still goes, on its own.
    assert batch.send([b"x" * (REPLY_MAX + 1), b"short"]) == []
    assert c.recv(REPLY_MAX + 10) == b"x" * (REPLY_MAX + 1)
    assert c.recv(100) == b"short"
    c.close()


def test_a_refused_reply_is_told_apart_and_the_rest_still_go(server_socket: socket.socket) -> None:
    batch = open_batch(server_socket, 8)
    assert batch is not None
    peers = clients(4)
    for c in peers:
        c.sendto(b"q", server_socket.getsockname())
    datagrams = receive_all(batch, 4)
    assert len(datagrams) == 4
    # Slot 1's peer becomes the broadcast address: without SO_BROADCAST the kernel refuses it.
    batch._names_view[1 * 16 + 4:1 * 16 + 8] = socket.inet_aton("255.255.255.255")
    failed = batch.send([b"r0", b"r1", b"r2", b"r3"])
    assert [(slot, type(exc)) for slot, exc in failed] == [(1, PermissionError)]
    answered = []
    for c in peers:
        c.settimeout(0.3)
        try:
            answered.append(c.recv(100))
        except TimeoutError:
            pass
        c.close()
    assert sorted(answered) == [b"r0", b"r2", b"r3"]


def test_a_burst_larger_than_the_slots_is_answered_over_several_wakeups(loop: Loop) -> None:  # noqa: F811
    srv = loop.run(start(ZONES, HOST, 0))
    try:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(TIMEOUT)
        n = UDP_BURST * 3
        for i in range(n):
            q = dns.message.make_query("mail.stevenchoy.example", "A")
            q.id = i
            c.sendto(q.to_wire(), (HOST, srv.port))
        ids = set()
        for _ in range(n):
            reply = dns.message.from_wire(c.recv(4096))
            assert reply.rcode() == dns.rcode.NOERROR and reply.answer
            ids.add(reply.id)
        assert ids == set(range(n))
        c.close()
    finally:
        loop.run(srv.close())


def test_the_server_without_batches_answers_alike(loop: Loop) -> None:  # noqa: F811
    """Where recvmmsg is missing the server reads one datagram per call: the same answers."""
    singly = loop.run(start(ZONES, HOST, 0, batched=False))
    batched = loop.run(start(ZONES, HOST, 0))
    try:
        for name, rdtype in [("mail.stevenchoy.example", "A"), ("stevenchoy.example", "MX"),
                             ("nobody.stevenchoy.example", "A"), ("example.com", "A")]:
            q = dns.message.make_query(name, rdtype)
            a = dns.query.udp(q, HOST, port=singly.port, timeout=TIMEOUT)
            b = dns.query.udp(q, HOST, port=batched.port, timeout=TIMEOUT)
            assert a.to_wire() == b.to_wire()
        assert singly._udp.batch is None and batched._udp.batch is not None
    finally:
        loop.run(singly.close())
        loop.run(batched.close())


def test_the_slots_cost_only_the_pages_written(server_socket: socket.socket) -> None:
    """64 receive slots of 64 KiB are 4 MiB of address space, not of memory."""

    def rss_kib() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    before = rss_kib()
    batches = [open_batch(server_socket, 64) for _ in range(4)]
    assert all(b is not None for b in batches)
    assert rss_kib() - before < 4 * 1024  # four batches, less than one's slots would take if kept
