"""Fetching new mail by POP3 (poplib) into the local Maildir.

The decision of what to fetch and what to delete is pure (:func:`plan`, from the UIDL listing and
the UIDs already fetched); :func:`fetch` is the session around it: USER, PASS, UIDL, RETR each new
message, DELE with ``--delete``, QUIT.

TLS (issue 12): ``tls=IMPLICIT`` is POP3 over TLS from the first byte (port 995, RFC 8314);
``STARTTLS`` is STLS on 110 (RFC 2595 §4), and fails before USER if the server does not offer it:
going on in clear would hand the password to whoever removed the offer.
"""

from __future__ import annotations

import os
import poplib
import ssl
from dataclasses import dataclass

from services.mua.errors import MuaError
from services.mua.local import LocalMailbox
from services.mua.security import CLEAR, IMPLICIT, STARTTLS, Security, not_verified

POP3_PORT = 110  # RFC 1939 §3
POP3S_PORT = 995  # RFC 8314 §7: POP3 over TLS from the first byte
# RFC 1939 §7: a unique-id is 1 to 70 characters from 0x21 to 0x7E.
UID_MAX_LENGTH = 70
# A POP3 server may take a while to open a big mailbox, but a lab server that has not answered in
# this long is down; RFC 1939 §3's ten-minute autologout timer is the server's, not ours.
TIMEOUT = 30.0


class FetchError(MuaError):
    """The POP3 server refused us, could not be reached, or broke the protocol."""


@dataclass(frozen=True)
class Plan:
    fetch: list[tuple[int, str]]  # (message number, UID) to RETR, in server order
    delete: list[int]  # message numbers to DELE once everything is stored locally
    held: set[str]  # the UIDs the local mailbox will hold after the fetch (still on the server)


@dataclass(frozen=True)
class FetchResult:
    """What a fetch did: the messages it stored locally, and the server's mailbox around it."""

    fetched: list[str]  # Maildir keys of the new messages
    on_server: int
    deleted: int


def parse_uidl(lines: list[bytes]) -> list[tuple[int, str]]:
    """The lines of a multi-line UIDL reply ("1 whqtswO00WBw418f9t5JxYwZ") as (number, UID)."""
    listing: list[tuple[int, str]] = []
    for raw in lines:
        fields = raw.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise FetchError(f"the server sent a malformed UIDL line {raw[:80]!r}")
        uid = fields[1].decode("ascii", "replace")
        if not 1 <= len(uid) <= UID_MAX_LENGTH or not all(0x21 <= b <= 0x7E for b in fields[1]):
            raise FetchError(f"the server sent an invalid unique-id {fields[1][:80]!r} (RFC 1939 §7)")
        listing.append((int(fields[0]), uid))
    if len({uid for _, uid in listing}) != len(listing):
        raise FetchError("the server listed the same unique-id twice; UIDs must be unique (RFC 1939 §7)")
    return listing


def plan(listing: list[tuple[int, str]], seen: set[str], *, delete: bool) -> Plan:
    """What to fetch: every message whose UID was not fetched before. With ``delete``, every
    message the local mailbox holds is deleted on the server, the old ones as well as the new."""
    new = [(n, uid) for n, uid in listing if uid not in seen]
    held = {uid for _, uid in listing}
    return Plan(fetch=new, delete=[n for n, _ in listing] if delete else [], held=held)


def _words(exc: poplib.error_proto) -> str:
    reply = exc.args[0] if exc.args else ""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def account_key(user: str, host: str, port: int) -> str:
    """Whose UIDs these are: a UID is unique only within one mailbox on one server."""
    return f"{user} at {host}:{port}"


def fetch(host: str, port: int, user: str, password: str, store: LocalMailbox, *,
          delete: bool = False, timeout: float = TIMEOUT, tls: Security = CLEAR,
          context: ssl.SSLContext | None = None) -> FetchResult:
    """Fetch the new messages of ``user`` into ``store``; ``tls``: CLEAR, STARTTLS (STLS) or
    IMPLICIT (995), with ``context`` (services.tls.client_context)."""
    where = f"{host}:{port}"
    try:
        if tls == IMPLICIT:
            pop: poplib.POP3 = poplib.POP3_SSL(host, port, timeout=timeout, context=context)
        else:
            pop = poplib.POP3(host, port, timeout=timeout)
    except ssl.SSLCertVerificationError as exc:
        raise FetchError(not_verified(host, exc, "fetch")) from exc
    except ssl.SSLError as exc:
        raise FetchError(f"no TLS with {where}: {exc.reason or exc}; is it the TLS port ({POP3S_PORT} for "
                         "--tls)?") from exc
    except poplib.error_proto as exc:
        raise FetchError(f"{where} turned the connection away: {_words(exc)}") from exc
    except OSError as exc:
        raise FetchError(f"cannot connect to the POP3 server {where}: {exc.strerror or exc}; "
                         "is the lab up (labctl status) and the server name right (--pop3)?") from exc
    try:
        if tls == STARTTLS:
            _stls(pop, where, context)
        return _session(pop, where, account_key(user, host, port), user, password, store, delete)
    except ssl.SSLCertVerificationError as exc:
        raise FetchError(not_verified(host, exc, "fetch")) from exc
    except ssl.SSLError as exc:
        raise FetchError(f"the TLS handshake with {where} failed: {exc.reason or exc}") from exc
    except poplib.error_proto as exc:
        raise FetchError(f"{where}: {_words(exc)}") from exc
    except OSError as exc:
        # The session ends without QUIT, so the server deletes nothing (RFC 1939 §6).
        raise FetchError(f"the connection to {where} failed: {exc.strerror or exc}; nothing was "
                         "deleted on the server, fetch again") from exc
    finally:
        pop.close()


def _stls(pop: poplib.POP3, where: str, context: ssl.SSLContext | None) -> None:
    """STLS before anything else (RFC 2595 §4), or stop: never USER/PASS in clear instead."""
    try:
        offered = pop.capa()
    except poplib.error_proto:
        offered = {}  # no CAPA (RFC 2449): no STLS either
    if "STLS" not in offered:
        raise FetchError(f"{where} offers no STLS; is the lab up with TLS (labctl up --tls)? "
                         "Or fetch in clear with --no-tls")
    pop.stls(context)


def _session(pop: poplib.POP3, where: str, account: str, user: str, password: str, store: LocalMailbox,
             delete: bool) -> FetchResult:
    try:
        pop.user(user)
        pop.pass_(password)
    except poplib.error_proto as exc:
        words = _words(exc)
        # RFC 2449 §8.1.2: [IN-USE] is a lock held by another session, not a wrong password.
        if "[IN-USE]" in words.upper():
            hint = "another session has the mailbox open; try again once it has quit"
        elif "plaintext" in words.lower():  # ours and Dovecot's words for a password refused in clear
            hint = "this server takes passwords only under TLS: fetch with --starttls or --tls"
        else:
            hint = "check --user and --password"
        raise FetchError(f"{where} refused the login for {user}: {words}; {hint}") from exc
    try:
        _, lines, _ = pop.uidl()
    except poplib.error_proto as exc:
        raise FetchError(f"{where} refused UIDL ({_words(exc)}); without unique-ids this client "
                         "cannot tell new messages from old ones") from exc

    listing = parse_uidl(lines)
    seen = store.seen(account)
    todo = plan(listing, seen, delete=delete)
    # Forget UIDs no longer on the server: the list grows with the mailbox, not forever.
    held = seen & todo.held
    if held != seen:
        store.remember(account, held)
    keys = []
    for number, uid in todo.fetch:
        _, msg_lines, _ = pop.retr(number)  # poplib removes the dot-stuffing (RFC 1939 §3)
        keys.append(store.add(b"\n".join(msg_lines) + b"\n"))
        held.add(uid)
        store.remember(account, held)  # after each message: a crash later refetches nothing
    if todo.delete:
        # A deleted message exists only in the local copy; get it onto the disk first.
        os.sync()
        for number in todo.delete:
            pop.dele(number)
    try:
        pop.quit()  # the deletions happen now, in the UPDATE state (RFC 1939 §6)
    except poplib.error_proto as exc:
        raise FetchError(f"{where} could not finish the session: {_words(exc)}; the messages are "
                         "stored locally, and some may still be on the server") from exc
    return FetchResult(fetched=keys, on_server=len(listing), deleted=len(todo.delete))
