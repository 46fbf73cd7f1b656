"""``labctl traffic`` and ``labctl trace``: a few lines each over :mod:`labctl.traffic`.

Both decode the live lab's capture, or the files given with ``--pcap FILE`` (pcap or pcapng,
repeatable): several files are merged by time, and every packet of a file is taken as captured
on the host its file's stem names (``smtp.pcap``: on smtp), as the lab's own files are. With
``--pcap`` the addresses are named after ``--topology``'s hosts.

The lab part of labctl gives the live capture through two functions passed to :func:`register`,
so that this module needs no engine: a :data:`LiveSource` returns every host's capture files
({host: [file bytes, ...]}) and the lab's hosts (:data:`HostInfo`: names for the addresses, and
where the readiness probe comes from); a :data:`LiveFeed` returns, for ``--follow``, a poll giving
what the hosts captured since the last one, and the hosts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from labctl import topology
from labctl.errors import LabctlError
from labctl.traffic import PROTOCOL_CHOICES

if TYPE_CHECKING:
    from labctl.traffic.decode import TrafficDecoder
    from labctl.traffic.model import Conversation, Event

# The decoders (and dnspython under them), the model and its text are imported when a command
# runs, not when labctl starts: every other command, `labctl up` first, would pay for them (the
# model and render alone are 12 ms, on the path of every `labctl up`).

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# A lab host as the live source and the topology describe it: (name, FQDN, kind, address); the kind
# is the job it does (dns, mta, mx, mua: services.config.role_kind), whoever's software does it.
HostInfo = tuple[str, str, str, str]
# (args) -> ({host: [capture file bytes, ...]}, the lab's hosts); raises LabctlError when there is no lab.
LiveSource = Callable[[argparse.Namespace], tuple[Mapping[str, Iterable[bytes]], Sequence[HostInfo]]]
# (args) -> (poll, hosts) for --follow: each poll() gives what the hosts captured since the last one,
# as capture files of their own ({host: [pcap bytes, ...]}); the first gives everything so far.
LiveFeed = Callable[[argparse.Namespace], tuple[Callable[[], Mapping[str, Iterable[bytes]]], Sequence[HostInfo]]]
# (args) -> the live lab's TLS key logs (NSS key log text, every host's merged), read again as they grow.
LiveKeys = Callable[[argparse.Namespace], str]


def probe_addresses(hosts: Iterable[HostInfo]) -> set[str]:
    """Where labctl's readiness probe comes from: it runs on the name server (labctl up/start).

    The name server never opens a connection or asks a question of its own (it resolves nothing),
    so what it starts is lab machinery, not the lesson: `labctl traffic` shows it only with --all.
    """
    return {address for _, _, kind, address in hosts if kind == "dns"}


def names_from_hosts(hosts: Iterable[HostInfo]) -> dict[str, str]:
    """{address: name} from (service name, FQDN, kind, address): MUAs by their short name (andy),
    servers by their FQDN (smtp.ouhk.example), as the reference article names them."""
    return {address: (name if kind == "mua" else fqdn) for name, fqdn, kind, address in hosts}


def hosts_from_topology(path: Path) -> list[HostInfo]:
    topo = topology.load(path)
    return [(h.name, h.fqdn, h.kind, str(h.address)) for h in topo.hosts]


def _read(paths: Sequence[Path]) -> dict[str, list[bytes]]:
    sources: dict[str, list[bytes]] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LabctlError(f"{path}: cannot read the capture ({exc.strerror})") from exc
        sources.setdefault(path.stem, []).append(data)
    return sources


def decode_args(args: argparse.Namespace, live: LiveSource | None,
                keys: LiveKeys | None = None) -> tuple[list[Conversation], TrafficDecoder]:
    """The conversations of the captures the command line names, decoded (TLS with the key logs:
    ``--keylog`` files, a pcapng's own secrets, or the live lab's hosts')."""
    hosts: Sequence[HostInfo] = ()
    if args.pcap:
        sources: Mapping[str, Iterable[bytes]] = _read(args.pcap)
        if not args.no_names:
            hosts = hosts_from_topology(args.topology)
    elif live is not None:
        sources, hosts = live(args)
    else:
        raise LabctlError("say which capture to read: --pcap FILE (a pcap or pcapng, e.g. written by "
                          "tcpdump -w on a lab host)")
    decoder = _decoder(args, hosts)
    decoder.feed_captures(sources)
    _print_problems(decoder, set())
    decoder.tcp.finish()
    if not args.pcap and keys is not None and decoder.wants_keys():
        decoder.add_keys(keys(args))
    return decoder.conversations(), decoder


def _decoder(args: argparse.Namespace, hosts: Sequence[HostInfo]) -> TrafficDecoder:
    from labctl.traffic.decode import TrafficDecoder

    args.probe_addresses = probe_addresses(hosts)
    names = {} if args.no_names else names_from_hosts(hosts)
    decoder = TrafficDecoder(names, show_bodies=getattr(args, "bodies", False), decrypt=not args.no_decrypt)
    for path in args.keylog:
        try:
            decoder.add_keys(path.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            raise LabctlError(f"{path}: cannot read the key log ({exc.strerror})") from exc
    return decoder


def _print_problems(decoder: TrafficDecoder, reported: set[str]) -> None:
    """Why a capture could be read only so far; each problem once (a follow loop sees them again)."""
    for problem in decoder.problems:
        if problem not in reported:
            err.print(Text.assemble(("» ", "yellow"), problem), soft_wrap=True)
            reported.add(problem)


# -- traffic -------------------------------------------------------------------------------------------

FOLLOW_INTERVAL = 1.0  # seconds between looks at the live capture


def cmd_traffic(args: argparse.Namespace, live: LiveSource | None = None, feed: LiveFeed | None = None,
                keys: LiveKeys | None = None) -> int:
    from labctl.traffic import render

    since = render.parse_since(args.since) if args.since else None
    if args.follow:
        if args.pcap or feed is None:
            raise LabctlError("--follow reads the live lab's capture; with --pcap the file is read once")
        if args.json:
            raise LabctlError("--follow prints dialogues as they grow; for JSON, run without --follow")
        return follow(args, feed, since, keys)
    convs, _ = decode_args(args, live, keys)
    convs = render.select(convs, proto=args.proto, host=args.host, since=since, decoded_only=not args.all,
                              hide_clients=() if args.all else args.probe_addresses)
    if args.json:
        sys.stdout.write(render.to_json(convs, hide_secrets=args.hide_secrets) + "\n")
        return 0
    if not convs:
        out.print("no conversation matches" + ("" if args.all else " (--all shows other TCP/UDP traffic too)"))
        return 0
    print_conversations(convs, hide_secrets=args.hide_secrets, times=args.times)
    return 0


def follow(args: argparse.Namespace, feed: LiveFeed, since: float | None, keys: LiveKeys | None = None) -> int:
    """Print the dialogues, then what each adds as the capture grows, until Ctrl-C.

    One decoder is fed what the hosts captured since the last look (a look moves only new
    packets, however large the capture has grown); the follower prints each event once.
    """
    from labctl.traffic import render
    from labctl.traffic.follow import Follower
    from labctl.traffic.follow import key as follow_key

    poll, hosts = feed(args)
    decoder = _decoder(args, hosts)
    follower = Follower()
    reported: set[str] = set()
    last: Conversation | None = None
    err.print("following the lab's capture; Ctrl-C to stop")
    # The capture clock, run on by the wall clock while the capture is silent: an unanswered SYN
    # settles even when nothing else is captured (read on the engine's clock, whatever ours says).
    newest, seen_at = 0.0, time.monotonic()
    try:
        while True:
            decoder.feed_captures(poll())
            if decoder.latest != newest:
                newest, seen_at = decoder.latest, time.monotonic()
                # A session's secrets are logged during its handshake, before its records reach a
                # capture file; a key found later re-decodes what it opens (its lines were held back).
                if keys is not None and decoder.wants_keys():
                    decoder.add_keys(keys(args))
            _print_problems(decoder, reported)
            convs = render.select(decoder.conversations(), proto=args.proto, host=args.host, since=since,
                                  decoded_only=not args.all,
                                  hide_clients=() if args.all else args.probe_addresses)
            for conv, events in follower.poll(convs, now=newest + (time.monotonic() - seen_at)):
                if last is None or follow_key(last) != follow_key(conv):
                    if last is not None:
                        out.print()
                    head = render.header(conv)
                    out.print(Text((render.clock(conv.start) + "  " if args.times else "") + head, style="bold"),
                              soft_wrap=True)
                print_events(events, hide_secrets=args.hide_secrets, times=args.times)
                last = conv
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return 0


def print_events(events: Sequence[Event], *, hide_secrets: bool, times: bool) -> None:
    from labctl.traffic import render
    from labctl.traffic.model import CLIENT, NOTE

    colour = {CLIENT: "cyan", NOTE: "yellow"}
    for event in events:
        style = "red" if event.secrets and not hide_secrets else colour.get(event.direction, "")
        if event.kind == "undecodable":
            style = "magenta"
        for line in render.event_lines(event, hide_secrets=hide_secrets, times=times):
            out.print(Text(line, style=style), soft_wrap=True)


def print_conversations(convs: Sequence[Conversation], *, hide_secrets: bool, times: bool) -> None:
    """The dialogues, coloured: client lines cyan, server lines plain, notes yellow, secrets red."""
    from labctl.traffic import render

    for conv in convs:
        if conv.protocol == "dns" and conv.decodable:
            out.print(Text(render.dns_lines(conv, hide_secrets=hide_secrets, times=times)), soft_wrap=True)
            continue
        head = render.header(conv)
        out.print(Text((render.clock(conv.start) + "  " if times else "") + head, style="bold"), soft_wrap=True)
        print_events(conv.events, hide_secrets=hide_secrets, times=times)
        out.print()


# -- trace ----------------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace, live: LiveSource | None = None, keys: LiveKeys | None = None) -> int:
    if not args.message_id and not args.subject:
        raise LabctlError("say which message: labctl trace MESSAGE-ID, or labctl trace --subject TEXT "
                          "(labctl send prints the Message-ID)")
    convs, decoder = decode_args(args, live, keys)
    from labctl.traffic import diagram, journey

    j = journey.trace(convs, message_id=args.message_id, subject=args.subject,
                      lookups=decoder.neighbour_lookups())
    if args.mermaid:
        sys.stdout.write(diagram.mermaid(j))
    else:
        sys.stdout.write(journey.timeline(j))
    if args.output is not None:
        try:
            args.output.write_text(diagram.svg(j), encoding="utf-8")
        except OSError as exc:
            raise LabctlError(f"{args.output}: cannot write the diagram ({exc.strerror})") from exc
        err.print(f"sequence diagram written to {args.output}")
    return 0 if j.complete else 3


# -- registration ---------------------------------------------------------------------------------------

AddCommand = Callable[..., argparse.ArgumentParser]


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pcap", type=Path, action="append", default=[], metavar="FILE",
                   help="read this capture (pcap or pcapng; repeatable, merged by time)")
    p.add_argument("--topology", type=Path, default=topology.DEFAULT_TOPOLOGY,
                   help="with --pcap: name addresses after this topology's hosts (default: compose/lab.yml)")
    p.add_argument("--no-names", action="store_true", help="show bare addresses, no host names")
    p.add_argument("--no-decrypt", action="store_true", help="show TLS as its records only (types, sizes, "
                   "times): what an outsider sees")
    p.add_argument("--keylog", type=Path, action="append", default=[], metavar="FILE",
                   help="with --pcap: TLS secrets in NSS key log format (SSLKEYLOGFILE; repeatable); a "
                   "pcapng's own Decryption Secrets Block is read anyway")


def register(add: AddCommand, live: LiveSource | None = None, feed: LiveFeed | None = None,
             keys: LiveKeys | None = None) -> None:
    """Add ``traffic`` and ``trace`` with labctl's ``add(name, func, help)`` helper."""

    def trace(args: argparse.Namespace) -> int:
        return cmd_trace(args, live, keys)

    def traffic(args: argparse.Namespace) -> int:
        return cmd_traffic(args, live, feed, keys)

    p: Any = add("traffic", traffic, "the captured conversations, decoded: SMTP and POP3 dialogues, "
                 "DNS queries and answers")
    _input_options(p)
    p.add_argument("--proto", choices=PROTOCOL_CHOICES, help="only this protocol")
    p.add_argument("--host", help="only conversations of this host (name or address)")
    p.add_argument("--since", help="only conversations after this: 10m (ago), 14:05:30 (today), ISO date-time")
    p.add_argument("--all", action="store_true", help="also TCP/UDP traffic of other ports (summarised)")
    p.add_argument("--bodies", action="store_true", help="show message bodies in full, not summarised")
    p.add_argument("--times", action="store_true", help="show the capture time of every line")
    p.add_argument("--hide-secrets", action="store_true", help="mask passwords sent in clear text")
    p.add_argument("--follow", action="store_true", help="keep reading the live lab's capture")
    p.add_argument("--json", action="store_true", help="a list of conversations with their events "
                   "(structure: see labctl/traffic/render.py)")

    p = add("trace", trace, "the journey of one message from the packets: the article's six "
            "steps as a timeline, Mermaid text or an SVG diagram (exit status 3 when a step is missing)")
    _input_options(p)
    p.add_argument("message_id", nargs="?", metavar="MESSAGE-ID", help="as labctl send printed it (<...>)")
    p.add_argument("--subject", help="the first message whose Subject contains this text")
    p.add_argument("--mermaid", action="store_true", help="print a Mermaid sequence diagram instead")
    p.add_argument("-o", "--output", type=Path, metavar="FILE.svg", help="also write the diagram as SVG")
