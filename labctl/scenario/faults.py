"""Breaking a running lab on purpose: hosts stopped or cut off, links slowed, ports blocked, DNS changed.

Network faults act inside the host's own network namespace (``tc`` and ``iptables`` through
``Lab.exec``; every lab host has NET_ADMIN), so they work where the engine runs in a VM and touch
nothing outside the lab. Each rule carries the comment ``maillab-fault`` so that it is removed
exactly, never by flushing a table.

Link shaping acts on both directions unless the step names one: what the host sends is queued
on its interface, what it receives on an ifb device its interface's ingress is redirected to
(the kernel queues only what leaves a device). It prefers ``tc netem`` (delay, loss, rate in one
qdisc). Kernels built without netem (``sch_netem``; some VM kernels, including the one this was
developed on) get what they do have: loss as iptables ``statistic`` rules dropping that share of
the packets (the sender retransmits, as on a lossy wire), rate as a ``tbf`` qdisc; without ifb,
an iptables ``hashlimit`` rule polices what arrives. Delay has no substitute there: the runner
asks the kernel before any step runs (:func:`netem_works`), and a scenario asking for a delay
fails there, saying so, rather than pretending.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labctl import serverfaults, zonefiles
from labctl.backend import EngineError
from labctl.scenario import model as m
from labctl.scenario.context import Context, StepFailed

COMMENT = ["-m", "comment", "--comment", "maillab-fault"]
ZONES_DIR = "/etc/maillab/zones"
DNS_RELOAD_TIMEOUT = 10.0  # seconds for the name server to serve the new serial
TBF_BURST = "32kbit"  # tbf needs a bucket; a few packets' worth keeps the rate honest
TBF_LATENCY = "2s"  # how long a packet may wait for tokens before tbf drops it
IFB = "ifb0"  # the device arriving packets are queued in; one per host (each has its own namespace)
POLICE_BURST = "32kb"  # hashlimit's bucket when policing what arrives, as TBF_BURST for what leaves
NETEM_PROBE = ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
NO_NETEM = ("this kernel has no netem (sch_netem), the only way to delay packets; loss and rate work without "
            "it: drop the delay from the scenario or run it where netem exists")


def _sh(ctx: Context, host: str, cmd: list[str], what: str) -> str:
    result = ctx.lab.exec(host, cmd)
    if result.exit_code != 0:
        raise StepFailed(what, f"`{' '.join(cmd)}` on {host}: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.output


# -- hosts -----------------------------------------------------------------------------------------


def _stop(ctx: Context, host: str) -> str:
    return f"{host} is {ctx.lab.stop(host).condition}"


def _kill(ctx: Context, host: str) -> str:
    return f"{host} is {ctx.lab.kill(host).condition}"


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
    """One command of a fault, run on the faulty host, and the one that takes it back (none: it
    goes with an earlier command's undo)."""

    argv: list[str]
    undo: list[str] | None
    what: str  # what it does, for the error when it fails: "a 10% loss rule on mx1"


@dataclass(frozen=True)
class ShapePlan:
    commands: tuple[Command, ...]  # run in order on the host; undone in the reverse order
    summary: str  # the step's result once they all ran: which directions, by what mechanism


def _ingress_to_ifb(host: str, dev: str) -> list[Command]:
    """Packets arriving on ``dev`` redirected through :data:`IFB`, whose root qdisc then shapes
    them as an egress qdisc would (the kernel queues only what leaves a device)."""
    ingress = ["tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"]
    redirect = ["tc", "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "ip", "u32", "match", "u32", "0",
                "0", "action", "mirred", "egress", "redirect", "dev", IFB]
    return [Command(["ip", "link", "add", IFB, "type", "ifb"], ["ip", "link", "del", IFB], f"an ifb device on {host}"),
            Command(["ip", "link", "set", IFB, "up"], None, f"{IFB} up on {host}"),
            Command(ingress, ["tc", "qdisc", "del", "dev", dev, "ingress"], f"an ingress qdisc on {host} {dev}"),
            Command(redirect, None, f"{dev}'s arriving packets redirected to {IFB} on {host}")]


def _loss_rule(chain: str, dev: str, percent: float) -> list[str]:
    # Dropping that share of the packets: the sender retransmits, as on a lossy wire.
    way = "-i" if chain == "INPUT" else "-o"
    return [chain, way, dev, "-m", "statistic", "--mode", "random", "--probability", f"{percent / 100:.4f}",
            *COMMENT, "-j", "DROP"]


def _policing_rule(dev: str, kbit: float) -> list[str]:
    # Without an ifb device, what arrives beyond the rate is dropped (policed, not queued): TCP
    # backs off to about the rate, more roughly than a queue would make it.
    octets = max(1, round(kbit * 1000 / 8))
    return ["INPUT", "-i", dev, "-m", "hashlimit", "--hashlimit-name", "maillab-in", "--hashlimit-above",
            f"{octets}b/s", "--hashlimit-burst", POLICE_BURST, *COMMENT, "-j", "DROP"]


def shape_plan(fault: m.Shape, dev: str, *, netem: bool, ifb: bool = True) -> ShapePlan:
    """The commands shaping ``dev`` on ``fault.host``, in the fault's directions: what the host
    sends by a qdisc on ``dev``; what it receives by the same qdisc on an ifb device fed from
    ``dev``'s ingress (or, with no ifb, loss and a policing rate limit by iptables on INPUT).
    The qdisc is netem (delay, loss, rate in one), or, where the kernel has no netem, ``tbf`` for
    the rate and an iptables ``statistic`` rule for the loss. A delay needs netem (and, for what
    arrives, an ifb device): StepFailed saying so."""
    host = fault.host
    ways = ("in", "out") if fault.direction == "both" else (fault.direction,)
    if fault.delay_ms and not netem:
        raise StepFailed(f"a {fault.delay_ms:g} ms delay on {host}'s link", NO_NETEM)
    if fault.delay_ms and "in" in ways and not ifb:
        raise StepFailed(f"a {fault.delay_ms:g} ms delay on what {host} receives",
                         "this kernel has no ifb device to queue arriving packets in; say direction: out")
    commands: list[Command] = []
    done: list[str] = []
    for way in ways:
        queue_dev = dev if way == "out" else IFB if ifb else None
        if way == "in" and ifb:
            commands += _ingress_to_ifb(host, dev)
        where = f"{dev}" if way == "out" else f"{IFB} (fed by {dev}'s ingress)" if ifb else dev
        parts: list[str] = []
        if netem and queue_dev is not None:
            args: list[str] = []
            if fault.delay_ms:
                args += ["delay", f"{fault.delay_ms:g}ms"]
            if fault.loss_percent:
                args += ["loss", f"{fault.loss_percent:g}%"]
            if fault.rate_kbit:
                args += ["rate", f"{fault.rate_kbit:g}kbit"]
            commands.append(Command(["tc", "qdisc", "replace", "dev", queue_dev, "root", "netem", *args],
                                    ["tc", "qdisc", "del", "dev", queue_dev, "root"], f"netem on {host} {queue_dev}"))
            done.append(f"{way}: netem {' '.join(args)} on {where}")
            continue
        if fault.loss_percent:
            rule = _loss_rule("INPUT" if way == "in" else "OUTPUT", dev, fault.loss_percent)
            commands.append(Command(["iptables", "-A", *rule], ["iptables", "-D", *rule],
                                    f"a {fault.loss_percent:g}% loss rule on {host}"))
            parts.append(f"{fault.loss_percent:g}% loss (iptables statistic on {rule[0]})")
        if fault.rate_kbit and queue_dev is not None:
            tbf = ["tc", "qdisc", "replace", "dev", queue_dev, "root", "tbf", "rate", f"{fault.rate_kbit:g}kbit",
                   "burst", TBF_BURST, "latency", TBF_LATENCY]
            commands.append(Command(tbf, ["tc", "qdisc", "del", "dev", queue_dev, "root"],
                                    f"a rate limit on {host} {queue_dev}"))
            parts.append(f"{fault.rate_kbit:g} kbit/s (tbf on {where})")
        elif fault.rate_kbit:
            rule = _policing_rule(dev, fault.rate_kbit)
            commands.append(Command(["iptables", "-A", *rule], ["iptables", "-D", *rule],
                                    f"a policing rate limit on {host}"))
            parts.append(f"{fault.rate_kbit:g} kbit/s (iptables hashlimit policing on INPUT: no ifb in this kernel)")
        done.append(f"{way}: " + ", ".join(parts))
    tail = "" if netem else " (no netem in this kernel)"
    return ShapePlan(tuple(commands), f"{host} {'; '.join(done)}{tail}")


def kernel_lacks(stderr: str) -> bool:
    """Whether tc or ip refused because the kernel has no such qdisc or device type ("Specified
    qdisc kind is unknown", "Unknown device type"), not for another reason."""
    return "unknown" in stderr.lower()


def _kernel_has(ctx: Context, host: str, probe: list[str], undo: list[str]) -> bool:
    """Whether ``probe`` works on the host (then undone): False if the kernel lacks what it needs
    ("Specified qdisc kind is unknown", "Unknown device type"), StepFailed for any other error."""
    tried = ctx.lab.exec(host, probe)
    if tried.exit_code == 0:
        ctx.lab.exec(host, undo)
        return True
    error = tried.stderr.decode("utf-8", "replace").strip()
    if not kernel_lacks(error):
        raise StepFailed(f"`{' '.join(probe)}` to work on {host}", error)
    return False


def netem_works(ctx: Context, host: str) -> bool:
    """Whether this host's kernel has netem: tried on its loopback, where it disturbs nothing."""
    return _kernel_has(ctx, host, NETEM_PROBE, ["tc", "qdisc", "del", "dev", "lo", "root"])


def _shape(ctx: Context, fault: m.Shape) -> str:
    host = fault.host
    _unshape(ctx, host)
    dev = _interface(ctx, host)
    ifb = fault.direction == "out" or _kernel_has(ctx, host, ["ip", "link", "add", IFB, "type", "ifb"],
                                                   ["ip", "link", "del", IFB])
    plan = shape_plan(fault, dev, netem=netem_works(ctx, host), ifb=ifb)
    undo: list[list[str]] = []
    try:
        for command in plan.commands:
            _sh(ctx, host, command.argv, command.what)
            if command.undo is not None:
                undo.append(command.undo)
    finally:
        ctx.undo[host] = undo  # what did run is undone by unshape, even if a later command failed
    return plan.summary


def _unshape(ctx: Context, host: str) -> str:
    commands = ctx.undo.pop(host, [])
    for cmd in reversed(commands):
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


# -- replies of our SMTP servers ------------------------------------------------------------------


def _reply(ctx: Context, fault: m.ReplyFault) -> str:
    rule = serverfaults.add(ctx.lab, fault.host, fault.rule)
    return f"{fault.host} answers {rule.describe()} (rule {rule.id})"


def _unreply(ctx: Context, fault: m.ClearReplies) -> str:
    cleared = serverfaults.clear(ctx.lab, fault.host)
    return f"{fault.host} answers as itself again ({len(cleared)} reply fault(s) cleared)"


# -- a full disk -----------------------------------------------------------------------------------

BALLAST = ".maillab-ballast"  # in the store's top folder, where no mailbox or queue file is looked for


def disk_commands(path: str) -> Mapping[bool, list[str]]:
    """The shell command filling (False) or freeing (True) the file system of ``path``; each then
    prints ``df -kP``'s line for it. Filling stops when the disk says ENOSPC, as designed."""
    ballast = f"{path}/{BALLAST}"
    report = f"df -kP {path} | tail -n 1"
    return {False: ["sh", "-c", f"cat /dev/zero > {ballast} 2>/dev/null; sync; {report}"],
            True: ["sh", "-c", f"rm -f {ballast} && {report}"]}


def free_kb(df_line: str) -> tuple[int, int]:
    """(size, available) in kB from a ``df -kP`` line: "tmpfs 16384 16384 0 100% /var/mail/maillab"."""
    fields = df_line.split()
    return int(fields[1]), int(fields[3])


def _disk(ctx: Context, fault: m.DiskFull) -> str:
    size, free = free_kb(_sh(ctx, fault.host, disk_commands(fault.path)[fault.undo], f"{fault.host}'s disk"))
    if fault.undo:
        return f"{fault.host}'s {fault.path} has room again ({free} of {size} kB free)"
    if free > 0:
        raise StepFailed(f"{fault.host}'s {fault.path} full", f"{free} of {size} kB still free")
    return f"{fault.host}'s {fault.path} is full (0 of {size} kB free): its server must answer 452 4.3.1"


# What each kind of fault does, by its type in the model (the runner's action table includes it).
FAULTS: Mapping[type[m.Fault], Callable[[Context, Any], str]] = {
    m.HostFault: _host,
    m.Shape: _shape,
    m.Block: _block,
    m.DnsChange: _dns,
    m.ReplyFault: _reply,
    m.ClearReplies: _unreply,
    m.DiskFull: _disk,
}
