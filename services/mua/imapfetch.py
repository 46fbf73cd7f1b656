"""Mail on the server by IMAP (RFC 3501): ``mail fetch --imap``, ``mail list --imap``, ``mail read --imap``.

Where POP3 downloads and (with ``--delete``) removes, an IMAP client leaves the mail, its folders
and its flags on the server. So ``fetch --imap`` copies into the local Maildir only the messages
it has not copied before, and leaves them there marked ``\\Seen`` (it asks for ``BODY[]``, which
sets the flag, RFC 3501 §6.4.5, as a real client's "open" does); ``--delete`` flags them
``\\Deleted`` and expunges them. What was copied is remembered by UIDVALIDITY and UID (§2.3.1.1):
a UID names one message for as long as its folder's UIDVALIDITY stays the same, across sessions
and restarts, and a new UIDVALIDITY makes every remembered UID meaningless.

``list`` and ``read`` look at the server's folders without copying. ``list`` uses EXAMINE (a
read-only SELECT) and ``BODY.PEEK``, so it changes nothing; ``read`` asks for ``BODY[]`` (marking
the message ``\\Seen``) unless told to peek.
"""

from __future__ import annotations

import imaplib
import os
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from services.mua import view
from services.mua.errors import MuaError
from services.mua.local import LocalMailbox
from services.mua.retrieve import TIMEOUT, FetchResult
from services.mua.security import IMPLICIT, STARTTLS, Security, not_verified

IMAP_PORT = 143  # RFC 3501 §2.1
IMAPS_PORT = 993  # RFC 8314 §3.3
INBOX = "INBOX"
SEEN = "\\Seen"
# The headers `list --imap` shows; BODY.PEEK: looking at a folder leaves every flag as it was.
LIST_ITEMS = "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (DATE FROM SUBJECT)])"
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)", re.IGNORECASE)
_UID = re.compile(rb"UID (\d+)", re.IGNORECASE)
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)", re.IGNORECASE)
_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')


# What imaplib returns as a command's data: lines, (text, literal) pairs, None for "nothing".
Data = Sequence[bytes | tuple[bytes, bytes] | None]


class ImapError(MuaError):
    """The IMAP server refused us, could not be reached, or broke the protocol."""


@dataclass(frozen=True)
class Server:
    """Where the mailbox is and how to reach it: ``context`` is services.tls.client_context's."""

    host: str
    port: int
    user: str
    password: str
    security: Security
    context: ssl.SSLContext | None = None
    timeout: float = TIMEOUT

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Listed:
    """One message of a server folder, as ``list --imap`` shows it."""

    summary: view.Summary  # number: the message sequence number; key: "UID n"
    uid: int
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Folder:
    name: str
    attributes: tuple[str, ...]  # \Noselect, \HasChildren, \Sent... (RFC 3501 §7.2.2, RFC 6154)


@dataclass(frozen=True)
class Read:
    """A message read from the server, and how: BODY.PEEK[] leaves its flags, BODY[] sets \\Seen."""

    data: bytes  # as the server sent it (CRLF line ends)
    uid: int
    flags: tuple[str, ...]  # after the read
    peeked: bool


def account_key(user: str, host: str, folder: str) -> str:
    """Whose UIDs these are: one folder of one account on one server. Not the port: 143 and 993
    reach the same mailbox, and a fetch over TLS must not take every message again."""
    return f"{user} at {host} by IMAP, folder {folder}"


def uid_set(uids: Sequence[int]) -> str:
    """UIDs as an IMAP sequence set with ranges (RFC 3501 §9 sequence-set): 1:3,7,9:10."""
    ranges: list[list[int]] = []
    for uid in sorted(set(uids)):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


def quoted(folder: str) -> str:
    """A folder name as an IMAP quoted string (imaplib sends arguments as given)."""
    if not folder.isascii() or any(c in folder for c in "\r\n\0"):
        raise ImapError(f"folder name {folder!r}: this client sends only ASCII names (see `mail list --imap`)")
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _words(exc: BaseException | Data) -> str:
    raw = exc.args[0] if isinstance(exc, BaseException) and exc.args else exc
    if isinstance(raw, list | tuple):
        raw = b" ".join(x for x in raw if isinstance(x, bytes))
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    return " ".join(text.split()) or "no reason given"


def _flags(head: bytes) -> tuple[str, ...]:
    found = _FLAGS.search(head)
    return tuple(f.decode("ascii", "replace") for f in found.group(1).split()) if found else ()


@contextmanager
def session(server: Server) -> Iterator[imaplib.IMAP4]:
    """A logged-in IMAP session (LOGOUT at the end); every failure is one ImapError saying what to do.

    It ends with LOGOUT alone, never CLOSE: CLOSE expunges every \\Deleted message of a folder
    opened read-write (RFC 3501 §6.4.2), including those another client only marked."""
    where = server.where
    try:
        if server.security == IMPLICIT:
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(server.host, server.port, ssl_context=server.context,
                                                    timeout=server.timeout)
        else:
            imap = imaplib.IMAP4(server.host, server.port, timeout=server.timeout)
    except ssl.SSLCertVerificationError as exc:
        raise ImapError(not_verified(server.host, exc, "fetch")) from exc
    except ssl.SSLError as exc:
        raise ImapError(f"no TLS with {where}: {exc.reason or exc}; is it the TLS port ({IMAPS_PORT} for --tls)?") \
            from exc
    except imaplib.IMAP4.error as exc:  # a greeting that is not "* OK" (a BYE: turned away)
        raise ImapError(f"{where} turned the connection away: {_words(exc)}") from exc
    except OSError as exc:
        raise ImapError(f"cannot connect to the IMAP server {where}: {exc.strerror or exc}; is the lab up "
                        "(labctl status) and the server name right (--imap-server)?") from exc
    try:
        if server.security == STARTTLS:
            if "STARTTLS" not in imap.capabilities:
                raise ImapError(f"{where} offers no STARTTLS; is the lab up with TLS (labctl up --tls)? "
                                "Or fetch in clear with --no-tls")
            imap.starttls(ssl_context=server.context)
        _login(imap, server)
        yield imap
        imap.logout()
    except ssl.SSLCertVerificationError as exc:
        raise ImapError(not_verified(server.host, exc, "fetch")) from exc
    except ssl.SSLError as exc:
        raise ImapError(f"the TLS handshake with {where} failed: {exc.reason or exc}") from exc
    except imaplib.IMAP4.abort as exc:  # the connection broke, or the server said BYE
        raise ImapError(f"the IMAP session with {where} broke off: {_words(exc)}; what was stored locally is "
                        "kept, fetch again") from exc
    except imaplib.IMAP4.error as exc:
        raise ImapError(f"{where}: {_words(exc)}") from exc
    except OSError as exc:
        raise ImapError(f"the connection to {where} failed: {exc.strerror or exc}; what was stored locally is "
                        "kept, fetch again") from exc
    finally:
        try:
            imap.shutdown()
        except OSError:
            pass  # closed already (after LOGOUT, or by the server)


def _login(imap: imaplib.IMAP4, server: Server) -> None:
    if "LOGINDISABLED" in imap.capabilities:  # RFC 3501 §6.2.3: not in clear on this server
        raise ImapError(f"{server.where} takes no password in clear text (LOGINDISABLED); fetch with "
                        "--starttls, or --tls on port 993")
    try:
        imap.login(server.user, server.password)
    except imaplib.IMAP4.error as exc:
        words = _words(exc)
        hint = ("it wants TLS first: fetch with --starttls, or --tls on port 993" if "PRIVACYREQUIRED" in words.upper()
                else "check --user and --password")
        raise ImapError(f"{server.where} refused the login for {server.user}: {words}; {hint}") from exc


def _select(imap: imaplib.IMAP4, where: str, folder: str, *, readonly: bool) -> tuple[int, int]:
    """SELECT (or EXAMINE) ``folder``; its UIDVALIDITY and how many messages it has."""
    typ, data = imap.select(quoted(folder), readonly=readonly)
    if typ != "OK":
        raise ImapError(f"{where} cannot open the folder {folder!r}: {_words(data)}; `mail list --imap` "
                        "shows the folders there")
    _, values = imap.response("UIDVALIDITY")
    try:
        return int(values[-1]), int(data[-1] or 0)
    except (TypeError, ValueError, IndexError):
        raise ImapError(f"{where} gave no UIDVALIDITY for {folder!r} (RFC 3501 §6.3.1 requires it); without it "
                        "this client cannot tell new messages from old ones") from None


def _check(typ: str, data: Data, where: str, what: str) -> None:
    if typ != "OK":
        raise ImapError(f"{where} refused {what}: {_words(data)}")


def _all_uids(imap: imaplib.IMAP4, where: str) -> list[int]:
    typ, data = imap.uid("SEARCH", "ALL")
    _check(typ, data, where, "UID SEARCH ALL")
    try:
        return [int(x) for x in b" ".join(d for d in data if isinstance(d, bytes)).split()]
    except ValueError:
        raise ImapError(f"{where} answered UID SEARCH with something that is not UIDs: {data[:1]!r}") from None


def _responses(data: Data) -> Iterator[tuple[bytes, bytes]]:
    """Each FETCH response with a literal as (its text, the literal): imaplib gives the text up to
    the literal and the literal as a pair, and the rest of that response (FLAGS may come after
    the literal) as the next item."""
    for i, part in enumerate(data):
        if isinstance(part, tuple):
            tail = data[i + 1] if i + 1 < len(data) else b""
            yield part[0] + b" " + (tail if isinstance(tail, bytes) else b""), part[1]


def _body(data: Data) -> tuple[bytes, bytes] | None:
    """(the response's text, the message) of a FETCH of BODY[] or BODY.PEEK[]."""
    return next(((head, literal) for head, literal in _responses(data) if b"BODY[]" in head.upper()), None)


def fetch(server: Server, store: LocalMailbox, *, delete: bool = False, folder: str = INBOX) -> FetchResult:
    """Copy the messages of ``folder`` not copied before into ``store``; with ``delete``, remove
    every message the store holds from the server (flag \\Deleted, expunge)."""
    with session(server) as imap:
        validity, _ = _select(imap, server.where, folder, readonly=False)
        uids = _all_uids(imap, server.where)
        account = account_key(server.user, server.host, folder)
        seen = store.seen(account)
        current = {f"{validity}/{uid}" for uid in uids}
        held = seen & current  # forget UIDs gone from the server, and every UID of an old UIDVALIDITY
        if held != seen:
            store.remember(account, held)
        keys = []
        for uid in uids:
            if f"{validity}/{uid}" in held:
                continue
            typ, data = imap.uid("FETCH", str(uid), "(BODY[])")  # BODY[], not PEEK: \Seen, as when opened
            _check(typ, data, server.where, f"UID FETCH {uid}")
            found = _body(data)
            if found is None:
                continue  # expunged by another session since the SEARCH: nothing to copy
            keys.append(store.add(found[1].replace(b"\r\n", b"\n")))
            held.add(f"{validity}/{uid}")
            store.remember(account, held)  # after each message: a crash later refetches nothing
        deleted = 0
        if delete and uids:
            os.sync()  # a deleted message exists only in the local copy: on the disk first
            which = uid_set(uids)
            typ, data = imap.uid("STORE", which, "+FLAGS.SILENT", "(\\Deleted)")
            _check(typ, data, server.where, "STORE +FLAGS (\\Deleted)")
            # UID EXPUNGE (RFC 4315) removes only what this fetch flagged, not what another client
            # flagged \Deleted and may still undelete; plain EXPUNGE where the server lacks UIDPLUS.
            if "UIDPLUS" in imap.capabilities:
                typ, data = imap.uid("EXPUNGE", which)
                _check(typ, data, server.where, "UID EXPUNGE")
                _, data = imap.response("EXPUNGE")  # imaplib keeps a UID command's EXPUNGE responses aside
            else:
                typ, data = imap.expunge()
                _check(typ, data, server.where, "EXPUNGE")
            deleted = len([x for x in data if x is not None])
        return FetchResult(fetched=keys, on_server=len(uids) - deleted, deleted=deleted)


def folders(imap: imaplib.IMAP4, where: str) -> list[Folder]:
    typ, data = imap.list('""', "*")
    _check(typ, [d for d in data if isinstance(d, bytes)], where, "LIST")
    found = []
    for line in data:
        if not isinstance(line, bytes):
            continue  # a name sent as a literal: not one this client can open by name anyway
        m = _LIST.match(line)
        if m is None:
            continue
        name = m.group("name").decode("utf-8", "replace")
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        found.append(Folder(name, tuple(m.group("attrs").decode("ascii", "replace").split())))
    return sorted(found, key=lambda f: (f.name.upper() != INBOX, f.name))


def listing(server: Server, folder: str = INBOX) -> tuple[list[Folder], list[Listed]]:
    """The server's folders, and the messages of ``folder`` with their flags (changing none)."""
    with session(server) as imap:
        boxes = folders(imap, server.where)
        _, count = _select(imap, server.where, folder, readonly=True)  # EXAMINE: no flag changes
        rows = []
        if count:
            typ, data = imap.fetch("1:*", LIST_ITEMS)
            _check(typ, data, server.where, "FETCH")
            for head, headers in _responses(data):
                uid = int(m.group(1)) if (m := _UID.search(head)) else 0
                size = int(m.group(1)) if (m := _SIZE.search(head)) else len(headers)
                s = view.summarize(int(head.split(None, 1)[0]), f"UID {uid}", headers)
                rows.append(Listed(view.Summary(s.number, s.key, s.date, s.sender, s.subject, size), uid,
                                   _flags(head)))
        return boxes, rows


def read(server: Server, number: int, *, folder: str = INBOX, peek: bool = False) -> Read:
    """Message ``number`` of ``folder``: with BODY[] (sets \\Seen) or with ``peek`` BODY.PEEK[]."""
    with session(server) as imap:
        _, count = _select(imap, server.where, folder, readonly=peek)
        if not 1 <= number <= count:
            have = f"messages 1 to {count}" if count else "no messages"
            raise ImapError(f"no message {number} in {folder} on {server.where}: it has {have} "
                            "(see `mail list --imap`)")
        item = "BODY.PEEK[]" if peek else "BODY[]"
        typ, data = imap.fetch(str(number), f"(UID FLAGS {item})")
        _check(typ, data, server.where, f"FETCH {number}")
        found = _body(data)
        if found is None:
            raise ImapError(f"message {number} was expunged on {server.where} while reading it; list again")
        head, message = found
        flags = _flags(head)
        if not peek and SEEN not in flags:
            # The server's FETCH response to BODY[] need not include the new FLAGS: ask.
            typ, data = imap.fetch(str(number), "(FLAGS)")
            flags = _flags(b" ".join(d for d in data if isinstance(d, bytes)))
        uid = _UID.search(head)
        return Read(message, int(uid.group(1)) if uid else 0, flags, peek)
