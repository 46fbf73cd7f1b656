"""Bringing a lab up and down on the Docker Engine, and finding its parts again.

Everything created carries labels (design decision 2): lab name, host, role. Every lookup goes by
label, so `down` is idempotent, a crashed run can be cleaned up, and two labs live side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types

from labctl import zonefiles
from labctl.errors import AddressClash, LabctlError, LabNotRunning, ReadinessError
from labctl.events import Notice, Reporter, Step, ignore
from labctl.topology import HostSpec, Topology, is_reference
from services import config as svc
from services.probe import ROLE_SERVICES

LABEL_LAB = "org.maillab.lab"
LABEL_HOST = "org.maillab.host"
LABEL_ROLE = "org.maillab.role"
LABEL_FQDN = "org.maillab.fqdn"
LABEL_ADDRESS = "org.maillab.address"
LABEL_USER = "org.maillab.user"  # on MUA hosts: the mail address of the host's user
LABEL_CONFIG = "org.maillab.config"  # hash of everything a host was created from

STOP_TIMEOUT = 3  # seconds; services exit on SIGTERM in milliseconds, this is for a stuck one
READY_TIMEOUT = 30.0  # seconds for every service to answer its readiness probe
SUBNET_SEARCH = ipaddress.IPv4Network("10.89.0.0/16")  # where another lab's subnet is looked for

# Volumes keep the MTA queue and the mailboxes across a container restart until `down`.
MAIL_VOLUMES = {"spool": str(svc.SPOOL_DIR), "mail": str(svc.MAIL_DIR)}

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class HostStatus:
    lab: str
    name: str
    fqdn: str
    role: str
    address: str
    state: str  # Docker's: running, exited, ...
    container: str  # container name
    user: str = ""  # on MUA hosts: andy@ouhk.example

    @property
    def kind(self) -> str:
        """The job the host does (dns, mta, mx, mua), whoever's software does it."""
        return svc.role_kind(self.role)

    @property
    def is_reference(self) -> bool:
        """Does a reference peer (Postfix, NSD) do this host's job, rather than our server?"""
        return is_reference(self.role)

    @property
    def ports(self) -> str:
        services = ROLE_SERVICES.get(self.role, ())
        return ", ".join(f"{proto} {port}" for proto, port in services) or "-"


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


def container_name(lab: str, host: str) -> str:
    return f"{lab}-{host}"


def parallel(func: Callable[[T], R], items: list[T]) -> list[R]:
    """Run ``func`` over ``items`` at once; the Engine does the work, we only wait on it."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(len(items), 32)) as pool:
        return list(pool.map(func, items))


class Lab:
    """One lab (one ``--lab NAME``) on one Docker engine."""

    def __init__(self, client: docker.DockerClient, name: str, report: Reporter = ignore) -> None:
        self.client = client
        self.api = client.api
        self.name = name
        self.report = report

    # -- looking things up -------------------------------------------------------------------

    def _filters(self, **extra: str) -> dict[str, list[str]]:
        labels = [f"{LABEL_LAB}={self.name}"] + [f"{k}={v}" for k, v in extra.items()]
        return {"label": labels}

    def containers(self) -> list[dict[str, Any]]:
        return list(self.api.containers(all=True, filters=self._filters()))

    def status(self) -> list[HostStatus]:
        out = []
        for c in self.containers():
            labels = c["Labels"]
            out.append(
                HostStatus(
                    lab=self.name,
                    name=labels.get(LABEL_HOST, "?"),
                    fqdn=labels.get(LABEL_FQDN, "?"),
                    role=labels.get(LABEL_ROLE, "?"),
                    address=labels.get(LABEL_ADDRESS, "?"),
                    state=c["State"],
                    container=c["Names"][0].lstrip("/"),
                    user=labels.get(LABEL_USER, ""),
                )
            )
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

    # -- up ----------------------------------------------------------------------------------

    def up(self, topo: Topology, image: str | Mapping[str, str], *,
           subnet: ipaddress.IPv4Network | None = None) -> list[HostStatus]:
        """Create what is missing, start what is stopped, wait until every service answers.

        ``image`` is the lab image's tag, or a tag per image name (labctl.topology.IMAGES) when
        some hosts run another one (the reference peers). Running it on a lab that is already up
        changes nothing.
        """
        check_lab_name(self.name)
        images = host_images(topo, image)
        existing = {c["Labels"].get(LABEL_HOST): c for c in self.containers()}
        net = self._network()
        if net is not None:
            current = ipaddress.IPv4Network(net["IPAM"]["Config"][0]["Subnet"])
            if subnet is not None and subnet != current:
                raise LabctlError(
                    f"lab {self.name!r} is up on {current}, not {subnet}; "
                    f"run `labctl down --lab {self.name}` first to move it"
                )
            topo = topo.with_subnet(current)
        else:
            topo = topo.with_subnet(self._choose_subnet(topo, subnet))

        configs = {h.name: self._host_files(topo, h) for h in topo.hosts}
        # A host's tmpfs is part of what it was created from (absent: the digest is as before).
        digests = {h.name: _digest(images[h.name], {**configs[h.name], **({"tmpfs": repr(h.tmpfs)} if h.tmpfs else {})})
                   for h in topo.hosts}
        stale = [n for n, c in existing.items() if c["Labels"].get(LABEL_CONFIG) != digests.get(n)]
        if stale:
            raise LabctlError(
                f"lab {self.name!r} is up with a different topology or image (hosts: {', '.join(sorted(stale))}); "
                f"run `labctl down --lab {self.name}` first"
            )
        if net is None:
            self._create_network(topo)
        todo = [h for h in topo.hosts if h.name not in existing or existing[h.name]["State"] != "running"]
        if todo:
            self.report(Step("hosts", f"starting {', '.join(h.name for h in todo)}"))

        def start(host: HostSpec) -> None:
            if host.name not in existing:
                self._create_host(topo, host, images[host.name], configs[host.name], digests[host.name])
            self.api.start(container_name(self.name, host.name))

        parallel(start, todo)
        hosts = self.status()
        self.wait_ready(hosts)
        return hosts

    def _network(self) -> dict[str, Any] | None:
        nets = self.api.networks(filters=self._filters())
        return self.api.inspect_network(nets[0]["Id"]) if nets else None

    def _create_network(self, topo: Topology) -> None:
        name = f"{self.name}-{topo.network}"
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(topo.subnet))])
        try:
            self.api.create_network(
                name, driver="bridge", internal=True, ipam=ipam, labels={LABEL_LAB: self.name},
                check_duplicate=True,
            )
        except docker.errors.APIError as exc:
            raise AddressClash(
                f"cannot create network {name} on {topo.subnet}: {exc.explanation}; "
                "choose another subnet with --subnet"
            ) from exc
        self.report(Step("network", f"{name} {topo.subnet} (internal: no route out)"))

    def _choose_subnet(self, topo: Topology, wanted: ipaddress.IPv4Network | None) -> ipaddress.IPv4Network:
        taken = self._taken_networks()

        def clash(net: ipaddress.IPv4Network) -> str | None:
            for other, owner in taken:
                if net.overlaps(other):
                    return f"{other} ({owner})"
            return None

        if wanted is not None:
            found = clash(wanted)
            if found:
                raise AddressClash(
                    f"subnet {wanted} overlaps {found}; choose a free one with --subnet, "
                    f"e.g. {self._free_subnet(topo, clash)}"
                )
            return wanted
        found = clash(topo.subnet)
        if found is None:
            return topo.subnet
        free = self._free_subnet(topo, clash)
        self.report(Notice(f"{topo.subnet} overlaps {found}; lab {self.name!r} uses {free} instead"))
        return free

    def _free_subnet(
        self, topo: Topology, clash: Callable[[ipaddress.IPv4Network], str | None]
    ) -> ipaddress.IPv4Network:
        for candidate in SUBNET_SEARCH.subnets(new_prefix=topo.subnet.prefixlen):
            if clash(candidate) is None:
                return candidate
        raise AddressClash(f"no free /{topo.subnet.prefixlen} left in {SUBNET_SEARCH}; pass --subnet")

    def _taken_networks(self) -> list[tuple[ipaddress.IPv4Network, str]]:
        taken: list[tuple[ipaddress.IPv4Network, str]] = []
        for net in self.api.networks():
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                try:
                    sub = ipaddress.ip_network(cfg.get("Subnet", ""), strict=False)
                except ValueError:
                    continue
                if isinstance(sub, ipaddress.IPv4Network):
                    owner = net.get("Labels", {}) or {}
                    what = f"lab {owner[LABEL_LAB]!r}" if LABEL_LAB in owner else f"docker network {net['Name']}"
                    taken.append((sub, what))
        taken += [(n, "this machine's network") for n in host_networks()]
        return taken

    def _host_files(self, topo: Topology, host: HostSpec) -> dict[str, str]:
        """The files a host's services read under /etc: its lab.json, and zone files on the DNS host.

        They travel in the container's environment and the role writes them at start
        (services.config.materialize_files): copying them in with the Engine's archive upload
        mounted each container's file system and cost about 0.15 s on the way to `up`.
        """
        files = {"maillab/lab.json": topo.lab_config(self.name, host).to_json()}
        if host.kind == "dns":
            for fname, text in zonefiles.render(topo).items():
                files[f"maillab/zones/{fname}"] = text
        return files

    def _create_host(self, topo: Topology, host: HostSpec, image: str, files: dict[str, str], digest: str) -> None:
        name = container_name(self.name, host.name)
        labels = dict(host.labels)
        labels.update({
            LABEL_LAB: self.name, LABEL_HOST: host.name, LABEL_ROLE: host.role,
            LABEL_FQDN: host.fqdn, LABEL_ADDRESS: str(host.address), LABEL_CONFIG: digest,
        })
        if "MAIL_USER" in host.env:
            labels[LABEL_USER] = host.env["MAIL_USER"]
        binds = {}
        tmpfs = dict(host.tmpfs)  # topology `tmpfs:`: a small RAM disk replaces that volume
        if host.kind in ("mta", "mx"):
            for kind, path in MAIL_VOLUMES.items():
                if path in tmpfs:
                    continue
                volume = f"{name}-{kind}"
                self.api.create_volume(volume, labels={LABEL_LAB: self.name, LABEL_HOST: host.name})
                binds[volume] = {"bind": path, "mode": "rw"}
        host_config = self.api.create_host_config(
            binds=binds,
            tmpfs=tmpfs or None,
            # NET_ADMIN lets the host drop the default route Docker gives it (the seal, see
            # services.runtime.join_lab) and lets fault scenarios shape traffic with tc/iptables
            # inside the host's own namespace; the host's own interface is all it can touch.
            cap_add=["NET_ADMIN"],
            dns=[str(topo.nameserver.address)],
            dns_search=[host.fqdn.partition(".")[2]],
        )
        net = f"{self.name}-{topo.network}"
        networking = self.api.create_networking_config({
            net: self.api.create_endpoint_config(ipv4_address=str(host.address), aliases=[host.fqdn])
        })
        self.api.create_container(
            image, command=[host.role], name=name, hostname=host.fqdn, labels=labels,
            environment={**dict(host.environment), svc.FILES_ENV: svc.encode_files(files)},
            host_config=host_config, networking_config=networking,
            stop_signal="SIGTERM", stop_timeout=STOP_TIMEOUT, detach=True,
        )

    def wait_ready(self, hosts: list[HostStatus]) -> None:
        """Ask every service of ``hosts``, over the lab network, until it answers its protocol."""
        targets: list[str] = []
        for h in hosts:
            for proto, port in ROLE_SERVICES[h.role]:
                # The name server's own parent domain is always one of the zones it serves.
                zone = f":{h.fqdn.partition('.')[2]}" if proto == "dns" else ""
                targets.append(f"{proto}:{h.address}:{port}{zone}")
        if not targets:
            return
        nameserver = next((h for h in self.status() if h.kind == "dns" and h.state == "running"), None)
        if nameserver is None:
            raise ReadinessError(f"lab {self.name!r} has no running name server to probe from; "
                                 f"see `labctl logs ns --lab {self.name}`")
        started = time.monotonic()
        result = self.exec(nameserver.name, ["python3", "-m", "services", "probe",
                                             "--timeout", str(READY_TIMEOUT), *targets])
        if result.exit_code != 0:
            lines = [json.loads(line) for line in result.stdout.decode().splitlines() if line.startswith("{")]
            failed = [f"{r['target']}: {r['detail']}" for r in lines if not r["ready"]]
            dead = [h for h in self.status() if h.state != "running"]
            detail = "\n  ".join(failed or [result.stderr.decode(errors="replace").strip()])
            hint = ""
            if dead:
                logs = self.api.logs(dead[0].container, tail=15).decode(errors="replace")
                hint = f"\nhost {dead[0].name} is {dead[0].state}; its last log lines:\n{logs}"
            raise ReadinessError(
                f"lab {self.name!r} did not become ready within {READY_TIMEOUT:.0f} s:\n  {detail}{hint}\n"
                f"See `labctl logs HOST --lab {self.name}`."
            )
        self.report(Step("ready", f"every service answered ({time.monotonic() - started:.2f} s)"))

    # -- one host ----------------------------------------------------------------------------

    def stop(self, host: str) -> HostStatus:
        """Stop one host (SIGTERM): its mail stays in its volumes; the others keep running."""
        h = self.find(host)
        self.api.stop(h.container, timeout=STOP_TIMEOUT)
        return self.find(host)

    def kill(self, host: str) -> HostStatus:
        """SIGKILL one host: a crash, with no chance to finish anything."""
        h = self.find(host)
        self.api.kill(h.container)
        return self.find(host)

    def start(self, host: str) -> HostStatus:
        """Start a stopped host again and wait until its services answer."""
        h = self.find(host)
        self.api.start(h.container)
        h = self.find(host)
        self.wait_ready([h])
        return h

    # -- down --------------------------------------------------------------------------------

    def down(self) -> int:
        """Remove every container, network and volume of this lab. Returns how many containers."""
        containers = self.containers()

        def remove(c: dict[str, Any]) -> None:
            try:
                if c["State"] == "running":
                    self.api.stop(c["Id"], timeout=STOP_TIMEOUT)
                self.api.remove_container(c["Id"], v=True, force=True)
            except docker.errors.NotFound:
                pass  # removed by someone else meanwhile: that is what we wanted
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: another `down` is removing it right now
                    raise
                with contextlib.suppress(docker.errors.NotFound):
                    self.api.wait(c["Id"], condition="removed", timeout=STOP_TIMEOUT * 10)

        parallel(remove, containers)
        for net in self.api.networks(filters=self._filters()):
            try:
                self.api.remove_network(net["Id"])
            except docker.errors.NotFound:
                pass
        volumes = self.api.volumes(filters=self._filters()).get("Volumes") or []
        for vol in volumes:
            try:
                self.api.remove_volume(vol["Name"], force=True)
            except docker.errors.NotFound:
                pass
        return len(containers)

    # -- using a lab -------------------------------------------------------------------------

    def exec(self, host: str, cmd: list[str], *, privileged: bool = False, stdin: bytes | None = None,
             environment: dict[str, str] | None = None) -> ExecResult:
        """Run ``cmd`` on ``host`` and collect its output."""
        return self.exec_in(self.find(host).container, cmd, privileged=privileged, stdin=stdin,
                             environment=environment)

    def exec_in(self, container: str, cmd: list[str], *, privileged: bool = False, stdin: bytes | None = None,
                 environment: dict[str, str] | None = None) -> ExecResult:
        """:meth:`exec` in a container already found (no lookup of the host by name)."""
        stdout = io.BytesIO()
        stderr = io.BytesIO()
        code = self.exec_stream(container, cmd, stdout.write, stderr.write, privileged=privileged,
                                stdin=stdin, environment=environment)
        return ExecResult(code, stdout.getvalue(), stderr.getvalue())

    def exec_stream(self, container: str, cmd: list[str], out: Callable[[bytes], Any],
                    err: Callable[[bytes], Any], *, privileged: bool = False, stdin: bytes | None = None,
                    environment: dict[str, str] | None = None) -> int:
        try:
            ex = self.api.exec_create(container, cmd, stdout=True, stderr=True, stdin=stdin is not None,
                                      privileged=privileged, environment=environment)
        except docker.errors.APIError as exc:
            raise LabctlError(f"cannot run {cmd[0]} on {container}: {exc.explanation}") from exc
        if stdin is not None:
            sock = self.api.exec_start(ex["Id"], socket=True)
            raw = getattr(sock, "_sock", sock)
            raw.sendall(stdin)
            raw.shutdown(socket.SHUT_WR)
            for stream, chunk in _demux(raw):
                (out if stream == 1 else err)(chunk)
            raw.close()
        else:
            for o, e in self.api.exec_start(ex["Id"], stream=True, demux=True):
                if o:
                    out(o)
                if e:
                    err(e)
        return int(self.api.exec_inspect(ex["Id"])["ExitCode"] or 0)

    def logs(self, host: str, *, follow: bool = False, tail: int | str = "all") -> Iterator[bytes]:
        h = self.find(host)
        if follow:
            yield from self.api.logs(h.container, stream=True, follow=True, tail=tail)
        else:
            yield self.api.logs(h.container, tail=tail)


def host_images(topo: Topology, image: str | Mapping[str, str]) -> dict[str, str]:
    """Host name -> the tag of the image it runs."""
    tags = {"lab": image} if isinstance(image, str) else dict(image)
    missing = sorted({h.image for h in topo.hosts} - set(tags))
    if missing:
        users = ", ".join(h.name for h in topo.hosts if h.image in missing)
        raise LabctlError(f"hosts {users} run the {' and '.join(missing)} image, which was not given; "
                          "`labctl up` builds it, or run `labctl image build --reference`")
    return {h.name: tags[h.image] for h in topo.hosts}


def list_labs(client: docker.DockerClient) -> list[str]:
    names = {c["Labels"][LABEL_LAB] for c in client.api.containers(all=True, filters={"label": LABEL_LAB})}
    names |= {n["Labels"][LABEL_LAB] for n in client.api.networks(filters={"label": LABEL_LAB})}
    return sorted(names)


def host_networks(route_table: Path = Path("/proc/net/route"),
                  resolv_conf: Path = Path("/etc/resolv.conf")) -> list[ipaddress.IPv4Network]:
    """Networks this machine routes to directly, and its name servers.

    A lab subnet over one of them would hide it behind the lab bridge: the machine would lose its
    own LAN or its DNS. (When the engine is remote this is merely conservative.)
    """
    nets: list[ipaddress.IPv4Network] = []
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "00000000":
            continue  # the default route covers everything; it is not a clash
        dest = ipaddress.IPv4Address(struct.pack("<I", int(fields[1], 16)))
        mask = ipaddress.IPv4Address(struct.pack("<I", int(fields[7], 16)))
        try:
            nets.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
        except ValueError:
            continue
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    nets.append(ipaddress.IPv4Network(f"{parts[1]}/32"))
                except ValueError:
                    continue
    except OSError:
        pass
    return nets


def _digest(image: str, files: dict[str, str]) -> str:
    h = hashlib.sha256(image.encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode())
    return h.hexdigest()[:16]


def _demux(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Docker's multiplexed exec stream: 8-byte header (stream, 0, 0, 0, size) then the data."""
    def read(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return buf
            buf += chunk
        return buf

    while True:
        header = read(8)
        if len(header) < 8:
            return
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        yield stream, read(size)
