"""``python3 -m services mail``: the mail client a student (or labctl) runs on a MUA host.

    mail send --to ADDR --subject TEXT [--body TEXT | --body-file F] [--attach FILE] [--submission]
              [--tls | --starttls | --no-tls] [--no-verify]
    mail fetch [--delete] [--imap [--imap-server HOST[:PORT]] [--folder NAME]]
               [--tls | --starttls | --no-tls] [--no-verify]
    mail list [--json] [--imap [--folder NAME]]
    mail read N [--raw | --tree] [--json] [--imap [--folder NAME] [--peek]]
    mail save N [--dir D] [--part K]

The account, the servers and their password come from the lab configuration of this host; each
can be given as an option instead, which is how the tests run it against servers on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from services import config
from services import tls as lab_tls
from services.mua import PROG, compose, imapfetch, security, view
from services.mua.errors import MuaError
from services.mua.local import LocalMailbox
from services.mua.retrieve import POP3_PORT, POP3S_PORT, fetch
from services.mua.security import CLEAR, IMPLICIT, Security
from services.mua.security import chosen as security_of
from services.mua.submit import (
    SMTP_PORT,
    SUBMISSION_PORT,
    SUBMISSIONS_PORT,
    Login,
    submit,
)

DEFAULT_MAILDIR = Path.home() / "Maildir"


@dataclass(frozen=True)
class Account:
    """Who this client acts for and where it connects: the lab config, overridden by options."""

    user: str
    password: str
    server: str  # HOST[:PORT] of the MTA (send) or of the POP3 or IMAP server (fetch)
    helo: str  # the name this host gives in EHLO


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port)."""
    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise MuaError(f"bad server {text!r}; write HOST, HOST:PORT or [IPV6]:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MuaError(f"bad server {text!r}; write HOST, HOST:PORT or [IPV6]:PORT")
    return host, int(port)


def resolve_account(args: argparse.Namespace, *, server: Literal["smtp", "pop3", "imap"],
                    need_password: bool) -> Account:
    """The account for a send (``server="smtp"``) or a fetch (``"pop3"``, ``"imap"``): each setting
    from its option if given, else from this host's lab configuration, which is read only if needed."""
    # The IMAP server is the POP3 one (the same host serves both, on the same Maildirs).
    option, setting = ("imap_server", "pop3") if server == "imap" else (server, server)
    given: dict[str, str | None] = {"user": args.user, option.replace("_", "-"): getattr(args, option),
                                    "password": args.password if need_password else ""}
    missing = [f"--{name}" for name, value in given.items() if value is None]
    cfg: config.LabConfig | None = None
    if args.config is not None or missing:
        try:
            cfg = config.load(args.config or config.CONFIG_PATH)
        except config.ConfigError as exc:
            raise MuaError(f"{exc}; or give {', '.join(missing)}" if missing else str(exc)) from exc
    user = args.user
    address = getattr(args, option)
    if cfg is not None and (user is None or address is None):
        if cfg.mua is None:
            raise MuaError(f"host {cfg.me!r} is not a mail user host in lab {cfg.lab!r}; run this on a MUA "
                           f"host (labctl shell andy) or give {', '.join(missing)}")
        user = user or cfg.mua.user
        address = address or getattr(cfg.mua, setting)
    password = given["password"]
    if password is None:
        acct = cfg.account(user) if cfg is not None else None
        if acct is None:
            raise MuaError(f"no account {user!r} in the lab configuration; give --password")
        password = acct.password
    # EHLO names this host (RFC 5321 §4.1.1.1). Not smtplib's default, socket.getfqdn(): that may
    # ask a DNS server outside the lab.
    helo = socket.gethostname()
    if cfg is not None and any(h.name == cfg.me for h in cfg.hosts):
        helo = cfg.this.fqdn
    assert user is not None and address is not None  # from the options or the configuration
    return Account(user=user, password=password, server=address, helo=helo)


# -- commands ---------------------------------------------------------------------------------------


def _read_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MuaError(f"{what} is not UTF-8 text (byte {exc.start}); attach binary files with --attach") from exc


def _body(args: argparse.Namespace) -> str:
    if args.body is not None:
        return str(args.body)
    if args.body_file is not None:
        try:
            return _read_text(Path(args.body_file).read_bytes(), str(args.body_file))
        except OSError as exc:
            raise MuaError(f"cannot read the body file {args.body_file}: {exc.strerror}") from exc
    return _read_text(sys.stdin.buffer.read(), "standard input")


def _attachments(paths: list[str]) -> tuple[compose.Attachment, ...]:
    found = []
    for p in paths:
        try:
            found.append(compose.Attachment(Path(p).name, Path(p).read_bytes()))
        except OSError as exc:
            raise MuaError(f"cannot read the attachment {p}: {exc.strerror}") from exc
    return tuple(found)


def check_sealed(args: argparse.Namespace, recipients: Sequence[str]) -> None:
    """Refuse, before submitting, a recipient outside the sealed lab: the MTA could only bounce it.

    Off a lab host (no lab configuration, servers given as options) there is nothing to check by.
    """
    path = args.config or config.CONFIG_PATH
    try:
        if not path.exists():
            return
        cfg = config.load(path)
    except config.ConfigError:
        return  # resolve_account has said what is wrong with it, where it mattered
    for rcpt in recipients:
        why = cfg.outside(rcpt.rpartition("@")[2])
        if why is not None:
            raise MuaError(f"{rcpt}: {why}; nothing was sent (write to a lab user, say "
                           f"{', '.join(a.address for d in cfg.domains for a in d.accounts[:1])})")


def send_security(args: argparse.Namespace) -> tuple[Security, int]:
    """How ``mail send`` talks to the MTA, and the default port: --tls 465, --starttls 587, else 25
    (587 with --submission)."""
    security = security_of(args)
    if security == IMPLICIT:
        return security, SUBMISSIONS_PORT
    if args.starttls:
        return security, SUBMISSION_PORT
    return security, SUBMISSION_PORT if args.submission else SMTP_PORT


def cmd_send(args: argparse.Namespace) -> int:
    tls, default_port = send_security(args)
    authenticate = args.submission or tls == IMPLICIT or args.starttls
    acct = resolve_account(args, server="smtp", need_password=authenticate)
    draft = compose.Draft(
        sender=acct.user,
        to=tuple(args.to),
        cc=tuple(args.cc),
        bcc=tuple(args.bcc),
        subject=args.subject,
        body=_body(args),
        attachments=_attachments(args.attach),
    )
    check_sealed(args, draft.recipients)
    now = datetime.now().astimezone()  # RFC 5322 §3.3: the sender's local time and offset
    msgid = compose.message_id(acct.user, f"{now:%Y%m%d%H%M%S}.{secrets.token_hex(8)}")
    msg = compose.compose(draft, date=now, msgid=msgid)
    host, port = parse_endpoint(acct.server, default_port)
    login = Login(acct.user, acct.password) if authenticate else None
    context = lab_tls.client_context(verify=not args.no_verify) if tls != CLEAR else None
    receipt = submit(host, port, compose.to_wire(msg), draft.envelope_sender, draft.recipients,
                     login=login, helo=acct.helo, tls=tls, context=context)
    print(receipt.reply)
    print(f"Message-ID: {msgid}")
    for rcpt, reply in receipt.refused.items():
        print(f"{PROG}: {rcpt} was refused: {reply}", file=sys.stderr)
    return 1 if receipt.refused else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.imap:
        return fetch_imap(args)
    tls = security_of(args)
    acct = resolve_account(args, server="pop3", need_password=True)
    host, port = parse_endpoint(acct.server, POP3S_PORT if tls == IMPLICIT else POP3_PORT)
    store = LocalMailbox(args.maildir)
    context = lab_tls.client_context(verify=not args.no_verify) if tls != CLEAR else None
    outcome = fetch(host, port, acct.user, acct.password, store, delete=args.delete, tls=tls, context=context)
    n = len(outcome.fetched)
    line = f"fetched {n} new message{'' if n == 1 else 's'} from {host}:{port} into {store.path}"
    line += f" ({outcome.on_server} on the server"
    line += f", {outcome.deleted} deleted there)" if args.delete else ", kept there)"
    print(line)
    return 0


def imap_server(args: argparse.Namespace) -> imapfetch.Server:
    """The IMAP server to talk to, with the --tls/--starttls/--no-tls choice: 993 for --tls, else 143."""
    acct = resolve_account(args, server="imap", need_password=True)
    tls = security_of(args)
    host, port = parse_endpoint(acct.server, imapfetch.IMAPS_PORT if tls == IMPLICIT else imapfetch.IMAP_PORT)
    context = lab_tls.client_context(verify=not args.no_verify) if tls != CLEAR else None
    return imapfetch.Server(host, port, acct.user, acct.password, tls, context)


def fetch_imap(args: argparse.Namespace) -> int:
    server = imap_server(args)
    store = LocalMailbox(args.maildir)
    outcome = imapfetch.fetch(server, store, delete=args.delete, folder=args.folder)
    n = len(outcome.fetched)
    line = f"fetched {n} new message{'' if n == 1 else 's'} by IMAP from {server.where} {args.folder} into {store.path}"
    line += (f" ({outcome.deleted} deleted there, {outcome.on_server} left)" if args.delete
             else f" ({outcome.on_server} on the server, kept there, marked \\Seen)")
    print(line)
    return 0


def list_imap(args: argparse.Namespace) -> int:
    boxes, rows = imapfetch.listing(imap_server(args), args.folder)
    if args.json:
        print(json.dumps({"folders": [asdict(f) for f in boxes], "folder": args.folder,
                          "messages": [{**asdict(r.summary), "uid": r.uid, "flags": list(r.flags)} for r in rows]},
                         ensure_ascii=False, indent=2))
        return 0
    print("folders: " + ", ".join(f.name + (f" ({' '.join(f.attributes)})" if f.attributes else "") for f in boxes))
    if not rows:
        print(f"no messages in {args.folder} on the server")
    else:
        print(f"{args.folder} on the server:")
        sys.stdout.write(view.render_flagged([r.summary for r in rows], [r.flags for r in rows]))
    return 0


def read_imap(args: argparse.Namespace) -> int:
    got = imapfetch.read(imap_server(args), args.number, folder=args.folder, peek=args.peek)
    how = ("BODY.PEEK[]: its flags on the server are unchanged" if got.peeked
           else "BODY[]: the server has marked it \\Seen (--peek reads with BODY.PEEK[] instead)")
    if args.raw and not args.json:
        sys.stdout.flush()
        sys.stdout.buffer.write(got.data)
        sys.stdout.buffer.flush()
    else:
        data = got.data.replace(b"\r\n", b"\n")
        show(args, data, {"number": args.number, "uid": got.uid, "folder": args.folder, "size": len(got.data),
                          "flags": list(got.flags), "peek": got.peeked})
    print(f"{PROG}: read message {args.number} (UID {got.uid}) of {args.folder} with {how}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.imap:
        return list_imap(args)
    store = LocalMailbox(args.maildir)
    rows = [view.summarize(e.number, e.key, store.read(e)) for e in store.entries()]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=2))
    elif not rows:
        print(f"no messages in {store.path}; `mail fetch` gets new mail from the server")
    else:
        sys.stdout.write(view.render_list(rows))
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    if args.imap:
        return read_imap(args)
    entry, data = LocalMailbox(args.maildir).get(args.number)
    if args.raw and not args.json:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    show(args, data, {"number": entry.number, "key": entry.key, "size": entry.size})
    return 0


def show(args: argparse.Namespace, data: bytes, about: dict[str, object]) -> None:
    """A message as `mail read` shows it: decoded text, the MIME tree, or JSON with ``about`` first."""
    msg = view.parse(data)
    if args.json:
        obj: dict[str, object] = dict(about)
        if args.raw:
            obj["raw"] = data.decode("utf-8", "replace")
        elif args.tree:
            obj["parts"] = [asdict(p) for p in view.tree(msg)]
        else:
            obj.update(view.message_json(msg))
        print(json.dumps(obj, ensure_ascii=False, indent=2))
    elif args.tree:
        print(view.render_tree(view.tree(msg)))
    else:
        sys.stdout.write(view.render_message(msg))


def _write_new(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a file that did not exist: never overwrite, never follow a planted link."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    for i in range(1000):
        path = folder / (name if i == 0 else f"{stem}-{i}{dot}{ext}")
        try:
            with path.open("xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
    raise MuaError(f"too many files named like {name!r} in {folder}; save into another --dir")


def cmd_save(args: argparse.Namespace) -> int:
    _, data = LocalMailbox(args.maildir).get(args.number)
    msg = view.parse(data)
    if args.part is not None:
        found = view.part(msg, args.part)
        if found is None:
            leaves = ", ".join(p.number for p in view.tree(msg) if p.size is not None)
            raise MuaError(f"message {args.number} has no part {args.part!r} to save; its parts are "
                           f"{leaves} (see `mail read {args.number} --tree`)")
        chosen = [found]
    else:
        chosen = view.attachments(msg)
        if not chosen:
            raise MuaError(f"message {args.number} has no attachments; save a part with --part K "
                           f"(see `mail read {args.number} --tree`)")
    folder = Path(args.dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for p, content in chosen:
            print(_write_new(folder, view.safe_filename(p.filename, view.default_filename(p)), content))
    except OSError as exc:
        raise MuaError(f"cannot save into {folder}: {exc.strerror or exc}") from exc
    return 0


# -- command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="the mail client of a lab user")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--config", type=Path, help=f"lab configuration (default {config.CONFIG_PATH})")
    account.add_argument("--user", help="the mail address to act for (default: this host's user)")
    account.add_argument("--password", help="the account's password (default: from the lab configuration)")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--maildir", type=Path, default=DEFAULT_MAILDIR,
                       help="the local mailbox (default ~/Maildir)")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str,
            parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=parents)
        p.set_defaults(func=func)
        return p

    p = add("send", cmd_send, "compose a message and submit it to the MTA by SMTP", [account])
    p.add_argument("--smtp", metavar="HOST[:PORT]", help="the MTA (default: from the lab configuration)")
    p.add_argument("--to", action="append", required=True, metavar="ADDR", help="recipient (repeatable)")
    p.add_argument("--cc", action="append", default=[], metavar="ADDR", help="copy to (repeatable)")
    p.add_argument("--bcc", action="append", default=[], metavar="ADDR",
                   help="blind copy: in the envelope, not the header (repeatable)")
    p.add_argument("--subject", required=True)
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", help="the message text (default: read standard input)")
    body.add_argument("--body-file", metavar="FILE", help="read the message text (UTF-8) from FILE")
    p.add_argument("--attach", action="append", default=[], metavar="FILE", help="attach a file (repeatable)")
    p.add_argument("--submission", action="store_true",
                   help=f"submit on port {SUBMISSION_PORT} with AUTH instead of port {SMTP_PORT}")
    security.add_flags(
        p, implicit=f"submit with AUTH over TLS from the first byte, port {SUBMISSIONS_PORT} (RFC 8314)",
        starttls=f"submit with AUTH on port {SUBMISSION_PORT} after STARTTLS (RFC 3207)")

    imap = argparse.ArgumentParser(add_help=False)
    imap.add_argument("--imap", action="store_true", help="the mailbox on the server, by IMAP")
    imap.add_argument("--imap-server", metavar="HOST[:PORT]",
                      help="the IMAP server (default: the lab's mail server, the POP3 one)")
    imap.add_argument("--folder", default=imapfetch.INBOX, help="with --imap: the server folder (default INBOX)")

    p = add("fetch", cmd_fetch, "fetch new messages by POP3 (or IMAP) into the local mailbox", [account, store, imap])
    p.add_argument("--pop3", metavar="HOST[:PORT]", help="the POP3 server (default: from the lab configuration)")
    p.add_argument("--delete", action="store_true", help="delete the fetched messages on the server")
    security.add_flags(
        p, implicit="fetch over TLS from the first byte: POP3 on 995, IMAP on 993 (RFC 8314)",
        starttls="fetch after STLS on 110 (RFC 2595), or STARTTLS on 143 with --imap (RFC 3501 §6.2.1)")

    imap_tls = argparse.ArgumentParser(add_help=False)
    security.add_flags(imap_tls, implicit="with --imap: TLS from the first byte, port 993 (RFC 8314)",
                       starttls="with --imap: STARTTLS on port 143 (RFC 3501 §6.2.1)")

    p = add("list", cmd_list, "the messages in the local mailbox, numbered in arrival order (--imap: "
            "the server's folders and the messages of one, with their flags)", [account, store, imap, imap_tls])
    p.add_argument("--json", action="store_true", help="a JSON list")

    p = add("read", cmd_read, "show message N: headers, decoded text and MIME tree (--imap: message N of "
            "a server folder)", [account, store, imap, imap_tls])
    p.add_argument("number", type=int, metavar="N")
    p.add_argument("--peek", action="store_true",
                   help="with --imap: read with BODY.PEEK[], leaving the message unread on the server")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--raw", action="store_true", help="the message exactly as stored")
    shown.add_argument("--tree", action="store_true", help="only the MIME tree")
    p.add_argument("--json", action="store_true", help="a JSON object (headers, text, parts)")

    p = add("save", cmd_save, "save the attachments of message N byte for byte", [store])
    p.add_argument("number", type=int, metavar="N")
    p.add_argument("--dir", default=".", help="the folder to save into (default: the current one)")
    p.add_argument("--part", metavar="K", help="save part K (a number from `read N --tree`) instead")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (argparse printed it) or --help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        result: int = args.func(args)
        return result
    except MuaError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
