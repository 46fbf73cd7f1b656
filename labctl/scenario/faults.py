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

from labctl import zonefiles
from labctl.backend import EngineError
from labctl.scenario import model as m
from labctl.scenario.steps import Context, StepFailed

COMMENT = ["-m", "comment", "--comment", "maillab-fault"]
ZONES_DIR = "/etc/maillab/zones"
DNS_RELOAD_TIMEOUT = 10.0  # seconds for the name server to serve the new serial
TBF_BURST = "32kbit"  # tbf needs a bucket; a few packets' worth keeps the rate honest
TBF_LATENCY = "2s"  # how long a packet may wait for tokens before tbf drops it


def run_fault(ctx: Context, fault: m.Fault) -> str:
    if isinstance(fault, m.HostFault):
        return _host(ctx, fault)
    if isinstance(fault, m.Shape):
        return _shape(ctx, fault)
    if isinstance(fault, m.Block):
        return _block(ctx, fault)
    return _dns(ctx, fault)


def _sh(ctx: Context, host: str, cmd: list[str], what: str) -> str:
    result = ctx.lab.exec(host, cmd)
    if result.exit_code != 0:
        raise StepFailed(what, f"`{' '.join(cmd)}` on {host}: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.output


# -- hosts -----------------------------------------------------------------------------------------


def _host(ctx: Context, fault: m.HostFault) -> str:
    lab, host = ctx.lab, fault.host
    if fault.action == "stop":
        return f"{host} is {lab.stop(host).state}"
    if fault.action == "kill":
        return f"{host} is {lab.kill(host).state}"
    if fault.action == "start":
        return f"{host} is {lab.start(host).state} and its services answer"
    if fault.action == "restart":
        lab.stop(host)
        ctx.undo.pop(host, None)  # a new start has a clean network namespace state
        return f"{host} is {lab.start(host).state} again and its services answer"
    if fault.action == "unshape":
        return _unshape(ctx, host)
    spec = ctx.topology.host(host)
    if fault.action == "disconnect":
        try:
            lab.disconnect(host)
        except EngineError as exc:
            raise StepFailed(f"{host} cut off the lab network", str(exc)) from exc
        return f"{host} is cut off the lab network (its cable is pulled)"
    try:
        lab.reconnect(host)
    except EngineError as exc:
        raise StepFailed(f"{host} back on the lab network", str(exc)) from exc
    # Connecting gives the host Docker's default route and resolver again: seal it as its role does.
    _sh(ctx, host, ["python3", "-c", "from services import config, runtime; runtime.join_lab(config.load())"],
        f"{host} sealed again after reconnecting")
    return f"{host} is back on the lab network at {spec.address}"


def _interface(ctx: Context, host: str) -> str:
    """The host's interface on the lab network (eth0 unless it was reconnected)."""
    address = ipaddress.IPv4Address(ctx.topology.host(host).address)
    for line in _sh(ctx, host, ["ip", "-o", "-4", "addr", "show"], f"{host}'s interfaces").splitlines():
        fields = line.split()
        if "inet" in fields and ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).ip == address:
            return fields[1].split("@")[0]
    raise StepFailed(f"{host} on the lab network at {address}", "no interface with that address (disconnected?)")


# -- link shaping ----------------------------------------------------------------------------------


def _shape(ctx: Context, fault: m.Shape) -> str:
    host = fault.host
    _unshape(ctx, host)
    dev = _interface(ctx, host)
    netem = ["tc", "qdisc", "replace", "dev", dev, "root", "netem"]
    if fault.delay_ms:
        netem += ["delay", f"{fault.delay_ms:g}ms"]
    if fault.loss_percent:
        netem += ["loss", f"{fault.loss_percent:g}%"]
    if fault.rate_kbit:
        netem += ["rate", f"{fault.rate_kbit:g}kbit"]
    tried = ctx.lab.exec(host, netem)
    if tried.exit_code == 0:
        ctx.undo[host] = [["tc", "qdisc", "del", "dev", dev, "root"]]
        return f"netem on {host} {dev}: {' '.join(netem[7:])}"
    error = tried.stderr.decode("utf-8", "replace").strip()
    if "unknown" not in error.lower():
        raise StepFailed(f"netem on {host}", error)
    if fault.delay_ms:
        raise StepFailed(f"a {fault.delay_ms:g} ms delay on {host}'s link",
                         "this kernel has no netem (sch_netem), the only way to delay packets; loss and rate "
                         "work without it: drop the delay from the scenario or run it where netem exists")
    undo: list[list[str]] = []
    done = []
    if fault.loss_percent:
        rule = ["INPUT", "-i", dev, "-m", "statistic", "--mode", "random", "--probability",
                f"{fault.loss_percent / 100:.4f}", *COMMENT, "-j", "DROP"]
        _sh(ctx, host, ["iptables", "-A", *rule], f"a {fault.loss_percent:g}% loss rule on {host}")
        undo.append(["iptables", "-D", *rule])
        done.append(f"{fault.loss_percent:g}% of arriving packets dropped (iptables statistic)")
    if fault.rate_kbit:
        _sh(ctx, host, ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{fault.rate_kbit:g}kbit",
                        "burst", TBF_BURST, "latency", TBF_LATENCY], f"a rate limit on {host}")
        undo.append(["tc", "qdisc", "del", "dev", dev, "root"])
        done.append(f"sending limited to {fault.rate_kbit:g} kbit/s (tbf)")
    ctx.undo[host] = undo
    return f"{host} {dev}: " + "; ".join(done) + " (no netem in this kernel)"


def _unshape(ctx: Context, host: str) -> str:
    commands = ctx.undo.pop(host, [])
    for cmd in commands:
        ctx.lab.exec(host, cmd)  # a rule already gone (the host restarted) is what we wanted
    return f"{host}'s link is back to normal" if commands else f"{host}'s link was not shaped"


def _block(ctx: Context, fault: m.Block) -> str:
    rule = ["INPUT", "-p", "tcp", "--dport", str(fault.port), *COMMENT, "-j"]
    refuse = [*rule, "REJECT", "--reject-with", "tcp-reset"]
    drop = [*rule, "DROP"]
    if fault.undo:
        removed = 0
        for spec in (refuse, drop):
            while ctx.lab.exec(fault.host, ["iptables", "-D", *spec]).exit_code == 0:
                removed += 1
        return f"port {fault.port} on {fault.host} open again ({removed} rule(s) removed)"
    _sh(ctx, fault.host, ["iptables", "-I", *(refuse if fault.how == "refuse" else drop)],
        f"port {fault.port} blocked on {fault.host}")
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
