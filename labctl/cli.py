"""The ``labctl`` command: a few lines per command over the library; only this module prints."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

from labctl import engine, mail, topology
from labctl.errors import LabctlError, LabNotRunning
from labctl.events import BuildOutput, Event, Notice, Stage
from labctl.fleet import LOCAL, Fleet, Outcome
from labctl.image import ImageBuilder
from labctl.lab import HostStatus, Lab, check_lab_name
from labctl.traffic import cli as traffic_cli
from services.capture import CAPTURE_DIR
from services.config import TlsSettings
from services.smtp.replyfaults import STAGES

if TYPE_CHECKING:  # `labctl run` imports these itself: they load the traffic decoders, which other commands skip
    from rich.status import Status  # the spinners of many-lab batches and `run` (6 ms: not for every command)

    from labctl.scenario.model import Scenario, Step, Task
    from labctl.scenario.runner import ScenarioResult, StepResult

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
            case Stage(stage, text):
                err.print(Text.assemble(("✓ ", "green"), f"{stage}: {text}"), soft_wrap=True)
            case BuildOutput(text):
                if self.verbose or text.startswith("Step "):
                    err.print(Text("  " + text, style="dim"), soft_wrap=True)


def _fleet(args: argparse.Namespace) -> Fleet:
    return Fleet.from_file(getattr(args, "engines", None))


def _lab(args: argparse.Namespace) -> Lab:
    return _fleet(args).lab(args.lab, Reporter(getattr(args, "verbose", False)))


def _hosts_table(hosts: Sequence[HostStatus], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    engines = any(h.engine for h in hosts)  # an engines file is in use: say where each host runs
    for col in ("host", "name", "role", "address", "ports", "state", *(("engine",) if engines else ())):
        # Names and addresses are what a student types next: never cut them short.
        table.add_column(col, no_wrap=col in ("name", "address", "role"), min_width=24 if col == "name" else None)
    for h in hosts:
        state = f"[green]{h.condition}[/]" if h.state == "running" else f"[red]{h.condition}[/]"
        table.add_row(h.name, h.fqdn, h.role, h.address, h.ports, state, *((h.engine,) if engines else ()))
    return table


def _lab_names(args: argparse.Namespace) -> list[str]:
    """The labs of ``--labs SPEC`` (brace ranges, commas, @file), every name checked."""
    from labctl import labnames

    return labnames.expand(args.labs, lambda path: Path(path).read_text(encoding="utf-8"))


class BatchProgress:
    """One line that counts labs done (and failed) while a batch runs; each failure printed once."""

    def __init__(self, verb: str, total: int) -> None:
        self.verb, self.total, self.done, self.failed = verb, total, 0, 0
        self.started = time.monotonic()
        from rich.status import Status

        self.status = Status(self._text(), console=err)

    def _text(self) -> str:
        failed = f", [red]{self.failed} failed[/]" if self.failed else ""
        return f"{self.verb}: {self.done}/{self.total} labs{failed} ({time.monotonic() - self.started:.0f} s)"

    def __enter__(self) -> BatchProgress:
        self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        if outcome.error:
            self.failed += 1
            err.print(Text.assemble(("✗ ", "red"), f"lab {outcome.lab}: {outcome.error}"), soft_wrap=True)
        self.status.update(self._text())


def _batch_tally(verb: str, outcomes: Sequence[Outcome], started: float,
                 again: str = "running the same command again retries only what is missing") -> int:
    failed = [o for o in outcomes if o.error]
    per: dict[str, int] = {}
    for o in outcomes:
        if not o.error:
            per[o.engine] = per.get(o.engine, 0) + 1
    spread = ", ".join(f"{n} on {e}" for e, n in sorted(per.items()))
    out.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} labs {verb} in {time.monotonic() - started:.1f} s"
              + (f" ({spread})" if spread else ""))
    if failed:
        err.print(f"{len(failed)} failed: {' '.join(o.lab for o in failed)}; the messages above say why, and "
                  f"{again}")
    return 1 if failed else 0


# -- commands ----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    check_lab_name(args.lab)  # before the image is built: the name is what Docker refuses last
    topo = topology.load(args.topology)
    for overlay in args.overlay:
        topo = topology.load_overlay(topo, overlay)
    if args.tls and not topo.tls.enabled:
        topo = replace(topo, tls=TlsSettings(enabled=True))  # the topology's own tls: mapping stands
    fleet = _fleet(args)
    report = Reporter(args.verbose)
    # The reference image (Postfix, Dovecot, NSD) only when a host of this topology runs it.
    images = fleet.build({h.image for h in topo.hosts}, report, base=args.base, mirror=args.mirror)
    if args.labs:
        return _up_many(args, fleet, topo, images)
    lab = fleet.lab(args.lab, report, topo=topo, place=True, split=args.split)
    fleet.push(lab.engine_list(), images, report)
    image = ", ".join(images.values())
    placed = lab.up(topo, images, subnet=args.subnet)
    out.print(_hosts_table(placed.hosts, f"lab {lab.name} is up ({time.monotonic() - started:.1f} s, image {image})"))
    out.print(_try_hint(placed.topology, lab.name))
    return 0


def _up_many(args: argparse.Namespace, fleet: Fleet, topo: topology.Topology, images: dict[str, str]) -> int:
    """`up --labs`: every lab placed first, images copied to the engines that get labs, subnets
    chosen per engine, then BATCH labs brought up at once."""
    from labctl.fleet import each, subnets_for

    started = time.monotonic()
    if args.subnet is not None or args.split:
        raise LabctlError("--labs brings up many labs, each whole on one engine: leave out --subnet (each lab "
                          "gets a free subnet of its engine) and --split (one lab over several engines)")
    names = _lab_names(args)
    placed = fleet.place_all(names)
    fleet.push([fleet.engine(e) for e in dict.fromkeys(placed.values())], images, Reporter(args.verbose))
    chosen = subnets_for(fleet, placed, topo)

    def up(name: str) -> str:
        fleet.lab_on(name, placed[name]).up(topo, images, subnet=chosen[name])
        return placed[name]

    with BatchProgress("up", len(names)) as progress:
        outcomes = each(names, up, progress)
    return _batch_tally("up", outcomes, started)


def _try_hint(topo: topology.Topology, lab: str) -> str:
    """What to type first, in this lab's own names: a shell on a user's host, its MX lookup, Activity 1."""
    where = "" if lab == DEFAULT_LAB else f" --lab {lab}"
    mua = next(iter(topo.mua_hosts), None)
    if mua is None or mua.user is None:
        return f"Try: [bold]labctl shell {topo.hosts[0].name}{where}[/]"
    own = mua.user.rpartition("@")[2]
    # The article's lookup is of the correspondent's domain: another domain than the user's own.
    other = next((d.name for d in topo.domains if d.name != own), own)
    return (f"Try: [bold]labctl shell {mua.name}{where}[/], then `dig MX {other}` or "
            f"`telnet {mua.env['MAIL_SMTP']} 25`")


def _labs_up(labs: Sequence[str]) -> str:
    """The labs that are up, for a message about one that is not."""
    return f"labs up: {', '.join(labs)}" if labs else "no labs are up"


def cmd_down(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    existing = fleet.labs()
    if args.labs or (args.all and fleet.spread):
        return _down_many(fleet, _lab_names(args) if args.labs else list(existing), existing)
    names = list(existing) if args.all else [args.lab]
    for name in names:
        started = time.monotonic()
        lab = fleet.lab(name) if name in existing else Lab(fleet.local(), name)
        removed = lab.down()  # even for a lab not up: leftover volumes go too
        if name in existing:
            out.print(f"lab {name}: removed {removed} hosts, its network and volumes "
                      f"({time.monotonic() - started:.1f} s)")
        else:  # idempotent, so no failure; but a typo must not read as a lab removed
            out.print(f"lab {name}: nothing to remove, there is no such lab ({_labs_up(list(existing))})")
    if not names:
        out.print("no labs are up")
    return 0


def _down_many(fleet: Fleet, names: list[str], existing: dict[str, list[str]]) -> int:
    from labctl.fleet import each

    started = time.monotonic()
    gone = [n for n in names if n not in existing]
    if gone:
        out.print(f"not up, nothing to remove: {' '.join(gone)}")
    todo = [n for n in names if n in existing]

    def down(name: str) -> str:
        fleet.lab(name).down()
        return "+".join(existing[name])

    with BatchProgress("down", len(todo)) as progress:
        outcomes = each(todo, down, progress)
    return _batch_tally("removed", outcomes, started)


def cmd_status(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    if args.all:
        return _status_all(args, fleet)
    placed = fleet.labs()
    existing = list(placed)
    if args.lab_given and args.lab not in existing:
        raise LabNotRunning(f"lab {args.lab!r} does not exist ({_labs_up(existing)}); "
                            f"start it with `labctl up --lab {args.lab}`")
    names = [args.lab] if args.lab_given else existing
    labs = {name: fleet.lab(name).status() for name in names}
    if args.json:
        out.print_json(json.dumps({n: [h.__dict__ | {"ports": h.ports} for h in hs] for n, hs in labs.items()}))
        return 0
    if not any(labs.values()):
        out.print("no labs are up; start one with `labctl up`")
        return 0
    for name, hosts in labs.items():
        out.print(_hosts_table(hosts, f"lab {name}"))
    return 0


def _status_all(args: argparse.Namespace, fleet: Fleet) -> int:
    """`status --all`: every engine, whether it answered, and lab -> engine with its hosts' states."""
    survey = fleet.survey()
    labs: dict[str, list[HostStatus]] = {}
    for e in survey:
        for name in sorted(e.labs):
            labs.setdefault(name, [])
    for name in labs:
        labs[name] = fleet.lab(name).status()
    if args.json:
        out.print_json(json.dumps({
            "engines": [{"name": e.name, "labs": sorted(e.labs), "memory": e.memory, "error": e.error} for e in survey],
            "labs": {n: {"engines": sorted({h.engine or LOCAL for h in hs}) or [e.name for e in survey if n in e.labs],
                         "hosts": len(hs), "running": sum(h.state == "running" for h in hs)} for n, hs in labs.items()},
        }))
        return 0
    engines = Table(title="engines", title_justify="left")
    for col in ("engine", "where", "labs", "memory"):
        engines.add_column(col)
    for e in survey:
        url = fleet.engines.get(e.name).url if fleet.engines is not None else fleet.local().where
        engines.add_row(e.name, url, f"[red]did not answer: {e.error}[/]" if e.error else str(len(e.labs)),
                        f"{e.memory // 2**20} MiB" if e.memory else "?")
    out.print(engines)
    if not labs:
        out.print("no labs are up; start one with `labctl up`, or many with `labctl up --labs 'student-{01..20}'`")
        return 0
    table = Table(title="labs", title_justify="left")
    for col in ("lab", "engine", "hosts", "state"):
        table.add_column(col, no_wrap=True)
    for name, hosts in labs.items():
        where = sorted({h.engine or LOCAL for h in hosts}) or [e.name for e in survey if name in e.labs]
        running = sum(h.state == "running" for h in hosts)
        state = "[green]running[/]" if hosts and running == len(hosts) else f"[red]{running}/{len(hosts)} running[/]"
        table.add_row(name, ", ".join(where), str(len(hosts)), state)
    out.print(table)
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
    cmd = args.cmd
    if not cmd:
        raise LabctlError("say what to run: labctl exec HOST -- COMMAND [ARGS...]")
    lab = _lab(args)
    host = lab.find(args.host)

    def write(stream: int) -> object:
        def w(data: bytes) -> None:
            os.write(stream, data)
        return w

    return lab.exec_stream(host, cmd, write(1), write(2), privileged=args.privileged)  # type: ignore[arg-type]


def cmd_shell(args: argparse.Namespace) -> int:
    lab = _lab(args)
    host = lab.find(args.host)
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise LabctlError("`labctl shell` needs the docker command-line client; install it "
                          "(Debian: apt-get install docker.io) or use `labctl exec HOST -- CMD`")
    tty = ["-it"] if sys.stdin.isatty() else ["-i"]
    # An interactive terminal is the docker CLI's craft (raw mode, resize, detach keys).
    fleet = _fleet(args)
    entry = fleet.engines.get(host.engine) if fleet.engines is not None and host.engine else None
    tls = ["--tlsverify", f"--tlscacert={entry.tls.ca}", f"--tlscert={entry.tls.cert}", f"--tlskey={entry.tls.key}"] \
        if entry is not None and entry.tls is not None else []
    os.execv(docker_cli, ["docker", "-H", lab.engine_of(host).where, *tls, "exec", *tty, "-e", f"PS1={host.name}:\\w# ",
                          host.container, "bash", "-i"])
    return 0  # not reached


def _print_outcome(outcome: mail.MailCommandResult) -> int:
    sys.stdout.write(outcome.output)
    if outcome.errors:
        sys.stderr.write(outcome.errors)
    return 0 if outcome.ok else 1


def cmd_send(args: argparse.Namespace) -> int:
    body = args.body if args.body is not None else sys.stdin.read()
    return _print_outcome(mail.send(_lab(args), args.sender, args.to, args.subject, body, args.attach,
                                    submission=args.submission, tls=_tls_flags(args)))


def cmd_fetch(args: argparse.Namespace) -> int:
    return _print_outcome(mail.fetch(_lab(args), args.user, delete=args.delete, tls=_tls_flags(args),
                                     imap=args.imap, folder=args.folder))


def _tls_flags(args: argparse.Namespace) -> list[str]:
    """The MUA's TLS options, as given (none: the MUA's default, STARTTLS when the lab has TLS)."""
    return [*([f"--{args.tls_mode}"] if args.tls_mode else []), *(["--no-verify"] if args.no_verify else [])]


def cmd_tls_ca(args: argparse.Namespace) -> int:
    sys.stdout.write(_lab(args).ca_pem())
    return 0


def cmd_mailbox(args: argparse.Namespace) -> int:
    if args.imap:
        if args.server:
            raise LabctlError("--imap and --server both read the mailbox on the server: --imap by IMAP from "
                              f"{args.user}'s host (flags, folders; in the capture), --server from the files")
        view = "raw" if args.raw else "tree" if args.tree else "text"
        return _print_outcome(mail.imap_mailbox(_lab(args), args.user, args.number, folder=args.folder, view=view,
                                                as_json=args.json, peek=args.peek, tls=_tls_flags(args)))
    if args.folder or args.peek:
        raise LabctlError("--folder and --peek are for the server's folders by IMAP: add --imap")
    if args.server:
        if args.number is not None or args.raw or args.tree:
            raise LabctlError("--server lists the mailbox on the server; read a message after "
                              f"`labctl fetch {args.user}` with `labctl mailbox {args.user} N`")
        return _print_outcome(mail.server_mailbox(_lab(args), args.user, as_json=args.json))
    view = "raw" if args.raw else "tree" if args.tree else "text"
    return _print_outcome(mail.mailbox(_lab(args), args.user, args.number, view=view, as_json=args.json))


def cmd_queue(args: argparse.Namespace) -> int:
    return _print_outcome(mail.queue(_lab(args), flush=args.flush, as_json=args.json))


def cmd_host_state(args: argparse.Namespace) -> int:
    lab = _lab(args)
    action = {"stop": lab.stop, "start": lab.start, "kill": lab.kill}[args.command]
    for host in args.hosts:
        h = action(host)
        out.print(f"{h.name} ({h.fqdn}): {h.condition}")
    return 0


def cmd_fault_reply(args: argparse.Namespace) -> int:
    from labctl import serverfaults
    from services.smtp import replyfaults

    status = args.status or replyfaults.default_status(args.code)
    problem = replyfaults.rule_problem(args.stage, args.code, status, sender=args.sender, recipient=args.recipient,
                                       times=args.times, seconds=args.seconds)
    if problem:
        raise LabctlError(f"labctl fault reply: {problem[1]}")
    rule = replyfaults.ReplyRule("", args.stage, args.code, status, args.text or replyfaults.default_text(args.code),
                                 args.times, args.seconds, args.sender, args.recipient)
    added = serverfaults.add(_lab(args), args.host, rule)
    out.print(f"{args.host} answers {added.describe()} (rule {added.id}); undo: labctl fault clear {args.host}")
    return 0


def cmd_fault_clear(args: argparse.Namespace) -> int:
    from labctl import serverfaults

    cleared = serverfaults.clear(_lab(args), args.host)
    out.print(f"{args.host} answers as itself again ({len(cleared)} reply fault(s) cleared)")
    return 0


def cmd_fault_list(args: argparse.Namespace) -> int:
    from labctl import serverfaults

    lab = _lab(args)
    hosts = [serverfaults.target(lab, args.host)] if args.host else [h for h in lab.hosts() if h.runs_our_smtp]
    found = [(h.name, rule) for h in hosts for rule in serverfaults.rules(lab, h)]
    for name, rule in found:
        out.print(f"{name}  {rule.id}  {rule.describe()}")
    if not found:
        out.print("no reply faults in force")
    return 0


def _live_capture(args: argparse.Namespace) -> tuple[dict[str, list[bytes]], list[traffic_cli.HostInfo]]:
    """The live lab's capture for `labctl traffic` and `labctl trace`: every host's files, and its hosts."""
    lab = _lab(args)
    try:
        hosts = lab.hosts()
    except LabNotRunning as exc:
        raise LabNotRunning(f"{exc}, or read a saved capture with --pcap FILE") from exc
    from labctl.capture import Capture
    from labctl.split import SplitLab

    if isinstance(lab, SplitLab):  # packets of several engines are merged by their clocks
        lab.report = Reporter(False)
        lab.warn_if_clocks_differ()
    return Capture(lab).sources(), [(h.name, h.fqdn, h.kind, h.address) for h in hosts]


def _live_keys(args: argparse.Namespace) -> str:
    """The live lab's TLS secrets for `labctl traffic`, `trace` and `--follow`: every host's key log."""
    from labctl.capture import Capture

    return Capture(_lab(args)).keylogs()


def _live_feed(args: argparse.Namespace) -> tuple[Callable[[], dict[str, list[bytes]]], list[traffic_cli.HostInfo]]:
    """`labctl traffic --follow`: what the live lab's hosts captured since the last look, and its hosts."""
    lab = _lab(args)
    hosts = lab.hosts()
    from labctl.capture import CaptureTail

    return CaptureTail(lab).poll, [(h.name, h.fqdn, h.kind, h.address) for h in hosts]


def cmd_web(args: argparse.Namespace) -> int:
    from labctl.web.events import EventLog
    from labctl.web.live import LiveLab
    from labctl.web.server import WebServer

    try:
        server = WebServer(LiveLab(_lab(args), EventLog(), hide_secrets=args.hide_secrets), args.port)
    except OSError as exc:
        raise LabctlError(f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror}); "
                          "choose another --port, or leave it out for a free one") from exc
    server.start_following()
    out.print(server.url, soft_wrap=True)
    err.print(f"lab {args.lab} in a browser: open the URL above (it holds the token); Ctrl-C to stop")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _size(octets: int) -> str:
    return f"{octets / 1e6:.1f} MB" if octets >= 100_000 else f"{octets / 1e3:.1f} kB"


def cmd_capture_status(args: argparse.Namespace) -> int:
    from labctl.capture import Capture

    hosts = Capture(_lab(args)).status(args.host)
    if args.json:
        print(json.dumps([{"host": c.host.name, "container": c.host.container, "state": c.host.condition,
                           "recording": c.recording, "directory": str(CAPTURE_DIR), "bytes": c.size,
                           "files": [vars(f) for f in c.files]} for c in hosts], indent=2))
        return 0
    table = Table(title=f"capture of lab {args.lab} (in each host, {CAPTURE_DIR})", title_justify="left")
    for col in ("host", "recording", "files", "size", "last packet"):
        table.add_column(col)
    for c in hosts:
        last = max((f.modified for f in c.files), default=None)
        when = time.strftime("%H:%M:%S", time.localtime(last)) if last else "-"
        table.add_row(c.host.name, "[green]yes[/]" if c.recording else f"[red]no[/] ({c.host.condition})",
                      str(len(c.files)), _size(c.size), when)
    out.print(table)
    return 0


def cmd_capture_export(args: argparse.Namespace) -> int:
    from labctl.capture import Capture
    from labctl.traffic.render import parse_since

    since = parse_since(args.since) if args.since else None
    capture = Capture(_lab(args))
    try:
        fh = open(args.output, "wb")  # noqa: SIM115 - closed below; only the open's error is the user's
    except OSError as exc:
        raise LabctlError(f"{args.output}: cannot write the capture ({exc.strerror}); "
                          "give -o a path in a directory that exists") from exc
    keylog = capture.keylogs() if args.with_keys else None
    with fh:
        count = capture.export(fh, host=args.host, since=since, keylog=keylog)
    secrets = f", {keylog.count(chr(10))} TLS secrets in a Decryption Secrets Block" if keylog else ""
    err.print(f"{count} packets written to {args.output} (pcapng, one interface per host{secrets})")
    if args.with_keys and not keylog:
        err.print("no TLS secrets to embed: no host has a key log (the lab runs without TLS, or no TLS "
                  "session happened yet)")
    return 0


class RunProgress:
    """`labctl run`'s live view: a spinner line for the running step, then one line per step."""

    MARKS = {"passed": ("✓", "green"), "failed": ("✗", "red"), "error": ("!", "red"), "skipped": ("-", "dim")}

    def __init__(self, verbose: bool, existing: bool = False) -> None:
        self.verbose = verbose
        self.existing = existing  # the lab is up already (--lab): nothing to bring up
        self.status: Status | None = None
        self.total = 0
        self.lab = ""

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def scenario_started(self, scenario: Scenario, lab: str) -> None:
        self.total = len(scenario.steps)
        self.lab = lab
        err.rule(Text(f"{scenario.name}  ({scenario.source})", style="bold"))
        err.print(Text(scenario.goal, style="italic"), soft_wrap=True)
        self.status = err.status(f"{'looking at' if self.existing else 'bringing up'} lab {lab} ...")
        self.status.start()

    def lab_ready(self, seconds: float) -> None:
        self._stop()
        err.print(Text.assemble(("✓ ", "green"), f"lab {self.lab} up ({seconds:.1f} s)"))

    def task_given(self, step: Step, task: Task, lab: str) -> None:
        self._stop()
        err.print(Text.assemble(("Your task: ", "bold cyan"), task.text), soft_wrap=True)
        err.print(Text(f"  Get into the lab: labctl shell HOST --lab {lab} (HOST: andy, betty, ...). "
                       f"You have {task.time_limit / 60:g} min" + (", a hint comes at half time" if task.hint else "")
                       + "; Ctrl-C gives up.", style="cyan"), soft_wrap=True)

    def hint(self, text: str) -> None:
        err.print(Text.assemble(("  Hint: ", "bold yellow"), text), soft_wrap=True)

    def step_started(self, step: Step) -> None:
        self._stop()
        if step.note:
            err.print(Text(f"  » {step.note}", style="yellow"), soft_wrap=True)
        waiting = "waiting for: " if step.kind in ("wait", "expect") else ""
        self.status = err.status(f"[{step.number}/{self.total}] {waiting}{step.title}")
        self.status.start()

    def step_finished(self, step: Step, result: StepResult) -> None:
        self._stop()
        mark, style = self.MARKS[result.status]
        err.print(Text.assemble((f"{mark} ", style), f"[{step.number}/{self.total}] {step.title} ",
                                (f"({result.seconds:.1f} s)", "dim")), soft_wrap=True)
        if result.status == "passed" and result.detail and self.verbose:
            err.print(Text(f"    {result.detail}", style="dim"), soft_wrap=True)
        if result.status != "passed":
            err.print(Text(f"    expected: {result.expected}\n    saw:      {result.seen}", style=style),
                      soft_wrap=True)
            for line in result.transcript[-20:]:
                err.print(Text(f"    | {line}", style="dim"), soft_wrap=True)

    def scenario_finished(self, result: ScenarioResult) -> None:
        self._stop()
        done = sum(s.status == "passed" for s in result.steps)
        verdict = Text(" PASSED ", style="bold white on green") if result.ok else \
            Text(f" {result.status.upper()} ", style="bold white on red")
        err.print(Text.assemble(verdict, f" {result.name}: {done}/{len(result.steps)} steps in {result.seconds:.1f} s"))
        if result.status == "error":
            err.print(Text(result.message, style="red"), soft_wrap=True)
        if result.kept and not self.existing:
            err.print(f"lab kept: labctl status --lab {result.lab}; remove it with labctl down --lab {result.lab}")
        if result.report:
            err.print(f"report: {result.report}")


def _scenarios(files: Sequence[Path], topology_file: Path) -> list[Scenario]:
    """Every file parsed, or one error listing each bad file's problems: nothing runs then."""
    from labctl.scenario import parse as scenario_parse

    base = topology.load(topology_file)
    scenarios: list[Scenario] = []
    problems: list[str] = []
    for path in files:
        try:
            scenarios.append(scenario_parse.load(path, base=base))
        except LabctlError as exc:
            problems.append(str(exc))
    if problems:
        raise LabctlError("\n".join(problems) + f"\n{len(problems)} scenario file(s) have errors; nothing was run")
    return scenarios


def _write_results(args: argparse.Namespace, results: list[ScenarioResult]) -> None:
    from labctl.scenario import junit

    if args.junit:
        junit.write(results, args.junit)
    if args.json:
        out.print_json(json.dumps([r.to_json() for r in results]))


def _tally(results: list[ScenarioResult]) -> int:
    """The tally printed; the exit status (1: something failed)."""
    failed = [r for r in results if not r.ok]
    err.print(Text.assemble((f"{len(results) - len(failed)} passed", "green"), ", ",
                            (f"{len(failed)} failed", "red" if failed else "green"),
                            f" ({sum(r.seconds for r in results):.1f} s)"))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    from labctl.scenario.runner import Runner, report_names
    from labctl.web.runs import Published

    scenarios = _scenarios(args.files, args.topology)
    if args.labs:
        return _run_many(args, scenarios)
    existing = args.lab if args.lab_given else None
    # Published: `labctl web --lab LAB` shows the steps of a run in LAB as they pass or fail.
    progress = Published(RunProgress(args.verbose, existing is not None))
    runner = Runner(_fleet(args), progress=progress, report_dir=args.report,
                    keep=args.keep, reporter=Reporter(args.verbose), names=report_names(args.files))
    results: list[ScenarioResult] = []
    try:
        for sc in scenarios:
            results.append(runner.run(sc, lab=existing))
            if runner.interrupted:
                break
    finally:
        _write_results(args, results)
    if runner.interrupted:
        raise KeyboardInterrupt  # the scenarios so far are reported; main() says "interrupted", exit 130
    return _tally(results)


def _run_many(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    """`run --labs`: the scenarios in each lab (up, or brought up and left up: they are the
    students'), BATCH labs at once, one line per lab, one JUnit file for them all."""
    from labctl.fleet import each
    from labctl.scenario.runner import Runner, report_names

    if args.lab_given:
        raise LabctlError("--lab and --labs both name where to run; give one of them")
    started = time.monotonic()
    names = _lab_names(args)
    fleet = _fleet(args)
    results: dict[str, list[ScenarioResult]] = {}

    def run(name: str) -> str:
        # One runner per lab (its own progress, images cached once per runner), reports apart.
        runner = Runner(fleet, report_dir=args.report / name if args.report else None, keep=True,
                        names=report_names(args.files))
        results[name] = [runner.run(sc, lab=name) for sc in scenarios]
        failed = [r for r in results[name] if not r.ok]
        if failed:
            raise LabctlError("; ".join(f"{r.name}: {r.status} ({(r.message or '').splitlines()[0][:200]})"
                                        for r in failed))
        return runner.fleet.lab(name).engine_name or LOCAL

    with BatchProgress("run", len(names)) as progress:
        outcomes = each(names, run, progress)
    flat = [r for name in names for r in results.get(name, [])]
    _write_results(args, flat)
    return _batch_tally("passed", outcomes, started, "the JUnit file and reports have each lab's steps")


def cmd_check(args: argparse.Namespace) -> int:
    from labctl.scenario.runner import Runner

    scenarios = _scenarios(args.files, args.topology)
    runner = Runner(_fleet(args), progress=RunProgress(args.verbose, existing=True),
                    reporter=Reporter(args.verbose))
    results = [runner.check(sc, args.lab) for sc in scenarios]
    _write_results(args, results)
    return _tally(results)


def cmd_image_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    builder = ImageBuilder(engine.connect(), Reporter(verbose=True))
    tag = builder.ensure(base=args.base, mirror=args.mirror, rebuild=args.rebuild)
    out.print(f"lab image: {tag} ({time.monotonic() - started:.1f} s)")
    if args.reference:
        tag = builder.ensure_reference(base=args.base, mirror=args.mirror, rebuild=args.rebuild)
        out.print(f"reference image: {tag} ({time.monotonic() - started:.1f} s)")
    return 0


def cmd_image_prune(args: argparse.Namespace) -> int:
    only = dict(args.label)
    removed = ImageBuilder(engine.connect(), Reporter(verbose=True)).prune(dry_run=args.dry_run, only=only)
    verb = "would remove" if args.dry_run else "removed"
    out.print(f"{verb} {len(removed)} old image tag(s)" + "".join(f"\n  {ref}" for ref in removed))
    return 0


def cmd_engines_add(args: argparse.Namespace) -> int:
    from labctl import enginesfile
    from labctl.backend.docker_engine import connect

    name = enginesfile.check_name(args.name)
    problem = enginesfile.check_url(args.url)
    if problem:
        raise LabctlError(problem)
    tls_files = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_files) and not all(tls_files):
        raise LabctlError("client TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    tls = enginesfile.EngineTls(args.tls_ca.resolve(), args.tls_cert.resolve(), args.tls_key.resolve()) \
        if all(tls_files) else None
    if tls is not None and not args.url.startswith("tcp://"):
        raise LabctlError(f"--tls-* are for tcp:// engines; {args.url} needs none")
    if args.capacity < 1:
        raise LabctlError(f"--capacity is how many labs the engine may hold: a whole number from 1, "
                          f"not {args.capacity}")
    entry = enginesfile.EngineEntry(name, args.url, args.capacity, tls)
    if not args.no_check:
        memory = connect(args.url, tls=tls).memory()  # DockerUnavailable says what to do
        err.print(f"engine {name} answers at {args.url} ({memory // 2**20 if memory else '?'} MiB)")
    engines = enginesfile.load_or_empty(args.engines)
    path = enginesfile.save(engines.with_engine(entry))
    out.print(f"engine {name} ({args.url}, up to {args.capacity} labs) is in {path}; "
              "`labctl up` now places labs over its engines")
    return 0


def cmd_engines_remove(args: argparse.Namespace) -> int:
    from labctl import enginesfile

    engines = enginesfile.load_or_empty(args.engines)
    engines.get(args.name)  # says which engines there are when it is not one
    labs = [lab for lab, on in _fleet(args).labs().items() if args.name in on]
    if labs and not args.force:
        raise LabctlError(f"engine {args.name} holds labs {', '.join(labs)}: take them down first "
                          f"(`labctl down --labs {','.join(labs)}`), or forget the engine anyway with --force")
    enginesfile.save(engines.without(args.name))
    out.print(f"engine {args.name} removed from {engines.path}")
    return 0


def cmd_engines_list(args: argparse.Namespace) -> int:
    from labctl import enginesfile

    engines = enginesfile.load_or_empty(args.engines)
    if not engines.existed:
        out.print(f"no engines file ({enginesfile.where(args.engines)}): every lab runs on the local engine; "
                  "add engines with `labctl engines add NAME URL`")
        return 0
    table = Table(title=f"engines ({engines.path})", title_justify="left")
    for col in ("engine", "url", "capacity", "labs", "memory", "swarm"):
        table.add_column(col, no_wrap=col == "url")
    for e in Fleet(engines).survey():
        entry = engines.get(e.name)
        table.add_row(e.name, entry.url, str(entry.capacity),
                      f"[red]did not answer: {e.error}[/]" if e.error else str(len(e.labs)),
                      f"{e.memory // 2**20} MiB" if e.memory else "?", "manager" if engines.manager == e.name else "")
    out.print(table)
    return 0


def cmd_render_k8s(args: argparse.Namespace) -> int:
    import yaml

    from labctl.image import IMAGE_REPOSITORY, REFERENCE_REPOSITORY
    from labctl.render import k8s

    check_lab_name(args.lab)
    topo = topology.load(args.topology)
    for overlay in args.overlay:
        topo = topology.load_overlay(topo, overlay)
    images = {"lab": args.image or IMAGE_REPOSITORY, "reference": args.reference_image or REFERENCE_REPOSITORY}
    text = yaml.safe_dump_all(k8s.render(args.lab, topo, images), sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        err.print(f"wrote {args.output}: lab {args.lab} as Kubernetes objects (apply with `kubectl apply -f`)")
    return 0


# -- cluster nodes on this machine, and copying images to an engine (issue 16) ----------------------


def cmd_cluster_create(args: argparse.Namespace) -> int:
    from labctl import cluster, enginesfile

    made = cluster.create(engine.connect(), args.nodes, prefix=args.name, engines_path=enginesfile.where(args.engines),
                          in_memory=args.in_memory, report=Reporter(args.verbose))
    out.print(f"cluster {made.prefix}: {len(made.nodes)} node(s) up in {made.seconds:.1f} s, "
              f"{made.nodes[0].name} the Swarm manager, {made.lab_image} on each", soft_wrap=True)
    for node in made.nodes:
        out.print(f"  {node.name}  {node.url}  (container {node.container})")
    hint = "" if args.engines is None and not os.environ.get(enginesfile.ENV) else f" --engines {made.engines_file}"
    out.print(f"engines file: {made.engines_file}; try `labctl cluster status{hint}`, "
              f"remove it all with `labctl cluster delete{hint}`", soft_wrap=True)
    return 0


def cmd_cluster_delete(args: argparse.Namespace) -> int:
    from labctl import cluster, enginesfile

    removed = cluster.delete(engine.connect(), prefix=args.name, engines_path=enginesfile.where(args.engines),
                             report=Reporter(verbose=False))
    if not removed.anything:
        out.print(f"cluster {args.name}: nothing to remove, there is no such cluster")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from labctl import cluster, enginesfile

    nodes = cluster.status(engine.connect(), prefix=args.name, engines_path=enginesfile.where(args.engines))
    if not nodes:
        out.print(f"no cluster {args.name}; make one with `labctl cluster create --nodes 2`")
        return 0
    table = Table(title=f"cluster {args.name} (engines file {enginesfile.where(args.engines)})",
                  title_justify="left")
    for col in ("node", "engine", "container", "state", "swarm", "images"):
        table.add_column(col, no_wrap=col in ("engine", "container"))
    for n in nodes:
        images = ", ".join(t for t in n.images if not t.endswith(":latest")) or "-"
        state = f"[green]{n.state}[/]" if n.state == "running" and n.error is None else \
            f"[red]{n.state}{': ' + n.error if n.error else ''}[/]"
        table.add_row(n.node.name, n.node.url, n.node.container, state, n.role, images)
    out.print(table)
    return 0


def cmd_image_push(args: argparse.Namespace) -> int:
    from labctl import enginesfile
    from labctl.image import push

    fleet = _fleet(args)
    if fleet.engines is None:
        raise LabctlError(f"no engines file at {enginesfile.where(args.engines)}, so no engine {args.engine!r}; "
                          "make one with `labctl cluster create --nodes 2` or `labctl engines add NAME URL`")
    entry = fleet.engines.get(args.engine)
    local = fleet.local()
    builder = ImageBuilder(local, Reporter(verbose=False))
    tags = [builder.ensure()] + ([builder.ensure_reference()] if args.reference else [])
    target = fleet.engine(entry.name)
    for tag in tags:
        started = time.monotonic()
        copied = push(local, target, tag)
        verb = "copied to" if copied else "already on"
        out.print(f"{tag} {verb} {entry.name} ({entry.url}, {time.monotonic() - started:.1f} s)")
    return 0


def add_cluster_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         image: argparse._SubParsersAction[argparse.ArgumentParser],
                         engines_option: Callable[[argparse.ArgumentParser], None]) -> None:
    from labctl.cluster import DEFAULT_PREFIX, MAX_NODES

    def name_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default=DEFAULT_PREFIX, metavar="PREFIX",
                       help=f"the cluster's name: its containers are PREFIX1, PREFIX2, ... (default {DEFAULT_PREFIX})")
        engines_option(p)

    cluster = sub.add_parser("cluster", help="Docker engines in containers on this machine, joined in a Swarm, "
                                             "to try labs across engines here")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    p = cluster_sub.add_parser("create", help="start N nodes, join them in a Swarm, load the lab image into each, "
                                              "write an engines file for them")
    p.set_defaults(func=cmd_cluster_create)
    p.add_argument("--nodes", type=int, default=2, help=f"how many nodes, 1 to {MAX_NODES} (default 2)")
    p.add_argument("--in-memory", action="store_true",
                   help="keep each node's images and containers in memory (a tmpfs): quicker to load the image "
                        "into, and each node uses about 0.5 GB of memory more, plus what its labs write")
    p.add_argument("-v", "--verbose", action="store_true", help="show the image build output")
    name_option(p)
    p = cluster_sub.add_parser("delete", help="remove the nodes, their volumes and network, and their engines file")
    p.set_defaults(func=cmd_cluster_delete)
    name_option(p)
    p = cluster_sub.add_parser("status", help="the nodes: address, state, Swarm role, images")
    p.set_defaults(func=cmd_cluster_status)
    name_option(p)

    p = image.add_parser("push", help="copy the lab image from this machine's engine to an engine of the "
                                      "engines file (docker save | load over the Engine API; no registry)")
    p.set_defaults(func=cmd_image_push)
    p.add_argument("--engine", required=True, metavar="NAME", help="the engine's name in the engines file")
    p.add_argument("--reference", action="store_true", help="the reference image too")
    engines_option(p)


# -- parsing -----------------------------------------------------------------------------------


def _subnet(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 subnet like 10.90.0.0/24 ({exc})") from exc


def _label(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not key or not eq:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label like org.example.owner=me (KEY=VALUE)")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labctl", description="Bring up and use a maillab lab.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: object, help_text: str, lab: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if lab:
            p.add_argument("--lab", default=None, help=f"lab name (default: {DEFAULT_LAB}, or $LABCTL_LAB)")
        engines_option(p)
        return p

    def engines_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--engines", metavar="FILE", default=None,
                       help="the engines file to spread labs over (default: $LABCTL_ENGINES, else "
                            "~/.config/maillab/engines.yml if it exists, else the one local engine)")

    def labs_option(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--labs", metavar="SPEC", default=None,
                       help=f"{what}: names with a range, commas or a file: 'student-{{001..300}}', 'a,b', @labs.txt")

    def tls_options(p: argparse.ArgumentParser, implicit: str, starttls: str) -> None:
        """The MUA's TLS flags (`mail send|fetch` on the MUA host takes the same)."""
        how = p.add_mutually_exclusive_group()
        how.add_argument("--tls", dest="tls_mode", action="store_const", const="tls",
                         help=f"TLS from the start ({implicit})")
        how.add_argument("--starttls", dest="tls_mode", action="store_const", const="starttls",
                         help=f"{starttls} (the default when the lab has TLS)")
        how.add_argument("--no-tls", dest="tls_mode", action="store_const", const="no-tls",
                         help="in clear (the default when the lab has no TLS)")
        p.add_argument("--no-verify", action="store_true", help="do not check the server's certificate")

    def image_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base", help="base image to build FROM (default: debian:bookworm-slim, "
                                      "bootstrapped with debootstrap when it cannot be pulled)")
        p.add_argument("--mirror", help="Debian mirror for bootstrapping (default: the host's apt sources)")

    p = add("up", cmd_up, "build the image if needed, start the lab, wait until every service answers")
    p.add_argument("--topology", type=Path, default=topology.DEFAULT_TOPOLOGY, help="topology file")
    p.add_argument("--overlay", type=Path, action="append", default=[], metavar="FILE",
                   help="changes on top of the topology: extra hosts, domains, MX, users, retry "
                        "(scenarios/README.md; repeatable)")
    p.add_argument("--subnet", type=_subnet, help="lab subnet (default: the topology's, or a free one)")
    p.add_argument("--tls", action="store_true",
                   help="TLS in the lab: a lab CA, STARTTLS on 25/587/110/143, implicit TLS on 465/995/993 "
                        "(as the topology's x-maillab.tls: true)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the image build output")
    labs_option(p, "bring up many labs at once, each placed on the least-loaded engine")
    p.add_argument("--split", action="store_true",
                   help="spread this lab's hosts over the engines of the Swarm the engines file names "
                        "(x-maillab.placement where it says, the rest evenly); a topology with "
                        "x-maillab.placement is split without it")
    image_options(p)

    p = add("down", cmd_down, "remove every container, network and volume of the lab")
    p.add_argument("--all", action="store_true", help="every lab on every engine")
    labs_option(p, "remove many labs at once")

    p = add("status", cmd_status, "the labs that are up and their hosts")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="every engine and every lab on it: lab -> engine")

    p = add("logs", cmd_logs, "a host's service log")
    p.add_argument("host")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int)

    p = add("exec", cmd_exec, "run a command on a lab host: labctl exec HOST [OPTIONS] -- CMD [ARGS...]")
    p.add_argument("--privileged", action="store_true", help="with every capability (tc, iptables)")
    p.add_argument("host")
    # What follows `--` is the command (see split_command); before it, options go anywhere.
    p.add_argument("cmd", nargs="*", metavar="-- CMD")

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
    tls_options(p, "465, implicit TLS", "587 (or 25) with STARTTLS")

    p = add("fetch", cmd_fetch, "fetch a user's new mail by POP3 (or IMAP) into the MUA's local mailbox")
    p.add_argument("user", help="host name or address (betty)")
    p.add_argument("--delete", action="store_true", help="delete fetched messages on the server")
    p.add_argument("--imap", action="store_true",
                   help="by IMAP: copy only what is new, leave it on the server marked \\Seen")
    p.add_argument("--folder", help="with --imap: the server folder (default INBOX)")
    tls_options(p, "995, or 993 with --imap, implicit TLS", "110 with STLS, or 143 with --imap")

    p = add("tls", None, "the lab's TLS: `labctl tls ca > ca.pem` hands its CA to a desktop client", lab=False)
    tls_sub = p.add_subparsers(dest="tls_command", required=True)
    p = tls_sub.add_parser("ca", help="print the lab CA certificate (PEM)")
    p.set_defaults(func=cmd_tls_ca)
    p.add_argument("--lab", default=None, help=f"lab name (default: {DEFAULT_LAB}, or $LABCTL_LAB)")

    p = add("mailbox", cmd_mailbox, "a user's local mailbox (after fetch): the list, or message N")
    p.add_argument("user")
    p.add_argument("--server", action="store_true",
                   help="the user's mailbox on the server instead (what fetch will find), read without POP3")
    p.add_argument("--imap", action="store_true",
                   help="the mailbox on the server by IMAP from the user's host: its folders, and the messages "
                        "with their flags (N: read message N, which marks it \\Seen)")
    p.add_argument("--folder", help="with --imap: the server folder (default INBOX)")
    p.add_argument("--peek", action="store_true", help="with --imap N: read with BODY.PEEK[], leaving it unread")
    tls_options(p, "with --imap: 993, implicit TLS", "with --imap: 143 with STARTTLS")
    p.add_argument("number", nargs="?", type=int)
    view = p.add_mutually_exclusive_group()
    view.add_argument("--raw", action="store_true", help="the message exactly as stored")
    view.add_argument("--tree", action="store_true", help="only the MIME tree")
    p.add_argument("--json", action="store_true")

    p = add("queue", cmd_queue, "the sender MTA's queue: messages, recipients, attempts, next try, last error")
    p.add_argument("--flush", action="store_true", help="retry every queued message now")
    p.add_argument("--json", action="store_true")

    fault = sub.add_parser("fault", help="make our MTA or MX answer a chosen reply (greylisting, 421, 452)")
    fault_sub = fault.add_subparsers(dest="fault_command", required=True)

    def lab_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lab", default=None, help=f"lab name (default: {DEFAULT_LAB}, or $LABCTL_LAB)")

    p = fault_sub.add_parser("reply", help="HOST answers CODE at STAGE instead of its own yes, until cleared, "
                                           "for the first N tries, or for a while")
    p.set_defaults(func=cmd_fault_reply)
    lab_option(p)
    p.add_argument("host", help="a host running our SMTP server (smtp, mail)")
    p.add_argument("stage", choices=STAGES,
                   help="where: the greeting, HELO/EHLO, MAIL, RCPT, DATA, or after the final dot")
    p.add_argument("code", type=int, help="a 4xx or 5xx reply code (at connect: 421 or 554)")
    p.add_argument("--status", help="RFC 3463 enhanced status (default: 4.0.0 or 5.0.0)")
    p.add_argument("--text", help="the reply's text")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--times", type=int, metavar="N", help="only the first N tries that reach the stage")
    span.add_argument("--for", dest="seconds", type=float, metavar="SECONDS", help="only for this long")
    p.add_argument("--from", dest="sender", metavar="PATTERN", help="only for senders like this (*@ouhk.example)")
    p.add_argument("--to", dest="recipient", metavar="PATTERN", help="only for recipients like this (betty@*)")
    p = fault_sub.add_parser("clear", help="HOST answers as itself again")
    p.set_defaults(func=cmd_fault_clear)
    lab_option(p)
    p.add_argument("host")
    p = fault_sub.add_parser("list", help="the reply faults in force")
    p.set_defaults(func=cmd_fault_list)
    lab_option(p)
    p.add_argument("host", nargs="?")

    capture = sub.add_parser("capture", help="the always-on packet capture of every host")
    capture_sub = capture.add_subparsers(dest="capture_command", required=True)
    p = capture_sub.add_parser("status", help="what each host has captured, and how much")
    p.set_defaults(func=cmd_capture_status)
    p.add_argument("--lab", default=None, help=f"lab name (default: {DEFAULT_LAB}, or $LABCTL_LAB)")
    p.add_argument("--host", help="only this host")
    p.add_argument("--json", action="store_true")
    p = capture_sub.add_parser("export", help="write the capture as one pcapng file Wireshark opens")
    p.set_defaults(func=cmd_capture_export)
    p.add_argument("--lab", default=None, help=f"lab name (default: {DEFAULT_LAB}, or $LABCTL_LAB)")
    p.add_argument("--host", help="only what this host captured")
    p.add_argument("--since", help="only packets since: an age (10m), a time (14:05) or a date-time")
    p.add_argument("-o", "--output", type=Path, required=True, help="the pcapng file to write")
    p.add_argument("--with-keys", action="store_true", help="embed the hosts' TLS key logs (a Decryption "
                   "Secrets Block): Wireshark and tshark then decrypt the TLS with no settings")
    traffic_cli.register(add, live=_live_capture, feed=_live_feed, keys=_live_keys)

    p = sub.add_parser("run", help="run scenarios: each in a fresh lab, step by step, with a report",
                       description="Run scenario files (scenarios/README.md): a fresh lab per scenario, steps "
                                   "shown live, stop at the first failed step, tear down; exit 1 if any failed.")
    p.set_defaults(func=cmd_run)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="scenario files (YAML)")
    p.add_argument("--keep", action="store_true", help="leave each lab up afterwards (to look around)")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="save per scenario: result.json, host logs, the capture")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML for a CI or grading system")
    p.add_argument("--json", action="store_true", help="print the results as JSON on standard output")
    p.add_argument("--topology", type=Path, default=topology.DEFAULT_TOPOLOGY, help="base topology file")
    p.add_argument("-v", "--verbose", action="store_true", help="show what each step saw, and image builds")
    p.add_argument("--lab", default=None, help="run in this lab, already up (or brought up), and leave it up")
    labs_option(p, "run in each of these labs (up, or brought up, and left up), 8 at a time, one JUnit file")
    engines_option(p)

    p = add("web", cmd_web, "the lab live in a browser: traffic as a sequence diagram, messages and their "
            "journeys, hosts, queue, mailboxes (prints a URL with a token; opens nothing)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--hide-secrets", action="store_true",
                   help="mask the passwords sent in clear text in the dialogues (still marked on the arrows)")

    p = add("check", cmd_check, "grade a lab that is up against a scenario's checks, running none of its actions")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="scenario or exercise files (YAML)")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML for a CI or grading system")
    p.add_argument("--json", action="store_true", help="print the results as JSON on standard output")
    p.add_argument("--topology", type=Path, default=topology.DEFAULT_TOPOLOGY, help="base topology file")
    p.add_argument("-v", "--verbose", action="store_true", help="show what each check saw")

    render_sub = sub.add_parser("render", help="write the lab for another platform (not run here)").add_subparsers(
        dest="render_command", required=True)
    p = render_sub.add_parser("k8s", help="the lab as Kubernetes objects for a cluster with Multus: a Namespace, "
                                          "a NetworkAttachmentDefinition, one Pod per host, a deny-all NetworkPolicy")
    p.set_defaults(func=cmd_render_k8s)
    p.add_argument("--lab", default=None, help=f"lab name (default: {DEFAULT_LAB}, or $LABCTL_LAB)")
    p.add_argument("-f", "--topology", type=Path, default=topology.DEFAULT_TOPOLOGY, help="topology file")
    p.add_argument("--overlay", type=Path, action="append", default=[], metavar="FILE",
                   help="changes on top of the topology (repeatable)")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write the YAML (default: -, stdout)")
    p.add_argument("--image", help="the lab image as the cluster pulls it (default: maillab; push it there first)")
    p.add_argument("--reference-image", help="the reference image, for hosts that run it (default: maillab-reference)")

    engines = sub.add_parser("engines", help="the Docker engines labs are spread over (the engines file)"
                             ).add_subparsers(dest="engines_command", required=True)
    p = engines.add_parser("add", help="add (or change) an engine: labctl engines add NAME URL")
    p.set_defaults(func=cmd_engines_add)
    p.add_argument("name", help="its name in labctl (node1, lab-room-2)")
    p.add_argument("url", help="its Docker endpoint: unix:///var/run/docker.sock, tcp://HOST:2376, ssh://USER@HOST")
    p.add_argument("--capacity", type=int, default=20, help="how many labs it may hold (default: 20)")
    p.add_argument("--tls-ca", type=Path, help="CA of a tcp:// engine's TLS (dockerd --tlsverify)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for it")
    p.add_argument("--tls-key", type=Path, help="client key for it")
    p.add_argument("--no-check", action="store_true", help="add it even if it does not answer now")
    engines_option(p)
    p = engines.add_parser("remove", help="forget an engine (its labs must be down, or --force)")
    p.set_defaults(func=cmd_engines_remove)
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="even if labs are on it (they stay there, unmanaged)")
    engines_option(p)
    p = engines.add_parser("list", help="the engines, whether each answers, its labs and memory")
    p.set_defaults(func=cmd_engines_list)
    engines_option(p)

    image = sub.add_parser("image", help="the lab image").add_subparsers(dest="image_command", required=True)
    p = image.add_parser("prune", help="remove old lab images that no container uses (keeps the current ones)")
    p.set_defaults(func=cmd_image_prune)
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                   help="only images that also carry this label (repeatable), as `docker image prune --filter label=`")
    p = image.add_parser("build", help="build the lab image (bootstrapping a base if needed)")
    p.set_defaults(func=cmd_image_build)
    p.add_argument("--rebuild", action="store_true", help="build even if an image with this hash exists")
    p.add_argument("--reference", action="store_true",
                   help="also the reference image (Postfix, Dovecot, NSD, fetchmail, dnsperf) for comparisons")
    image_options(p)
    add_cluster_commands(sub, image, engines_option)
    return parser


# The commands whose last words are a command to run on a host, after `--`.
RUNS_A_COMMAND = frozenset({"exec"})


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """labctl's own words, and the command after the first ``--`` (None without one).

    Cut here rather than by argparse's REMAINDER, which took every word after the host as the
    command: `labctl exec andy --privileged -- id` ran `--privileged`. Options of labctl may stand
    anywhere before the ``--``; nothing after it is read as one.
    """
    words = list(argv)
    if "--" not in words:
        return words, None
    cut = words.index("--")
    return words[:cut], words[cut + 1:]


TRAILING_NUMBER = re.compile(r"[0-9]+")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    words, command = split_command(sys.argv[1:] if argv is None else argv)
    if words[:1] and words[0] not in RUNS_A_COMMAND:
        args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)  # `--` as argparse has it
        if len(extra) == 1 and TRAILING_NUMBER.fullmatch(extra[0]) and getattr(args, "number", "") is None:
            # `labctl mailbox betty --imap 1`: argparse gives an optional positional only the words
            # before the first flag, so the N after one is left over; it is the N that was meant.
            args.number = int(extra[0])
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args
    args, extra = parser.parse_known_args(words)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}; put the command to run after `--`: "
                     f"labctl {args.command} HOST -- {' '.join([*args.cmd, *extra])}")
    args.cmd = [*args.cmd, *(command or [])]
    return args


def run() -> NoReturn:
    """The process's entry point (the `labctl` script, `python -m labctl`): :func:`main`, then out.

    Out without the interpreter's teardown, which frees every module and object one by one: 40-65 ms
    once the docker SDK and rich are loaded (measured on `labctl up`), at the end of every command.
    Nothing needs it: every file is closed by its `with`, the engine's thread pools are joined before
    their functions return, and the output is flushed here. An exception main does not turn into an
    exit status (a bug) takes the usual way out, with its traceback.
    """
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(args, "lab"):
        args.lab_given = args.lab is not None
        args.lab = args.lab or DEFAULT_LAB
    try:
        return int(args.func(args))
    except LabctlError as exc:
        err.print(Text.assemble(("labctl: ", "bold red"), str(exc)), soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
