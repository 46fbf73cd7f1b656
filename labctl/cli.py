"""The ``labctl`` command: a few lines per command over the library; only this module prints."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import docker.errors
from rich.console import Console
from rich.table import Table
from rich.text import Text

from labctl import engine, mail, topology
from labctl.errors import LabctlError
from labctl.events import BuildOutput, Event, Notice, Step
from labctl.image import ImageBuilder
from labctl.lab import HostStatus, Lab, list_labs

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DEFAULT_LAB = os.environ.get("LABCTL_LAB", "maillab")


class Reporter:
    """Prints library events: notices always, build output dimmed (or only the last line)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def __call__(self, event: Event) -> None:
        match event:
            # Text objects, not markup: build output and messages contain [brackets].
            case Notice(text):
                err.print(Text.assemble(("» ", "yellow"), text), soft_wrap=True)
            case Step(stage, text):
                err.print(Text.assemble(("✓ ", "green"), f"{stage}: {text}"), soft_wrap=True)
            case BuildOutput(text):
                if self.verbose or text.startswith("Step "):
                    err.print(Text("  " + text, style="dim"), soft_wrap=True)


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(engine.connect(), args.lab, Reporter(getattr(args, "verbose", False)))


def _hosts_table(hosts: Sequence[HostStatus], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("host", "name", "role", "address", "ports", "state"):
        # Names and addresses are what a student types next: never cut them short.
        table.add_column(col, no_wrap=col in ("name", "address", "role"), min_width=24 if col == "name" else None)
    for h in hosts:
        state = f"[green]{h.state}[/]" if h.state == "running" else f"[red]{h.state}[/]"
        table.add_row(h.name, h.fqdn, h.role, h.address, h.ports, state)
    return table


# -- commands ----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    topo = topology.load(args.topology)
    lab = _lab(args)
    # The reference image (Postfix, Dovecot, NSD) only when a host of this topology runs it.
    images = ImageBuilder(lab.client, lab.report).images({h.image for h in topo.hosts}, base=args.base,
                                                          mirror=args.mirror)
    image = ", ".join(images.values())
    hosts = lab.up(topo, images, subnet=args.subnet)
    out.print(_hosts_table(hosts, f"lab {lab.name} is up ({time.monotonic() - started:.1f} s, image {image})"))
    shell_host = next((h.name for h in hosts if h.role == "mua"), hosts[0].name)
    out.print(f"Try: [bold]labctl shell {shell_host}[/]" + (f" --lab {lab.name}" if lab.name != DEFAULT_LAB else "")
              + ", then `dig MX stevenchoy.example` or `telnet smtp.ouhk.example 25`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    client = engine.connect()
    names = list_labs(client) if args.all else [args.lab]
    for name in names:
        started = time.monotonic()
        removed = Lab(client, name).down()
        out.print(f"lab {name}: removed {removed} hosts, its network and volumes "
                  f"({time.monotonic() - started:.1f} s)")
    if not names:
        out.print("no labs are up")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = engine.connect()
    names = [args.lab] if args.lab_given else list_labs(client)
    labs = {name: Lab(client, name).status() for name in names}
    if args.json:
        out.print_json(json.dumps({n: [h.__dict__ | {"ports": h.ports} for h in hs] for n, hs in labs.items()}))
        return 0
    if not any(labs.values()):
        out.print("no labs are up; start one with `labctl up`")
        return 0
    for name, hosts in labs.items():
        out.print(_hosts_table(hosts, f"lab {name}"))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    lab = _lab(args)
    try:
        for chunk in lab.logs(args.host, follow=args.follow, tail=args.tail if args.tail is not None else "all"):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = [a for a in args.cmd if a != "--"] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabctlError("say what to run: labctl exec HOST -- COMMAND [ARGS...]")
    lab = _lab(args)
    host = lab.find(args.host)

    def write(stream: int) -> object:
        def w(data: bytes) -> None:
            os.write(stream, data)
        return w

    return lab.exec_stream(host.container, cmd, write(1), write(2), privileged=args.privileged)  # type: ignore[arg-type]


def cmd_shell(args: argparse.Namespace) -> int:
    lab = _lab(args)
    host = lab.find(args.host)
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise LabctlError("`labctl shell` needs the docker command-line client; install it "
                          "(Debian: apt-get install docker.io) or use `labctl exec HOST -- CMD`")
    tty = ["-it"] if sys.stdin.isatty() else ["-i"]
    # An interactive terminal is the docker CLI's craft (raw mode, resize, detach keys).
    os.execv(docker_cli, ["docker", "exec", *tty, "-e", f"PS1={host.name}:\\w# ", host.container, "bash", "-i"])
    return 0  # not reached


def _print_outcome(outcome: mail.Outcome) -> int:
    sys.stdout.write(outcome.output)
    if outcome.errors:
        sys.stderr.write(outcome.errors)
    return 0 if outcome.ok else 1


def cmd_send(args: argparse.Namespace) -> int:
    body = args.body if args.body is not None else sys.stdin.read()
    return _print_outcome(mail.send(_lab(args), args.sender, args.to, args.subject, body, args.attach,
                                    submission=args.submission))


def cmd_fetch(args: argparse.Namespace) -> int:
    return _print_outcome(mail.fetch(_lab(args), args.user, delete=args.delete))


def cmd_mailbox(args: argparse.Namespace) -> int:
    view = "raw" if args.raw else "tree" if args.tree else "text"
    return _print_outcome(mail.mailbox(_lab(args), args.user, args.number, view=view, as_json=args.json))


def cmd_queue(args: argparse.Namespace) -> int:
    return _print_outcome(mail.queue(_lab(args), flush=args.flush, as_json=args.json))


def cmd_host_state(args: argparse.Namespace) -> int:
    lab = _lab(args)
    action = {"stop": lab.stop, "start": lab.start, "kill": lab.kill}[args.command]
    for host in args.hosts:
        h = action(host)
        out.print(f"{h.name} ({h.fqdn}): {h.state}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    client = engine.connect()
    started = time.monotonic()
    builder = ImageBuilder(client, Reporter(verbose=True))
    tag = builder.ensure(base=args.base, mirror=args.mirror, rebuild=args.rebuild)
    out.print(f"lab image: {tag} ({time.monotonic() - started:.1f} s)")
    if args.reference:
        tag = builder.ensure_reference(base=args.base, mirror=args.mirror, rebuild=args.rebuild)
        out.print(f"reference image: {tag} ({time.monotonic() - started:.1f} s)")
    return 0


# -- parsing -----------------------------------------------------------------------------------


def _subnet(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 subnet like 10.90.0.0/24 ({exc})") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labctl", description="Bring up and use a maillab lab.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: object, help_text: str, lab: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if lab:
            p.add_argument("--lab", default=None, help=f"lab name (default: {DEFAULT_LAB}, or $LABCTL_LAB)")
        return p

    def image_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base", help="base image to build FROM (default: debian:bookworm-slim, "
                                      "bootstrapped with debootstrap when it cannot be pulled)")
        p.add_argument("--mirror", help="Debian mirror for bootstrapping (default: the host's apt sources)")

    p = add("up", cmd_up, "build the image if needed, start the lab, wait until every service answers")
    p.add_argument("--topology", type=Path, default=topology.DEFAULT_TOPOLOGY, help="topology file")
    p.add_argument("--subnet", type=_subnet, help="lab subnet (default: the topology's, or a free one)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the image build output")
    image_options(p)

    p = add("down", cmd_down, "remove every container, network and volume of the lab")
    p.add_argument("--all", action="store_true", help="every lab on this engine")

    p = add("status", cmd_status, "the labs that are up and their hosts")
    p.add_argument("--json", action="store_true")

    p = add("logs", cmd_logs, "a host's service log")
    p.add_argument("host")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int)

    p = add("exec", cmd_exec, "run a command on a lab host: labctl exec HOST -- CMD [ARGS...]")
    p.add_argument("--privileged", action="store_true", help="with every capability (tc, iptables)")
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    p = add("shell", cmd_shell, "an interactive shell on a lab host")
    p.add_argument("host")

    for verb, text in (("stop", "stop hosts (SIGTERM); their queue and mailboxes are kept"),
                       ("start", "start stopped hosts and wait until their services answer"),
                       ("kill", "kill hosts (SIGKILL), as a crash would")):
        p = add(verb, cmd_host_state, text)
        p.add_argument("hosts", nargs="+", metavar="HOST")

    p = add("send", cmd_send, "send a message from a user's MUA host (SMTP submission to the MTA)")
    p.add_argument("--from", dest="sender", required=True, help="the sending user: host name or address (andy)")
    p.add_argument("--to", action="append", required=True, help="recipient address (repeatable)")
    p.add_argument("--subject", required=True)
    p.add_argument("--body", help="message text (default: read from standard input)")
    p.add_argument("--attach", action="append", type=Path, default=[], help="a file to attach (repeatable)")
    p.add_argument("--submission", action="store_true", help="submit on port 587 with AUTH instead of 25")

    p = add("fetch", cmd_fetch, "fetch a user's new mail by POP3 into the MUA's local mailbox")
    p.add_argument("user", help="host name or address (betty)")
    p.add_argument("--delete", action="store_true", help="delete fetched messages on the server")

    p = add("mailbox", cmd_mailbox, "a user's local mailbox (after fetch): the list, or message N")
    p.add_argument("user")
    p.add_argument("number", nargs="?", type=int)
    view = p.add_mutually_exclusive_group()
    view.add_argument("--raw", action="store_true", help="the message exactly as stored")
    view.add_argument("--tree", action="store_true", help="only the MIME tree")
    p.add_argument("--json", action="store_true")

    p = add("queue", cmd_queue, "the sender MTA's queue: messages, recipients, attempts, next try, last error")
    p.add_argument("--flush", action="store_true", help="retry every queued message now")
    p.add_argument("--json", action="store_true")

    image = sub.add_parser("image", help="the lab image").add_subparsers(dest="image_command", required=True)
    p = image.add_parser("build", help="build the lab image (bootstrapping a base if needed)")
    p.set_defaults(func=cmd_image_build)
    p.add_argument("--rebuild", action="store_true", help="build even if an image with this hash exists")
    p.add_argument("--reference", action="store_true",
                   help="also the reference image (Postfix, Dovecot, NSD, fetchmail, dnsperf) for comparisons")
    image_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "lab"):
        args.lab_given = args.lab is not None
        args.lab = args.lab or DEFAULT_LAB
    try:
        return int(args.func(args))
    except LabctlError as exc:
        err.print(Text.assemble(("labctl: ", "bold red"), str(exc)), soft_wrap=True)
        return 1
    except docker.errors.APIError as exc:
        # Not a user error, but the engine said why: that helps more than a traceback.
        err.print(Text.assemble(("labctl: the Docker engine refused: ", "bold red"),
                                str(exc.explanation or exc)), soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
