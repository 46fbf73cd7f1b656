"""Readiness probe: is each lab service really answering its protocol?

``labctl up`` runs this once, inside the lab (on the DNS host), over the lab network, instead of
trusting that a started container is a serving one: a DNS query must get an authoritative answer,
an SMTP server its ``220`` greeting, a POP3 server its ``+OK``, an IMAP server its ``* OK``, and
with TLS on the same after a verified handshake on 465, 995 and 993. It
polls until every target answers or the deadline passes, then prints one JSON line per target.

    python3 -m services probe [--timeout S] KIND:ADDRESS:PORT[:ZONE] ...
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

# Imports are few and light on purpose: the probe starts while the lab's five servers start on the
# same cores, and its start is on the path of every `labctl up`. ssl is imported for a TLS target
# only; plain threads rather than concurrent.futures (logging, 8 ms) and no dataclasses (6 ms).

# What each role serves, as (protocol, port): the probe targets and the `labctl status` table.
ROLE_SERVICES: dict[str, tuple[tuple[str, int], ...]] = {
    "dns": (("dns", 53),),
    "mta": (("smtp", 25), ("smtp", 587), ("pop3", 110), ("imap", 143)),
    "mx": (("smtp", 25), ("pop3", 110), ("imap", 143)),
    "mua": (),
    "client": (),
    # The reference peers serve what the role they stand in for serves (services.config.REFERENCE_ROLES):
    # Postfix the SMTP ports, Dovecot POP3 and IMAP.
    "nsd-dns": (("dns", 53),),
    "postfix-mta": (("smtp", 25), ("smtp", 587), ("pop3", 110), ("imap", 143)),
    "postfix-mx": (("smtp", 25), ("pop3", 110), ("imap", 143)),
}

# With TLS on in the lab, what each role serves besides (RFC 8314 §3.3: TLS from the first byte);
# its clear ports offer STARTTLS/STLS too. Postfix is not given 465 (services.reference.postfix),
# Dovecot serves 995 and 993 once it has ssl=yes.
ROLE_TLS_SERVICES: dict[str, tuple[tuple[str, int], ...]] = {
    "mta": (("smtps", 465), ("pop3s", 995), ("imaps", 993)),
    "mx": (("pop3s", 995), ("imaps", 993)),
    "postfix-mta": (("pop3s", 995), ("imaps", 993)),
    "postfix-mx": (("pop3s", 995), ("imaps", 993)),
}


def role_services(role: str, *, tls: bool) -> tuple[tuple[str, int], ...]:
    """What a host of ``role`` serves, as (protocol, port): with ``tls``, the TLS ports too."""
    return ROLE_SERVICES.get(role, ()) + (ROLE_TLS_SERVICES.get(role, ()) if tls else ())


ATTEMPT_TIMEOUT = 0.5  # one connect or query; the whole probe has its own deadline
POLL_INTERVAL = 0.02  # a service that is still starting gets asked again this soon


class Target:
    __slots__ = ("kind", "address", "port", "zone")

    def __init__(self, kind: str, address: str, port: int, zone: str = "") -> None:
        self.kind = kind  # dns | smtp | pop3 | imap | smtps | pop3s | imaps
        self.address = address
        self.port = port
        self.zone = zone  # for dns: a zone the server must be authoritative for

    @classmethod
    def parse(cls, text: str) -> Target:
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] not in CHECKS or not parts[2].isdigit():
            raise ValueError(f"bad probe target {text!r}; use KIND:ADDRESS:PORT[:ZONE]")
        return cls(parts[0], parts[1], int(parts[2]), parts[3] if len(parts) == 4 else "")

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}:{self.port}"


_context: ssl.SSLContext | None = None
_context_lock = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """One verifying context for every TLS attempt of the probe: making one loads the system trust
    store (22 ms of CPU in a lab host), and a port still starting is tried every POLL_INTERVAL."""
    global _context
    with _context_lock:
        if _context is None:
            import ssl

            _context = ssl.create_default_context()
        return _context


def _greeting(target: Target, expect: bytes, quit_line: bytes, *, tls: bool = False) -> str:
    """The server's greeting, after a TLS handshake first with ``tls`` (465, 995, 993). The
    certificate is checked against the host's trust store (the lab CA is in it): a port that
    answers with a certificate clients would refuse is not ready."""
    with socket.create_connection((target.address, target.port), timeout=ATTEMPT_TIMEOUT) as raw:
        s = _tls_context().wrap_socket(raw, server_hostname=target.address) if tls else raw
        f = s.makefile("rb")
        line = f.readline(1024)
        if not line.startswith(expect):
            raise OSError(f"unexpected greeting {line[:80]!r}")
        s.sendall(quit_line)
        f.readline(1024)  # the goodbye; an orderly QUIT keeps the server's log clean
        return line.decode("ascii", "replace").strip()


def soa_query(zone: str, query_id: int) -> bytes:
    """An SOA query for ``zone`` in wire form (RFC 1035 §4.1), RD clear: an authoritative server
    is asked about its own zone."""
    labels = [label for label in zone.rstrip(".").split(".") if label]
    qname = b"".join(bytes([len(x)]) + x.encode("ascii") for x in labels) + b"\0"
    return struct.pack("!6H", query_id, 0, 1, 0, 0, 0) + qname + struct.pack("!2H", 6, 1)  # SOA, IN


def check_soa_reply(reply: bytes, query: bytes) -> str | None:
    """None for an authoritative NOERROR answer to ``query``, else what is wrong with ``reply``."""
    if len(reply) < 12 or reply[:2] != query[:2] or not reply[2] & 0x80:
        return "no reply to the query"
    if reply[12:len(query)] != query[12:]:
        return "a reply to another question"
    rcode, authoritative = reply[3] & 0x0F, bool(reply[2] & 0x04)
    if rcode != 0 or not authoritative:
        return f"rcode {rcode}, {'authoritative' if authoritative else 'not an authoritative answer'}"
    return None


def _dns(target: Target) -> str:
    # By hand rather than with dnspython: importing dns.message and dns.query took 115-140 ms,
    # on the path of every `labctl up`. A connected socket hears a port not yet open as
    # ECONNREFUSED at once (the ICMP error) instead of waiting out the attempt.
    zone = target.zone or "."
    query = soa_query(zone, int.from_bytes(os.urandom(2), "big"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(ATTEMPT_TIMEOUT)
        s.connect((target.address, target.port))
        s.send(query)
        until = time.monotonic() + ATTEMPT_TIMEOUT
        while True:  # a stray datagram (another ID) is not the answer: wait on for it, a while
            problem = check_soa_reply(s.recv(4096), query)
            if problem != "no reply to the query" or time.monotonic() >= until:
                break
    if problem is not None:
        raise OSError(f"SOA {target.zone}: {problem}")
    return f"SOA {target.zone} authoritative"


CHECKS: dict[str, Callable[[Target], str]] = {
    "smtp": lambda t: _greeting(t, b"220", b"QUIT\r\n"),
    "pop3": lambda t: _greeting(t, b"+OK", b"QUIT\r\n"),
    "imap": lambda t: _greeting(t, b"* OK", b"a LOGOUT\r\n"),
    "smtps": lambda t: _greeting(t, b"220", b"QUIT\r\n", tls=True),
    "pop3s": lambda t: _greeting(t, b"+OK", b"QUIT\r\n", tls=True),
    "imaps": lambda t: _greeting(t, b"* OK", b"a LOGOUT\r\n", tls=True),
    "dns": _dns,
}


def _poll(target: Target, started: float, deadline: float) -> dict[str, object]:
    """Ask one target until it answers or the deadline passes."""
    while True:
        try:
            detail = CHECKS[target.kind](target)
            return {"target": str(target), "ready": True, "detail": detail,
                    "after": round(time.monotonic() - started, 3)}
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            if time.monotonic() >= deadline:
                return {"target": str(target), "ready": False, "detail": str(exc) or type(exc).__name__}
        time.sleep(POLL_INTERVAL)


def probe(targets: list[Target], timeout: float) -> list[dict[str, object]]:
    """Poll every target at once: a host still starting (its address not yet answering ARP, so a
    connect waits out its timeout) must not hold up the answer of the others."""
    started = time.monotonic()
    results: list[dict[str, object]] = [{} for _ in targets]

    def poll(i: int) -> None:
        results[i] = _poll(targets[i], started, started + timeout)

    threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m services probe", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for all targets")
    parser.add_argument("targets", nargs="+", help="KIND:ADDRESS:PORT[:ZONE], KIND in dns, smtp, pop3, imap, "
                        "smtps, pop3s, imaps (TLS from the first byte)")
    args = parser.parse_args(argv)
    try:
        targets = [Target.parse(t) for t in args.targets]
    except ValueError as exc:
        parser.error(str(exc))
    results = probe(targets, args.timeout)
    for r in results:
        print(json.dumps(r))
    return 0 if all(r["ready"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
