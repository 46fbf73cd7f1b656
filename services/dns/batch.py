"""UDP datagrams in batches: ``recvmmsg(2)`` and ``sendmmsg(2)`` through ctypes (Linux only).

Python's socket module has neither, so the server paid a system call, and Python's argument and
address conversion, for each query and for each reply. Here one call reads up to :attr:`slots`
datagrams and one call sends their replies, as NSD does. Each slot owns a receive buffer, a send
buffer and the peer's ``sockaddr_in``; a reply goes back to the address its query came from, in
the same slot, without the address ever becoming a Python tuple unless the log wants it.

The hot path reads and writes the C structures through memoryviews cast to their field types
(an attribute of a ctypes structure costs several times as much); the offsets come from ctypes,
so the layout is the platform's, not assumed.

:func:`open_batch` returns None where the calls are missing (not Linux): the server then reads
one datagram per call as before.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import sys

from services.dns.answer import EDNS_PAYLOAD_MAX

DATAGRAM_MAX = 65535  # a query is read whole, however long (an IPv4 UDP payload is at most 65,507)
REPLY_MAX = EDNS_PAYLOAD_MAX  # the largest reply answer.py makes for UDP; a longer one is sent on its own
_SOCKADDR_IN = 16  # sizeof(struct sockaddr_in)
MSG_DONTWAIT = 0x40  # <bits/socket.h>: this call only, the socket stays as it is


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc_calls() -> tuple[object, object] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library would run
        # `ldconfig -p` in a subprocess at every start of the name server.
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recv.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return recv, send


_CALLS = _libc_calls()


def _error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))  # OSError picks the subclass: EAGAIN is BlockingIOError


def _pages(size: int) -> ctypes.Array[ctypes.c_char]:
    """``size`` octets of anonymous memory, which costs only the pages written to.

    The receive slots take 4 MiB of address space (64 of 64 KiB), of which small queries touch a
    page each; ``create_string_buffer`` would zero, and so keep, all of it.
    """
    return (ctypes.c_char * size).from_buffer(mmap.mmap(-1, size))


class Batch:
    """Slots for up to ``slots`` datagrams of an IPv4 UDP socket, received and answered together."""

    def __init__(self, sock: socket.socket, slots: int = 64) -> None:
        assert _CALLS is not None, "open_batch() says whether the calls exist"
        assert sock.family == socket.AF_INET, "the slots hold sockaddr_in"
        self._recvmmsg, self._sendmmsg = _CALLS
        self._sock = sock
        self.fd = sock.fileno()
        self.slots = slots
        self._inbox = _pages(slots * DATAGRAM_MAX)
        self._outbox = _pages(slots * REPLY_MAX)
        self._names = ctypes.create_string_buffer(slots * _SOCKADDR_IN)
        self._riov = (_Iovec * slots)()
        self._siov = (_Iovec * slots)()
        self._rvec = (_Mmsghdr * slots)()
        self._svec = (_Mmsghdr * slots)()
        inbox, outbox, names = (ctypes.addressof(b) for b in (self._inbox, self._outbox, self._names))
        for i in range(slots):
            self._riov[i].iov_base, self._riov[i].iov_len = inbox + i * DATAGRAM_MAX, DATAGRAM_MAX
            self._siov[i].iov_base = outbox + i * REPLY_MAX
            for vec, iov in ((self._rvec, self._riov), (self._svec, self._siov)):
                hdr = vec[i].msg_hdr
                hdr.msg_name, hdr.msg_namelen = names + i * _SOCKADDR_IN, _SOCKADDR_IN
                hdr.msg_iov, hdr.msg_iovlen = ctypes.pointer(iov[i]), 1
        self._size = ctypes.sizeof(_Mmsghdr)
        self._inbox_view = memoryview(self._inbox).cast("B")
        self._outbox_view = memoryview(self._outbox).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        # In units of the field's type: msg_len and msg_namelen of receive slot i, iov_len of send slot i.
        self._rvec_u32 = memoryview(self._rvec).cast("B").cast("I")
        self._step = ctypes.sizeof(_Mmsghdr) // 4
        self._msg_len_at = _Mmsghdr.msg_len.offset // 4
        self._namelen_at = (_Mmsghdr.msg_hdr.offset + _Msghdr.msg_namelen.offset) // 4
        self._iov_len = memoryview(self._siov).cast("B").cast("N")  # type: ignore[call-overload]
        self._iov_step = ctypes.sizeof(_Iovec) // ctypes.sizeof(ctypes.c_size_t)
        self._iov_len_at = _Iovec.iov_len.offset // ctypes.sizeof(ctypes.c_size_t)
        self._received = 0  # slots the last receive filled

    def receive(self) -> list[bytes]:
        """The datagrams waiting, up to :attr:`slots`; slot i holds the i-th one's peer.

        Raises BlockingIOError when none is waiting, and OSError for an error the socket reports
        (an ICMP error for an earlier reply), as ``recvfrom`` does.
        """
        step, u32 = self._step, self._rvec_u32
        for i in range(self._received):  # value-result: the kernel wrote each peer's length there
            u32[self._namelen_at + i * step] = _SOCKADDR_IN
        n = self._recvmmsg(self.fd, self._rvec, self.slots, MSG_DONTWAIT, None)  # type: ignore[operator]
        if n < 0:
            self._received = 0
            raise _error()
        self._received = n
        view, at = self._inbox_view, self._msg_len_at
        return [bytes(view[i * DATAGRAM_MAX:i * DATAGRAM_MAX + u32[at + i * step]]) for i in range(n)]

    def peer(self, slot: int) -> tuple[str, int]:
        """The address datagram ``slot`` came from, as ``recvfrom`` gives it."""
        name = self._names_view[slot * _SOCKADDR_IN:(slot + 1) * _SOCKADDR_IN]
        return socket.inet_ntoa(name[4:8]), int.from_bytes(name[2:4], "big")

    def send(self, replies: list[bytes | None]) -> list[tuple[int, OSError]]:
        """Send reply i to the peer of datagram i (None: nothing); the slots whose reply failed, and why.

        sendmmsg sends a run of consecutive slots, so a datagram answered with nothing ends a run.
        When a send fails after others went, the call returns their count and the next call
        reports the error: that is how each refused reply is told apart from those that left.
        """
        out, lens, step, at = self._outbox_view, self._iov_len, self._iov_step, self._iov_len_at
        runs: list[tuple[int, int]] = []
        failed: list[tuple[int, OSError]] = []
        start = -1
        for i, wire in enumerate(replies):
            if wire is None or len(wire) > REPLY_MAX:
                if start >= 0:
                    runs.append((start, i))
                    start = -1
                if wire is not None:  # longer than a slot: answer.py makes none today
                    try:
                        self._sock.sendto(wire, self.peer(i))
                    except OSError as exc:
                        failed.append((i, exc))
                continue
            size = len(wire)
            out[i * REPLY_MAX:i * REPLY_MAX + size] = wire
            lens[i * step + at] = size
            if start < 0:
                start = i
        if start >= 0:
            runs.append((start, len(replies)))
        for first, end in runs:
            while first < end:
                sent = self._sendmmsg(self.fd, ctypes.byref(self._svec, first * self._size),  # type: ignore[operator]
                                      end - first, 0)
                if sent < 0:
                    error = _error()
                    if error.errno == errno.EINTR:
                        continue
                    failed.append((first, error))
                    sent = 1  # that reply is dropped (UDP: the client asks again); on with the next
                first += sent
        return failed


def open_batch(sock: socket.socket, slots: int = 64) -> Batch | None:
    """A :class:`Batch` for ``sock``, or None where ``recvmmsg``/``sendmmsg`` are not available."""
    if _CALLS is None or sock.family != socket.AF_INET:
        return None
    return Batch(sock, slots)
