"""Using the mail path of a running lab: send, fetch, read mailboxes, inspect the MTA queue.

Each operation runs inside the lab, through the MUA (``python3 -m services mail``) on a user's host
or the queue tool on the MTA host, exactly as a student typing on that host would; nothing writes
files behind the servers' backs, so every step crosses the wire and shows in the capture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from labctl.errors import LabctlError
from labctl.lab import ExecResult, HostStatus, Lab
from services import config as svc
from services.mua import PROG as MUA_PROG

MAIL = ["python3", "-m", "services", "mail"]
QUEUE = ["python3", "-m", "services", "queue"]
STORE = ["python3", "-m", "services", "store"]
UPLOAD_DIR = "/tmp/labctl-upload"


@dataclass(frozen=True)
class MailCommandResult:
    """What a mail command printed, and whether it worked."""

    host: str
    ok: bool
    output: str
    errors: str


def mua_host(lab: Lab, who: str) -> HostStatus:
    """The MUA host of ``who``: a host name (andy), its FQDN, or the user's address."""
    hosts = lab.hosts()
    for h in hosts:
        if h.kind == "mua" and (who in (h.name, h.fqdn) or who == h.user):
            return h
    users = ", ".join(f"{h.name} ({h.user})" for h in hosts if h.kind == "mua")
    raise LabctlError(f"{who!r} is not a mail user of lab {lab.name!r}; users: {users}")


def mta_host(lab: Lab) -> HostStatus:
    """The MTA whose queue labctl reads: ours (a reference Postfix keeps its own queue)."""
    mtas = [h for h in lab.hosts() if h.kind == "mta"]
    for h in mtas:
        if not h.is_reference:
            return h
    if mtas:
        name = mtas[0].name
        raise LabctlError(f"the MTA of lab {lab.name!r} is Postfix; see its queue with "
                          f"`labctl exec {name} --lab {lab.name} -- postqueue -p`, flush it with `postqueue -f`")
    raise LabctlError(f"lab {lab.name!r} has no MTA host")


def _outcome(host: HostStatus, result: ExecResult) -> MailCommandResult:
    errors = result.stderr.decode("utf-8", "replace")
    # The MUA advises the user at its host's prompt (`mail fetch`); through labctl, the same advice
    # is a labctl command, and the error says which host it came from.
    errors = errors.replace(f"{MUA_PROG}: error: ", f"labctl: {host.name}: ")
    errors = errors.replace(f"`{MUA_PROG} fetch`", f"`labctl fetch {host.name}`")
    errors = errors.replace(f"`{MUA_PROG} list --imap`", f"`labctl mailbox {host.name} --imap`")
    return MailCommandResult(host.name, result.exit_code == 0, result.output, errors)


def upload(lab: Lab, host: HostStatus, files: list[Path]) -> list[str]:
    """Copy local files into a fresh folder on ``host``; return their paths there."""
    import uuid  # 3 ms (platform): every command imports this module, only `send --attach` needs it

    folder = f"{UPLOAD_DIR}/{uuid.uuid4().hex[:8]}"
    contents = {}
    for f in files:
        try:
            contents[f.name] = f.read_bytes()
        except OSError as exc:
            raise LabctlError(f"cannot read {f}: {exc.strerror}") from exc
    lab.exec(host.name, ["mkdir", "-p", folder])
    lab.put_files(host, folder, contents)
    return [f"{folder}/{name}" for name in contents]


def send(lab: Lab, sender: str, to: list[str], subject: str, body: str, attach: list[Path] | None = None,
         *, submission: bool = False, tls: list[str] | None = None) -> MailCommandResult:
    """``mail send`` on the sender's host; ``tls``: the MUA's TLS flags (--tls, --starttls,
    --no-tls, --no-verify), none for its default."""
    host = mua_host(lab, sender)
    cmd = [*MAIL, "send", "--subject", subject, "--body", body]
    for rcpt in to:
        cmd += ["--to", rcpt]
    for path in upload(lab, host, attach) if attach else []:
        cmd += ["--attach", path]
    if submission:
        cmd.append("--submission")
    cmd += tls or []
    return _outcome(host, lab.exec(host.name, cmd))


def fetch(lab: Lab, user: str, *, delete: bool = False, tls: list[str] | None = None,
          imap: bool = False, folder: str | None = None) -> MailCommandResult:
    """``mail fetch`` on the user's host: by POP3, or with ``imap`` by IMAP (from ``folder``)."""
    host = mua_host(lab, user)
    cmd = [*MAIL, "fetch", *(["--delete"] if delete else []), *_imap(imap, folder), *(tls or [])]
    return _outcome(host, lab.exec(host.name, cmd))


def _imap(imap: bool, folder: str | None) -> list[str]:
    return ["--imap", *(["--folder", folder] if folder else [])] if imap else []


def imap_mailbox(lab: Lab, user: str, number: int | None = None, *, folder: str | None = None,
                 view: str = "text", as_json: bool = False, peek: bool = False,
                 tls: list[str] | None = None) -> MailCommandResult:
    """The user's mailbox on the server, by IMAP from the user's host: ``mail list --imap`` (the
    folders and the messages with their flags), or ``mail read --imap N`` (``peek``: BODY.PEEK[])."""
    host = mua_host(lab, user)
    if number is None:
        cmd = [*MAIL, "list", *_imap(True, folder)]
    else:
        cmd = [*MAIL, "read", str(number), *_imap(True, folder), *(["--peek"] if peek else [])]
        if view in ("raw", "tree"):
            cmd.append(f"--{view}")
    cmd += [*(["--json"] if as_json else []), *(tls or [])]
    return _outcome(host, lab.exec(host.name, cmd))


def mailbox(lab: Lab, user: str, number: int | None = None, *, view: str = "text",
            as_json: bool = False) -> MailCommandResult:
    """The local mailbox of ``user`` (after `fetch`): the list, or message ``number``.

    The list also says how many messages wait on the server: an empty local mailbox is no sign
    of an empty one there (the bounces a student waits for sit on the server until a fetch).
    """
    host = mua_host(lab, user)
    if number is None:
        cmd = [*MAIL, "list"]
    else:
        cmd = [*MAIL, "read", str(number)]
        if view in ("raw", "tree"):
            cmd.append(f"--{view}")
    if as_json:
        cmd.append("--json")
    local = _outcome(host, lab.exec(host.name, cmd))
    if number is not None or as_json or not local.ok:
        return local
    keeper, address = mailbox_keeper(lab, host)
    stored = len(json.loads(_store(lab, keeper, address, as_json=True).output or "[]"))
    where = f" --lab {lab.name}"
    said = (f"on the server ({keeper.fqdn}): {stored} message(s) for {address}; `labctl fetch {host.name}{where}` "
            f"copies the new ones here, `labctl mailbox --server {host.name}{where}` lists them there\n")
    return replace(local, output=local.output + said)


def mailbox_keeper(lab: Lab, mua: HostStatus) -> tuple[HostStatus, str]:
    """The host keeping the mailbox of ``mua``'s user on the server side, and the user's address.

    Read from the MUA host's lab.json through the engine's archive, so it works on a stopped host too.
    """
    files = {f.name: f.data for f in lab.read_files(mua, str(svc.CONFIG_PATH.parent))}
    cfg = svc.LabConfig.from_dict(json.loads(files.get(svc.CONFIG_PATH.name, b"{}") or b"{}"))
    domain = cfg.domain(mua.user.rpartition("@")[2])
    if domain is None:
        raise LabctlError(f"{mua.user} has no mail domain in lab {lab.name!r}")
    return lab.find(domain.mail_host), mua.user


def _store(lab: Lab, keeper: HostStatus, address: str, *, as_json: bool) -> MailCommandResult:
    return _outcome(keeper, lab.exec_in(keeper, [*STORE, address, *(["--json"] if as_json else [])]))


def server_mailbox(lab: Lab, user: str, *, as_json: bool = False) -> MailCommandResult:
    """The mailbox of ``user`` as the server keeps it (``services store`` on its mail host): what
    a fetch will find, read without a POP3 session (nothing in the capture, no mailbox lock)."""
    keeper, address = mailbox_keeper(lab, mua_host(lab, user))
    return _store(lab, keeper, address, as_json=as_json)


def queue(lab: Lab, *, flush: bool = False, as_json: bool = False) -> MailCommandResult:
    host = mta_host(lab)
    cmd = [*QUEUE, *(["--flush"] if flush else []), *(["--json"] if as_json else [])]
    return _outcome(host, lab.exec(host.name, cmd))
