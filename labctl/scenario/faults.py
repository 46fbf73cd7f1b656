"""Breaking a running lab on purpose: hosts stopped or cut off, links slowed, ports blocked, DNS changed.

Network faults act inside the host's own network namespace (``tc`` and ``iptables`` through
``Lab.exec``; every lab host has NET_ADMIN), so they work where the engine runs in a VM and touch
nothing outside the lab. Each rule carries the comment ``maillab-fault`` so that it is removed
exactly, never by flushing a table.

Link shaping prefers ``tc netem`` (delay, loss, rate in one qdisc). Kernels built without netem
(``sch_netem``; some VM kernels, including the one this was developed on) get what they do have:
loss as an iptables ``statistic`` rule dropping that share of the packets arriving at the host
(the sender retransmits, as on a lossy wire), rate as a ``tbf`` qdisc. Delay has no substitute
there, and a scenario asking for it fails with a message saying so rather than pretending.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labctl import zonefiles
from labctl.backend import EngineError
from labctl.scenario import model as m
from labctl.scenario.context import Context, StepFailed

COMMENT = ["-m", "comment", "--comment", "maillab-fault"]
ZONES_DIR = "/etc/maillab/zones"
DNS_RELOAD_TIMEOUT = 10.0  # seconds for the name server to serve the new serial
TBF_BURST = "32kbit"  # tbf needs a bucket; a few packets' worth keeps the rate honest
TBF_LATENCY = "2s"  # how long a packet may wait for tokens before tbf drops it


def _sh(ctx: Context, host: str, cmd: list[str], what: str) -> str:
    result = ctx.lab.exec(host, cmd)
    if result.exit_code != 0:
        raise StepFailed(what, f"`{' '.join(cmd)}` on {host}: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.output


# -- hosts -----------------------------------------------------------------------------------------


def _stop(ctx: Context, host: str) -> str:
    return f"{host} is {ctx.lab.stop(host).state}"


def _kill(ctx: Context, host: str) -> str:
    return f"{host} is {ctx.lab.kill(host).state}"


def _start(ctx: Context, host: str) -> str:
    return f"{host} is {ctx.lab.start(host).state} and its services answer"


def _restart(ctx: Context, host: str) -> str:
    ctx.lab.stop(host)
    ctx.undo.pop(host, None)  # a new start has a clean network namespace state
    return f"{host} is {ctx.lab.start(host).state} again and its services answer"


def _disconnect(ctx: Context, host: str) -> str:
    try:
        ctx.lab.disconnect(host)
    except EngineError as exc:
        raise StepFailed(f"{host} cut off the lab network", str(exc)) from exc
    return f"{host} is cut off the lab network (its cable is pulled)"


def _reconnect(ctx: Context, host: str) -> str:
    spec = ctx.topology.host(host)
    try:
        ctx.lab.reconnect(host)
    except EngineError as exc:
        raise StepFailed(f"{host} back on the lab network", str(exc)) from exc
    # Connecting gives the host Docker's default route and resolver again: seal it as its role does.
    _sh(ctx, host, ["python3", "-c", "from services import config, runtime; runtime.join_lab(config.load())"],
        f"{host} sealed again after reconnecting")
    return f"{host} is back on the lab network at {spec.address}"


def interface_with(addresses: str, address: ipaddress.IPv4Address) -> str | None:
    """The interface holding ``address`` in ``ip -o -4 addr show`` output ("2: eth0@if9 inet 10.0.0.5/24 ...")."""
    for line in addresses.splitlines():
        fields = line.split()
        if "inet" in fields and ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).ip == address:
            return fields[1].split("@")[0]
    return None


def _interface(ctx: Context, host: str) -> str:
    """The host's interface on the lab network (eth0 unless it was reconnected)."""
    address = ipaddress.IPv4Address(ctx.topology.host(host).address)
    found = interface_with(_sh(ctx, host, ["ip", "-o", "-4", "addr", "show"], f"{host}'s interfaces"), address)
    if found is None:
        raise StepFailed(f"{host} on the lab network at {address}", "no interface with that address (disconnected?)")
    return found


# -- link shaping ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command of a fault, run on the faulty host, and the one that takes it back."""

    argv: list[str]
    undo: list[str]
    what: str  # what it does, for the error when it fails: "a 10% loss rule on mx1"
    effect: str  # what it did, for the report


@dataclass(frozen=True)
class ShapePlan:
    commands: tuple[Command, ...]  # run in order on the host
    summary: str  # the step's result once they all ran


def shape_plan(fault: m.Shape, dev: str, *, netem: bool) -> ShapePlan:
    """The commands shaping ``dev`` on ``fault.host``: one netem qdisc, or, where the kernel has no
    netem, an iptables ``statistic`` drop rule for loss and a ``tbf`` qdisc for rate. A delay has
    no substitute without netem: StepFailed saying so."""
    host = fault.host
    clear = ["tc", "qdisc", "del", "dev", dev, "root"]
    if netem:
        args: list[str] = []
        if fault.delay_ms:
            args += ["delay", f"{fault.delay_ms:g}ms"]
        if fault.loss_percent:
            args += ["loss", f"{fault.loss_percent:g}%"]
        if fault.rate_kbit:
            args += ["rate", f"{fault.rate_kbit:g}kbit"]
        effect = " ".join(args)
        command = Command(["tc", "qdisc", "replace", "dev", dev, "root", "netem", *args], clear,
                          f"netem on {host}", effect)
        return ShapePlan((command,), f"netem on {host} {dev}: {effect}")
    if fault.delay_ms:
        raise StepFailed(f"a {fault.delay_ms:g} ms delay on {host}'s link",
                         "this kernel has no netem (sch_netem), the only way to delay packets; loss and rate "
                         "work without it: drop the delay from the scenario or run it where netem exists")
    commands = []
    if fault.loss_percent:
        # Dropping that share of the arriving packets: the sender retransmits, as on a lossy wire.
        rule = ["INPUT", "-i", dev, "-m", "statistic", "--mode", "random", "--probability",
                f"{fault.loss_percent / 100:.4f}", *COMMENT, "-j", "DROP"]
        commands.append(Command(["iptables", "-A", *rule], ["iptables", "-D", *rule],
                                f"a {fault.loss_percent:g}% loss rule on {host}",
                                f"{fault.loss_percent:g}% of arriving packets dropped (iptables statistic)"))
    if fault.rate_kbit:
        tbf = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{fault.rate_kbit:g}kbit",
               "burst", TBF_BURST, "latency", TBF_LATENCY]
        commands.append(Command(tbf, clear, f"a rate limit on {host}",
                                f"sending limited to {fault.rate_kbit:g} kbit/s (tbf)"))
    summary = f"{host} {dev}: " + "; ".join(c.effect for c in commands) + " (no netem in this kernel)"
    return ShapePlan(tuple(commands), summary)


def netem_missing(stderr: str) -> bool:
    """Whether tc refused a netem qdisc because the kernel has none ("Specified qdisc kind is unknown")."""
    return "unknown" in stderr.lower()


def _shape(ctx: Context, fault: m.Shape) -> str:
    host = fault.host
    _unshape(ctx, host)
    dev = _interface(ctx, host)
    plan = shape_plan(fault, dev, netem=True)
    (netem,) = plan.commands
    tried = ctx.lab.exec(host, netem.argv)
    if tried.exit_code == 0:
        ctx.undo[host] = [netem.undo]
        return plan.summary
    error = tried.stderr.decode("utf-8", "replace").strip()
    if not netem_missing(error):
        raise StepFailed(netem.what, error)
    plan = shape_plan(fault, dev, netem=False)
    undo: list[list[str]] = []
    for command in plan.commands:
        _sh(ctx, host, command.argv, command.what)
        undo.append(command.undo)
    ctx.undo[host] = undo
    return plan.summary


def _unshape(ctx: Context, host: str) -> str:
    commands = ctx.undo.pop(host, [])
    for cmd in commands:
        ctx.lab.exec(host, cmd)  # a rule already gone (the host restarted) is what we wanted
    return f"{host}'s link is back to normal" if commands else f"{host}'s link was not shaped"


# What each host fault does to its host, by the action named in the scenario.
HOST_FAULTS: Mapping[str, Callable[[Context, str], str]] = {
    "stop": _stop,
    "start": _start,
    "kill": _kill,
    "restart": _restart,
    "disconnect": _disconnect,
    "reconnect": _reconnect,
    "unshape": _unshape,
}


def _host(ctx: Context, fault: m.HostFault) -> str:
    return HOST_FAULTS[fault.action](ctx, fault.host)


# -- ports -----------------------------------------------------------------------------------------


def block_rules(port: int) -> Mapping[str, list[str]]:
    """The iptables rule (without -I/-D) for each way of blocking TCP ``port``: refuse, drop."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), *COMMENT, "-j"]
    return {"refuse": [*rule, "REJECT", "--reject-with", "tcp-reset"], "drop": [*rule, "DROP"]}


def _block(ctx: Context, fault: m.Block) -> str:
    rules = block_rules(fault.port)
    if fault.undo:
        removed = 0
        for spec in rules.values():
            while ctx.lab.exec(fault.host, ["iptables", "-D", *spec]).exit_code == 0:
                removed += 1
        return f"port {fault.port} on {fault.host} open again ({removed} rule(s) removed)"
    _sh(ctx, fault.host, ["iptables", "-I", *rules[fault.how]], f"port {fault.port} blocked on {fault.host}")
    effect = "refused (TCP reset)" if fault.how == "refuse" else "silently dropped"
    return f"connections to {fault.host}:{fault.port} are {effect}"


# -- DNS -------------------------------------------------------------------------------------------


def _dns(ctx: Context, fault: m.DnsChange) -> str:
    lab = ctx.lab
    topo = fault.topology.with_subnet(ctx.topology.subnet)
    serial = ctx.serial + 1
    files = zonefiles.render(topo, serial=serial)
    ns = topo.nameserver
    lab.put_files(ns.name, ZONES_DIR, {name: text.encode() for name, text in files.items()})
    lab.signal(ns.name, "SIGHUP")  # services.dns.server.reload
    deadline = ctx.clock() + DNS_RELOAD_TIMEOUT
    seen = ""
    while ctx.clock() < deadline:
        seen = lab.exec(ns.name, ["dig", "+short", "+norecurse", "@127.0.0.1", "SOA", fault.domain]).output.strip()
        if len(seen.split()) > 2 and seen.split()[2] == str(serial):
            ctx.serial = serial
            ctx.topology = topo
            mx = lab.exec(ns.name, ["dig", "+short", "@127.0.0.1", "MX", fault.domain]).output.split("\n")
            return f"{ns.name} serves serial {serial}; MX {fault.domain}: " + (
                ", ".join(x for x in mx if x) or "none")
        ctx.sleep(0.2)
    logs = b"".join(lab.logs(ns.name, tail=5)).decode("utf-8", "replace").strip()
    raise StepFailed(f"the name server to reload with serial {serial}", f"SOA {seen or 'no answer'}; its log: {logs}")


# What each kind of fault does, by its type in the model (the runner's action table includes it).
FAULTS: Mapping[type[m.Fault], Callable[[Context, Any], str]] = {
    m.HostFault: _host,
    m.Shape: _shape,
    m.Block: _block,
    m.DnsChange: _dns,
}
