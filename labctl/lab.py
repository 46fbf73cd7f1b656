"""Bringing a lab up and down, and finding its parts again: the one door to the engine.

Everything created carries labels (design decision 2): lab name, host, role. Every lookup goes by
label, so `down` is idempotent, a crashed run can be cleaned up, and two labs live side by side.
Every engine request of labctl goes through a :class:`Lab` to its :class:`~labctl.backend.Engine`;
what a host is made of is planned beforehand (:mod:`labctl.plan`), where its network goes chosen
purely (:mod:`labctl.subnets`).
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from labctl import labtls, subnets
from labctl.backend import ArchivedFile, ContainerInfo, Engine, EngineError, NetworkInfo, NotFound
from labctl.errors import AddressClash, LabctlError, LabNotRunning, ReadinessError
from labctl.events import Notice, Reporter, Stage, ignore
from labctl.plan import (
    LABEL_ADDRESS,
    LABEL_CONFIG,
    LABEL_ENGINE,
    LABEL_FQDN,
    LABEL_HOST,
    LABEL_LAB,
    LABEL_ROLE,
    LABEL_USER,
    STOP_TIMEOUT,
    HostPlan,
    network_name,
    plan,
)
from labctl.topology import HostSpec, Topology
from labctl.topology.model import Role
from services import config as svc
from services.probe import role_services

READY_TIMEOUT = 30.0  # seconds for every service to answer its readiness probe

T = TypeVar("T")
R = TypeVar("R")

# A network is "in use" for a moment after its last container was removed: an overlay on the
# manager while another engine's endpoint detaches (gossip), a bridge while a busy engine is
# still tearing the container's sandbox down. Docker says "has active endpoints".
IN_USE = ("active endpoints", "in use")
NETWORK_REMOVE_TRIES = 40
NETWORK_REMOVE_PAUSE = 0.25  # seconds between tries: 10 s in all



# A process ended by SIGKILL exits 128 + 9; a host stopped by SIGTERM exits 0 or 143.
KILLED_EXIT = 137


@dataclass(frozen=True)
class HostStatus(Role):
    lab: str
    name: str
    fqdn: str
    role: str
    address: str
    state: str  # Docker's: running, exited, ...
    container: str  # container name
    user: str = ""  # on MUA hosts: andy@ouhk.example
    tls: bool = False  # the lab has TLS (the host carries the lab CA's label)
    exit_code: int | None = None  # when exited: its status (KILLED_EXIT: SIGKILL, a crash)
    engine: str = ""  # the engine it runs on, by its engines-file name ("": the only one)

    @property
    def condition(self) -> str:
        """What a person asks: running, stopped (it was asked to end), killed (SIGKILL: a crash), or
        Docker's own state (created, restarting, paused, ...). Docker says "exited" for both of the
        middle two; only the exit status tells them apart."""
        if self.state != "exited":
            return self.state
        return "killed" if self.exit_code == KILLED_EXIT else "stopped"

    @property
    def services(self) -> tuple[tuple[str, int], ...]:
        """What it serves: with TLS, STARTTLS on the clear ports and implicit TLS beside them."""
        return role_services(self.role, tls=self.tls)

    @property
    def ports(self) -> str:
        return ", ".join(f"{proto} {port}" for proto, port in self.services) or "-"


@dataclass(frozen=True)
class PlacedLab:
    """A lab that is up: its topology on the subnet it really has, and its hosts."""

    topology: Topology
    hosts: list[HostStatus]


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def output(self) -> str:
        return self.stdout.decode("utf-8", "replace")


# The lab's name begins its containers', network's and volumes' names: what Docker allows there.
LAB_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,47}")


def check_lab_name(name: str) -> None:
    if not LAB_NAME.fullmatch(name):
        raise LabctlError(f"lab name {name!r}: use up to 48 letters, digits, '-', '_' or '.', beginning with a "
                          "letter or digit (it names the lab's containers, network and volumes)")


def parallel(func: Callable[[T], R], items: list[T]) -> list[R]:
    """Run ``func`` over ``items`` at once; the Engine does the work, we only wait on it."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(len(items), 32)) as pool:
        return list(pool.map(func, items))


def remove_network_when_free(engine: Engine, ident: str, *, tries: int = NETWORK_REMOVE_TRIES,
                             pause: float = NETWORK_REMOVE_PAUSE,
                             sleep: Callable[[float], None] = time.sleep) -> None:
    """Remove a network, retrying while its engine still counts endpoints of containers gone."""
    for attempt in range(tries):
        try:
            engine.remove_network(ident)
            return
        except EngineError as exc:
            if not any(word in str(exc) for word in IN_USE):
                raise
            if attempt == tries - 1:
                # Seen once in 20 labs brought down at once by a dockerd 20.10 at load 27: it kept
                # counting an endpoint of a container long removed, and only its restart forgot it.
                raise EngineError(f"{exc}; if `docker network inspect` shows no container on it, {engine.where} "
                                  "counts one long removed: restart that engine's dockerd (`systemctl restart "
                                  "docker` there) and run `labctl down` again", exc.status) from exc
            sleep(pause)


def on_engines(plans: Mapping[str, HostPlan], where: Mapping[str, str]) -> dict[str, HostPlan]:
    """Each host's plan with the engine it goes to in its labels (``org.maillab.engine``)."""
    return {name: replace(p, container=replace(p.container, labels={**p.container.labels, LABEL_ENGINE: where[name]}))
            for name, p in plans.items()}


def tar_of(files: Mapping[str, bytes], mtime: float) -> bytes:
    """An uncompressed tar of ``files`` (path inside the archive -> contents), each 0644."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, int(mtime)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def host_status(lab: str, c: ContainerInfo) -> HostStatus:
    labels = c.labels
    return HostStatus(lab=lab, name=labels.get(LABEL_HOST, "?"), fqdn=labels.get(LABEL_FQDN, "?"),
                      role=labels.get(LABEL_ROLE, "?"), address=labels.get(LABEL_ADDRESS, "?"), state=c.state,
                      container=c.name, user=labels.get(LABEL_USER, ""), tls=labtls.LABEL_TLS_CA in labels,
                      exit_code=c.exit_code, engine=labels.get(LABEL_ENGINE, ""))


# runc's words when the kernel refuses the capabilities a privileged exec asks for (a VM whose
# bounding set lacks CAP_SYS_RESOURCE, docker-in-docker); the exec then ends with 126, "not started".
RUNTIME_FAILED = b"OCI runtime exec failed"
PRIVILEGE_REFUSED = b"unable to apply caps"
EXEC_NOT_STARTED = 126


class _HeldErrors:
    """A privileged exec's output, with the runtime's refusal held back: it comes first, as the
    only output (on stdout, from Docker), and is told in labctl's words instead."""

    def __init__(self, out: Callable[[bytes], Any], err: Callable[[bytes], Any]) -> None:
        self._out, self._err = out, err
        self._first = True
        self._held = b""

    def _pass(self, chunk: bytes, to: Callable[[bytes], Any]) -> None:
        if self._first and chunk.startswith(RUNTIME_FAILED):
            self._held = chunk
        else:
            self.flush()
            to(chunk)
        self._first = False

    def out(self, chunk: bytes) -> None:
        self._pass(chunk, self._out)

    def err(self, chunk: bytes) -> None:
        self._pass(chunk, self._err)

    def refusal(self, code: int) -> str:
        """The runtime's words if it refused the capabilities, else ""."""
        said = self._held
        return said.decode("utf-8", "replace").strip() if code == EXEC_NOT_STARTED and PRIVILEGE_REFUSED in said else ""

    def flush(self) -> None:
        if self._held:
            self._err(self._held)
        self._held = b""

class Lab:
    """One lab (one ``--lab NAME``): every host of it on an engine (today one engine for all)."""

    def __init__(self, engine: Engine, name: str, report: Reporter = ignore, *, engine_name: str = "") -> None:
        self.engine = engine
        self.name = name
        self.report = report
        # The engines-file name of ``engine`` ("": no engines file): every container records it.
        self.engine_name = engine_name

    def engine_of(self, host: HostStatus | HostSpec | None = None) -> Engine:
        """The engine ``host`` lives on (None: the lab's own, where its network is made)."""
        return self.engine

    def engine_list(self) -> list[Engine]:
        """Every engine this lab's hosts may be on."""
        return [self.engine]

    # -- looking things up -------------------------------------------------------------------

    def _labels(self, **extra: str) -> dict[str, str]:
        return {LABEL_LAB: self.name, **extra}

    def containers(self) -> list[ContainerInfo]:
        return self.engine.containers(self._labels())

    def status(self) -> list[HostStatus]:
        out = [host_status(self.name, c) for c in self.containers()]
        order = {kind: i for i, kind in enumerate(svc.ROLES)}
        return sorted(out, key=lambda h: (order.get(h.kind, 99), h.name))

    def hosts(self) -> list[HostStatus]:
        """:meth:`status`, for a command that needs the lab: LabNotRunning when it has no host."""
        hosts = self.status()
        if not hosts:
            raise LabNotRunning(f"lab {self.name!r} is not up; start it with `labctl up --lab {self.name}`")
        return hosts

    def find(self, host: str) -> HostStatus:
        """A host of this lab by short name or FQDN."""
        hosts = self.hosts()
        for h in hosts:
            if host in (h.name, h.fqdn):
                return h
        raise LabctlError(f"lab {self.name!r} has no host {host!r}; hosts: {', '.join(h.name for h in hosts)}")

    def network(self) -> NetworkInfo | None:
        nets = self.engine.networks(self._labels())
        return nets[0] if nets else None

    # -- up ----------------------------------------------------------------------------------

    def up(self, topo: Topology, image: str | Mapping[str, str], *,
           subnet: ipaddress.IPv4Network | None = None) -> PlacedLab:
        """Create what is missing, start what is stopped, wait until every service answers.

        ``image`` is the lab image's tag, or a tag per image name (labctl.topology.IMAGES) when
        some hosts run another one (the reference peers). Running it on a lab that is already up
        changes nothing. Returns the lab as placed: on the subnet it got, which may not be the
        topology's when another network holds that.
        """
        check_lab_name(self.name)
        existing = {c.labels.get(LABEL_HOST, c.name): c for c in self.containers()}
        net = self.network()
        if net is not None:
            current = next(n for n in net.subnets if isinstance(n, ipaddress.IPv4Network))
            if subnet is not None and subnet != current:
                raise LabctlError(
                    f"lab {self.name!r} is up on {current}, not {subnet}; "
                    f"run `labctl down --lab {self.name}` first to move it"
                )
            topo = topo.with_subnet(current)
        else:
            topo = topo.with_subnet(self.choose_subnet(topo, subnet))

        plans = self._placed(topo, plan(self.name, topo, image), existing)
        stale = [n for n, c in existing.items() if n not in plans or c.labels.get(LABEL_CONFIG) != plans[n].digest]
        if stale:
            raise LabctlError(
                f"lab {self.name!r} is up with a different topology or image (hosts: {', '.join(sorted(stale))}); "
                f"run `labctl down --lab {self.name}` first"
            )
        tls = self._tls(topo, existing)
        if tls is not None:
            plans = self._placed(topo, plan(self.name, topo, image, tls), existing)
        if net is None:
            self._create_network(topo)
        todo = [plans[h.name] for h in topo.hosts if h.name not in existing or existing[h.name].state != "running"]
        if todo:
            self.report(Stage("hosts", f"starting {', '.join(p.host.name for p in todo)}"))

        def start(p: HostPlan) -> None:
            engine = self.engine_of(p.host)
            if p.host.name not in existing:
                engine.create_container(p.container)
            engine.start(p.container.name)

        parallel(start, todo)
        hosts = self.status()
        self.wait_ready(hosts)
        return PlacedLab(topo, hosts)

    def _placed(self, topo: Topology, plans: dict[str, HostPlan],
                existing: Mapping[str, ContainerInfo]) -> dict[str, HostPlan]:
        """The plans as this lab places them on engines (one engine: each labelled with its name)."""
        if not self.engine_name:
            return plans
        return on_engines(plans, dict.fromkeys(plans, self.engine_name))

    def _tls(self, topo: Topology, existing: Mapping[str, ContainerInfo]) -> labtls.LabTls | None:
        """The lab's TLS material when hosts are to be made (None: TLS off, or every host exists).

        The CA's key is kept nowhere (labctl.labtls), so a lab whose hosts already hold a CA
        cannot get another host signed by it: that, and a CA about to expire, need a new lab.
        """
        if not topo.tls.enabled or all(h.name in existing for h in topo.hosts):
            for c in existing.values():
                until = c.labels.get(labtls.LABEL_TLS_UNTIL)
                if topo.tls.enabled and (until is None or labtls.expiring(until)):
                    raise LabctlError(f"the lab CA of lab {self.name!r} expires at {until or '?'} (or is missing); "
                                      f"run `labctl down --lab {self.name}` and `labctl up` again for a new one "
                                      "(desktop clients then need the new `labctl tls ca`)")
            return None
        if existing:
            missing = ", ".join(h.name for h in topo.hosts if h.name not in existing)
            raise LabctlError(f"lab {self.name!r} has TLS and lacks hosts {missing}; its CA signs no new host (its "
                              f"key is kept nowhere): run `labctl down --lab {self.name}` and `labctl up` again")
        started = time.monotonic()
        tls = labtls.issue(self.name, topo)
        self.report(Stage("tls", f"lab CA {tls.fingerprint} and {len(tls.leaves)} server certificate(s) "
                                 f"({(time.monotonic() - started) * 1000:.0f} ms)"))
        return tls

    def ca_pem(self) -> str:
        """The lab CA certificate (PEM), from a host's files (running or stopped)."""
        for h in self.hosts():
            files = {f.name: f.data for f in self.read_files(h, str(svc.TLS_DIR))}
            if svc.TLS_CA.name in files:
                return files[svc.TLS_CA.name].decode("ascii")
        raise LabctlError(f"lab {self.name!r} runs without TLS: it has no CA; bring it up with "
                          f"`labctl down --lab {self.name}` then `labctl up --tls --lab {self.name}`")

    def _create_network(self, topo: Topology, *, overlay: bool = False) -> None:
        name = network_name(self.name, topo)
        try:
            self.engine.create_network(name, topo.subnet, self._labels(),
                                       overlay_range=subnets.node_range(topo.subnet) if overlay else None)
        except EngineError as exc:
            raise AddressClash(f"cannot create network {name} on {topo.subnet}: {exc}; "
                               "choose another subnet with --subnet") from exc
        kind = f"a Swarm overlay, engines' own addresses in {subnets.node_range(topo.subnet)}" if overlay else \
            "internal: no route out"
        self.report(Stage("network", f"{name} {topo.subnet} ({kind})"))

    def choose_subnet(self, topo: Topology, wanted: ipaddress.IPv4Network | None) -> ipaddress.IPv4Network:
        """The subnet this lab gets (see :func:`labctl.subnets.choose_subnet`), said when it moves."""
        choice = subnets.choose_subnet(topo.subnet, wanted, self.taken_networks())
        if choice.moved_from is not None:
            self.report(Notice(f"{topo.subnet} overlaps {choice.moved_from}; lab {self.name!r} uses "
                               f"{choice.subnet} instead"))
        return choice.subnet

    def taken_networks(self) -> list[subnets.Taken]:
        taken = []
        for net in self._all_networks():
            what = f"lab {net.labels[LABEL_LAB]!r}" if LABEL_LAB in net.labels else f"docker network {net.name}"
            taken += [subnets.Taken(sub, what) for sub in net.subnets if isinstance(sub, ipaddress.IPv4Network)]
        return taken + subnets.host_networks()

    def _all_networks(self) -> list[NetworkInfo]:
        """Every network the lab's engines have (theirs and other labs'), for choosing a subnet."""
        return self.engine.networks()

    def wait_ready(self, hosts: list[HostStatus]) -> None:
        """Ask every service of ``hosts``, over the lab network, until it answers its protocol."""
        targets: list[str] = []
        for h in hosts:
            for proto, port in h.services:
                # The name server's own parent domain is always one of the zones it serves.
                zone = f":{h.fqdn.partition('.')[2]}" if proto == "dns" else ""
                targets.append(f"{proto}:{h.address}:{port}{zone}")
        if not targets:
            return
        def name_server(among: list[HostStatus]) -> HostStatus | None:
            return next((h for h in among if h.kind == "dns" and h.state == "running"), None)

        # From the hosts just looked at when they hold it (all of `up`'s): one engine call fewer.
        nameserver = name_server(hosts) or name_server(self.status())
        if nameserver is None:
            raise ReadinessError(f"lab {self.name!r} has no running name server to probe from; "
                                 f"see `labctl logs ns --lab {self.name}`")
        started = time.monotonic()
        result = self.exec_in(nameserver, ["python3", "-m", "services", "probe",
                                           "--timeout", str(READY_TIMEOUT), *targets])
        answered = [json.loads(line) for line in result.stdout.decode().splitlines() if line.startswith("{")]
        if result.exit_code != 0:
            failed = [f"{r['target']}: {r['detail']}" for r in answered if not r["ready"]]
            dead = [h for h in self.status() if h.state != "running"]
            detail = "\n  ".join(failed or [result.stderr.decode(errors="replace").strip()])
            hint = ""
            if dead:
                logs = b"".join(self.engine_of(dead[0]).logs(dead[0].container, tail=15)).decode(errors="replace")
                hint = f"\nhost {dead[0].name} is {dead[0].state}; its last log lines:\n{logs}"
            raise ReadinessError(
                f"lab {self.name!r} did not become ready within {READY_TIMEOUT:.0f} s:\n  {detail}{hint}\n"
                f"See `labctl logs HOST --lab {self.name}`."
            )
        last = max(answered, key=lambda r: float(r.get("after", 0.0)), default=None)
        slowest = f"; last {last['target']} after {float(last['after']):.2f} s of probing" if last else ""
        self.report(Stage("ready", f"every service answered ({time.monotonic() - started:.2f} s{slowest})"))

    # -- one host ----------------------------------------------------------------------------

    def stop(self, host: str) -> HostStatus:
        """Stop one host (SIGTERM): its mail stays in its volumes; the others keep running."""
        h = self.find(host)
        self.engine_of(h).stop(h.container, timeout=STOP_TIMEOUT)
        return self.find(host)

    def kill(self, host: str) -> HostStatus:
        """SIGKILL one host: a crash, with no chance to finish anything."""
        h = self.find(host)
        self.engine_of(h).signal(h.container, "SIGKILL")
        return self.find(host)

    def signal(self, host: str, signal: str) -> None:
        """Send ``signal`` (SIGHUP: the name server reloads its zones) to the host's first process."""
        h = self.find(host)
        self.engine_of(h).signal(h.container, signal)

    def start(self, host: str) -> HostStatus:
        """Start a stopped host again and wait until its services answer."""
        h = self.find(host)
        self.engine_of(h).start(h.container)
        h = self.find(host)
        self.wait_ready([h])
        return h

    def disconnect(self, host: str) -> None:
        """Pull the host's cable: off the lab network, still running."""
        h, net = self.find(host), self._lab_network()
        self.engine_of(h).disconnect(h.container, net.id)

    def reconnect(self, host: str) -> None:
        """Plug the cable back: on the lab network at the host's own address and name."""
        h, net = self.find(host), self._lab_network()
        self.engine_of(h).connect(h.container, net.id, h.address, [h.fqdn])

    def _lab_network(self) -> NetworkInfo:
        net = self.network()
        if net is None:
            raise LabNotRunning(f"lab {self.name!r} has no network; bring it up with `labctl up --lab {self.name}`")
        return net

    # -- files -------------------------------------------------------------------------------

    def put_files(self, host: str | HostStatus, folder: str, files: Mapping[str, bytes], *,
                  mtime: float | None = None) -> None:
        """Write ``files`` (path under ``folder`` -> contents) into the host's file system."""
        h = self.find(host) if isinstance(host, str) else host
        self.engine_of(h).put_archive(h.container, folder, tar_of(files, time.time() if mtime is None else mtime))

    def read_files(self, host: HostStatus, folder: str, *, with_data: bool = True) -> list[ArchivedFile]:
        """The regular files in a folder of the host (running or stopped); none if it is missing."""
        try:
            return self.engine_of(host).read_files(host.container, folder, with_data=with_data)
        except NotFound:
            return []

    # -- down --------------------------------------------------------------------------------

    def down(self) -> int:
        """Remove every container, network and volume of this lab. Returns how many containers."""
        containers = self.containers()
        parallel(lambda c: self.engine.remove_container(c.id, stop_timeout=STOP_TIMEOUT), containers)
        for net in self.engine.networks(self._labels()):
            remove_network_when_free(self.engine, net.id)
        for volume in self.engine.volumes(self._labels()):
            self.engine.remove_volume(volume)
        return len(containers)

    # -- using a lab -------------------------------------------------------------------------

    def exec(self, host: str, cmd: list[str], *, privileged: bool = False, stdin: bytes | None = None,
             environment: dict[str, str] | None = None) -> ExecResult:
        """Run ``cmd`` on ``host`` and collect its output."""
        return self.exec_in(self.find(host), cmd, privileged=privileged, stdin=stdin, environment=environment)

    def exec_in(self, host: HostStatus, cmd: list[str], *, privileged: bool = False, stdin: bytes | None = None,
                environment: dict[str, str] | None = None) -> ExecResult:
        """:meth:`exec` on a host already found (no lookup by name)."""
        stdout = io.BytesIO()
        stderr = io.BytesIO()
        code = self.exec_stream(host, cmd, stdout.write, stderr.write, privileged=privileged,
                                stdin=stdin, environment=environment)
        return ExecResult(code, stdout.getvalue(), stderr.getvalue())

    def exec_stream(self, host: HostStatus, cmd: list[str], out: Callable[[bytes], Any],
                    err: Callable[[bytes], Any], *, privileged: bool = False, stdin: bytes | None = None,
                    environment: dict[str, str] | None = None) -> int:
        hold = _HeldErrors(out, err) if privileged else None
        try:
            code = self.engine_of(host).exec(host.container, cmd, hold.out if hold else out,
                                             hold.err if hold else err, privileged=privileged, stdin=stdin,
                                             environment=environment)
            if hold is not None:
                refusal = hold.refusal(code)
                if refusal:
                    raise LabctlError(f"this Docker engine cannot give a command on {host.name} every capability "
                                      f"({refusal}): it runs where some are missing (a VM, docker-in-docker). Lab "
                                      "hosts already have NET_ADMIN, which tc and iptables need: run it without "
                                      "--privileged")
                hold.flush()
            return code
        except EngineError as exc:
            now = next((h for h in self.status() if h.name == host.name), None)
            if now is not None and now.state != "running":  # Docker's own words: "409 ... is not running"
                raise LabNotRunning(f"host {host.name} of lab {self.name!r} is {now.state}; start it with "
                                    f"`labctl start {host.name} --lab {self.name}`") from exc
            raise LabctlError(f"cannot run {cmd[0]} on {host.name}: {exc}") from exc

    def logs(self, host: str, *, follow: bool = False, tail: int | str = "all") -> Iterator[bytes]:
        h = self.find(host)
        yield from self.engine_of(h).logs(h.container, follow=follow, tail=tail)


def list_labs(engine: Engine) -> list[str]:
    names = {c.labels[LABEL_LAB] for c in engine.containers({LABEL_LAB: ""})}
    names |= {n.labels[LABEL_LAB] for n in engine.networks({LABEL_LAB: ""})}
    return sorted(names)
