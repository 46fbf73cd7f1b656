"""Docker engines in containers on this machine, to try labs across engines here (issue 16).

``labctl cluster create --nodes N`` starts N nodes: containers of the node image (Debian's
docker.io FROM the lab's base, :meth:`labctl.image.ImageBuilder.ensure_node`) on a bridge of their
own, each running dockerd on ``tcp://ADDR:2376`` with TLS both ways (a CA of the cluster's own;
labctl's client certificate beside the engines file). It joins them in a Swarm inside those containers
(node1 the manager: the machine's own engine never enters swarm mode), copies the lab image into
each over the Engine API (``docker save | docker load``, no registry), and writes an engines file
naming them, which labctl then uses by default. ``labctl cluster delete`` removes every container,
volume and network carrying the cluster's label, that engines file and the client certificate.

The node's container settings were found by hand on a VM whose bounding set lacks
CAP_SYS_RESOURCE, where ``--privileged`` is refused: every other capability, seccomp, AppArmor and
the masked /proc and /sys paths unconfined, and every device allowed by the device cgroup (dockerd
makes /dev/net/tun, loop and the like for its containers). The node's entrypoint remounts its
cgroups read-write (compose/node/entrypoint).

The choices (names, addresses, container specs, the engines file) are pure functions; ``create``,
``delete`` and ``status`` are the shell around them.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labctl import enginesfile, image, subnets
from labctl.backend import ContainerInfo, ContainerSpec, Engine, EngineError, SwarmState
from labctl.enginesfile import DEFAULT_CAPACITY, EngineEntry, Engines, EngineTls
from labctl.errors import DockerUnavailable, LabctlError
from labctl.events import Notice, Reporter, Stage, ignore
from labctl.lab import parallel, tar_of

# Certificates are made by `cluster create` only; the parser imports this module for its defaults,
# so every other command would pay for cryptography's x509 (about 40 ms).
if TYPE_CHECKING:
    from labctl import tlsca

DEFAULT_PREFIX = "maillab-node"
PREFIX = re.compile(r"[a-z][a-z0-9-]{0,29}")  # room for "<prefix>8-docker" in Docker's names
MAX_NODES = 8  # each node is a whole dockerd holding a copy of the lab image (~400 MB of disk)

LABEL_CLUSTER = "org.maillab.cluster"  # on every container, volume and network of a cluster: its prefix
LABEL_NODE = "org.maillab.node"  # on a node's container: its engine name (node1, node2, ...)
LABEL_NODE_ADDRESS = "org.maillab.node-address"

# The nodes' bridge: a /24 in 10.88.0.0/16, away from the build host's 192.0.2.0/24, 203.0.113.0/24
# and 10.255.0.0/16, and from the labs' 10.89.0.0/16. Node i is host FIRST_HOST + i on it.
NODE_SEARCH = ipaddress.IPv4Network("10.88.0.0/16")
NODE_PREFIXLEN = 24
FIRST_HOST = 10
# dockerd's socket in a node: TLS both ways (--tlsverify) with the cluster's own CA. An Engine API
# that answers anyone is root on the node for anyone who reaches it, bridge or not.
DOCKER_PORT = 2376
TLS_DAYS = 90  # the cluster's CA and certificates; a cluster older than that is made again
NODE_TLS_DIR = "/etc/maillab-node-tls"  # in a node: ca.pem, server.pem, server-key.pem (the entrypoint's)
# The overlays Swarm makes come from here: its default 10.0.0.0/8 overlaps the labs' 10.89.0.0/16.
SWARM_POOL = "10.87.0.0/16"

NODE_START_TIMEOUT = 60.0  # seconds for every node's dockerd to answer (about 2 s each, measured)
SWARM_TIMEOUT = 30.0  # seconds for every worker to be listed ready by the manager
POLL = 0.25
STOP_TIMEOUT = 1  # seconds: a node being deleted has nothing to save, its containers go with it
# --in-memory: each node's /var/lib/docker on a tmpfs instead of a volume. The lab image loaded into
# two nodes in 10-12 s against 16 s so (README, "Several engines on one machine"); it costs the
# memory of what the node holds, as it fills: 0.5 GB with the lab image, plus what its labs write
# (each host's capture ring is up to 64 MB). The size is a ceiling, not a reservation. exec, dev
# and suid as on a disk: the node's containers run their programs from there.
IN_MEMORY_STORE = "rw,exec,dev,suid,size=4g"
DOCKER_ROOT = "/var/lib/docker"


@dataclass(frozen=True)
class Node:
    name: str  # its engine name in the engines file (node1)
    container: str  # its container on this machine (maillab-node1)
    address: str  # on the nodes' bridge

    @property
    def url(self) -> str:
        return f"tcp://{self.address}:{DOCKER_PORT}"


@dataclass(frozen=True)
class Cluster:
    prefix: str
    nodes: tuple[Node, ...]
    network: str
    subnet: ipaddress.IPv4Network
    engines_file: Path
    lab_image: str
    seconds: float


@dataclass(frozen=True)
class Removed:
    containers: int
    volumes: int
    networks: int
    engines_file: Path | None  # the engines file removed, if it was this cluster's

    @property
    def anything(self) -> bool:
        return bool(self.containers or self.volumes or self.networks or self.engines_file)


@dataclass(frozen=True)
class NodeStatus:
    node: Node
    state: str  # the container's: running, exited, ...
    swarm: SwarmState | None = None  # None: the node's engine did not answer (error says why)
    images: tuple[str, ...] = ()
    error: str | None = None

    @property
    def role(self) -> str:
        if self.swarm is None or self.swarm.state != "active":
            return "-"
        return "manager" if self.swarm.manager else "worker"


Connect = Callable[[str, EngineTls], Engine]


def _connect(url: str, tls: EngineTls) -> Engine:
    from labctl.backend.docker_engine import connect

    return connect(url, tls=tls)


def tls_dir(engines_path: Path, prefix: str) -> Path:
    """Where labctl's client certificate for the cluster's nodes is kept: beside its engines file."""
    return engines_path.parent / f"{prefix}-tls"


def client_tls(engines_path: Path, prefix: str) -> EngineTls:
    folder = tls_dir(engines_path, prefix)
    return EngineTls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


@dataclass(frozen=True)
class NodeTls:
    """The cluster's CA, each node's server certificate (its container name and address) and
    labctl's client certificate; made at create, the CA's key kept nowhere."""

    ca: tlsca.Issued
    servers: dict[str, tlsca.Issued]
    client: tlsca.Issued

    def node_files(self, node: Node) -> dict[str, bytes]:
        server = self.servers[node.name]
        return {f"{NODE_TLS_DIR}/ca.pem": self.ca.cert_pem.encode(), f"{NODE_TLS_DIR}/server.pem":
                server.cert_pem.encode(), f"{NODE_TLS_DIR}/server-key.pem": server.key_pem.encode()}


def make_tls(prefix: str, nodes: Sequence[Node]) -> NodeTls:
    from labctl import tlsca

    ca = tlsca.make_ca(f"cluster {prefix}", (), days=TLS_DAYS)
    return NodeTls(ca, {n.name: tlsca.make_leaf(ca, n.container, [n.address], days=TLS_DAYS) for n in nodes},
                   tlsca.make_leaf(ca, "labctl", days=TLS_DAYS, client=True))


def write_client_tls(engines_path: Path, prefix: str, tls: NodeTls) -> EngineTls:
    """labctl's side of the nodes' TLS, readable by its owner only (the key opens every node)."""
    files = client_tls(engines_path, prefix)
    files.ca.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, text in ((files.ca, tls.ca.cert_pem), (files.cert, tls.client.cert_pem), (files.key, tls.client.key_pem)):
        path.touch(mode=0o600)
        path.write_text(text, encoding="ascii")
    return files


# -- the pure choices ------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str:
    if not PREFIX.fullmatch(prefix):
        raise LabctlError(f"{prefix!r} is not a cluster name: up to 30 lower-case letters, digits and '-', "
                          f"beginning with a letter (the default is {DEFAULT_PREFIX})")
    return prefix


def check_count(nodes: int) -> int:
    if not 1 <= nodes <= MAX_NODES:
        raise LabctlError(f"--nodes {nodes}: a cluster on one machine has 1 to {MAX_NODES} nodes (each is a "
                          "Docker engine with its own copy of the lab image); 2 show everything")
    return nodes


def network_name(prefix: str) -> str:
    return f"{prefix}-net"


def plan_nodes(prefix: str, subnet: ipaddress.IPv4Network, count: int) -> tuple[Node, ...]:
    return tuple(Node(f"node{i}", f"{prefix}{i}", str(subnet.network_address + FIRST_HOST + i))
                 for i in range(1, count + 1))


def node_spec(prefix: str, node: Node, node_image: str, *, in_memory: bool = False) -> ContainerSpec:
    """The container of one node: a dockerd that may make containers, without --privileged."""
    labels = {LABEL_CLUSTER: prefix}
    # A volume (or a tmpfs), not the container's own overlay file system: overlay2 cannot sit on overlayfs.
    volumes = {} if in_memory else {f"{node.container}-docker": DOCKER_ROOT}
    tmpfs = {DOCKER_ROOT: IN_MEMORY_STORE} if in_memory else {}
    return ContainerSpec(
        name=node.container, image=node_image, command=(), hostname=node.name,
        labels={**labels, LABEL_NODE: node.name, LABEL_NODE_ADDRESS: node.address},
        environment={}, network=network_name(prefix), address=node.address,
        volumes=volumes, volume_labels=labels, tmpfs=tmpfs,
        cap_add=("ALL",), cap_drop=("SYS_RESOURCE",),  # what --privileged would give, less what the VM lacks
        security_opt=("seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"),
        device_cgroup_rules=("c *:* rwm", "b *:* rwm"),
        stop_timeout=STOP_TIMEOUT,
    )


def node_capacity(count: int) -> int:
    """Labs per node: the nodes share one machine, so they share what one engine would hold."""
    return max(1, DEFAULT_CAPACITY // count)


def cluster_engines(path: Path, prefix: str, nodes: Sequence[Node]) -> Engines:
    """The engines file of a cluster: every node (TLS with labctl's client certificate), node1 the
    Swarm manager, and whose it is."""
    capacity = node_capacity(len(nodes))
    tls = client_tls(path, prefix)
    return Engines(path, tuple(EngineEntry(n.name, n.url, capacity, tls) for n in nodes), manager=nodes[0].name,
                   cluster=prefix)


def check_engines_file(existing: Engines | None, prefix: str) -> None:
    """Refuse to write over an engines file that is not this cluster's own."""
    if existing is None or existing.cluster == prefix:
        return
    if existing.cluster is None:
        raise LabctlError(
            f"{existing.path} is an engines file of your own (it has no `cluster:` key), and "
            "`labctl cluster create` will not write over it. Give the cluster a file of its own with "
            "--engines FILE (or $LABCTL_ENGINES), or move yours away first")
    raise LabctlError(
        f"{existing.path} belongs to cluster {existing.cluster!r}; remove it with "
        f"`labctl cluster delete --name {existing.cluster}`, or give this cluster another file with --engines FILE")


def taken_networks(engine: Engine) -> list[subnets.Taken]:
    taken = [subnets.Taken(sub, f"docker network {net.name}") for net in engine.networks()
             for sub in net.subnets if isinstance(sub, ipaddress.IPv4Network)]
    return taken + subnets.host_networks()


# -- the shell -------------------------------------------------------------------------------------


def create(engine: Engine, nodes: int, *, prefix: str = DEFAULT_PREFIX, engines_path: Path,
           in_memory: bool = False, report: Reporter = ignore, connect: Connect = _connect) -> Cluster:
    """Start ``nodes`` nodes, join them in a Swarm, give each the lab image, write the engines file.

    ``in_memory``: each node keeps its images and containers on a tmpfs (:data:`IN_MEMORY_STORE`).

    On any failure everything made so far is removed again before the error is raised.
    """
    started = time.monotonic()
    check_prefix(prefix)
    check_count(nodes)
    check_engines_file(_read(engines_path), prefix)
    labels = {LABEL_CLUSTER: prefix}
    if engine.containers(labels) or engine.networks(labels):
        raise LabctlError(f"cluster {prefix!r} exists already (see `labctl cluster status --name {prefix}`); "
                          f"remove it with `labctl cluster delete --name {prefix}`, or name another with --name")
    builder = image.ImageBuilder(engine, report)
    node_image = builder.ensure_node()
    lab_image = builder.ensure()
    subnet = subnets.free_subnet(NODE_PREFIXLEN, taken_networks(engine), NODE_SEARCH)
    planned = plan_nodes(prefix, subnet, nodes)
    mark = time.monotonic()
    try:
        # Internal: the nodes reach each other and this machine reaches them, nothing else does;
        # they need no registry, the images are copied in.
        engine.create_network(network_name(prefix), subnet, labels)
        tls = make_tls(prefix, planned)
        client = write_client_tls(engines_path, prefix, tls)

        def start(node: Node) -> Engine:
            engine.create_container(node_spec(prefix, node, node_image, in_memory=in_memory))
            engine.put_archive(node.container, "/", tar_of(tls.node_files(node), time.time()))
            engine.start(node.container)
            return _wait_for_engine(engine, node, client, connect, time.monotonic() + NODE_START_TIMEOUT)

        clients = parallel(start, list(planned))
        report(Stage("nodes", f"{', '.join(n.container for n in planned)} on {network_name(prefix)} {subnet}, "
                              f"their engines answer ({time.monotonic() - mark:.1f} s)"))
        mark = time.monotonic()
        _make_swarm(planned, clients)
        report(Stage("swarm", f"{planned[0].name} manager, {len(planned) - 1} worker(s); overlays from "
                              f"{SWARM_POOL} ({time.monotonic() - mark:.1f} s)"))
        mark = time.monotonic()
        parallel(lambda c: image.push(engine, c, lab_image), clients)
        report(Stage("image", f"{lab_image} loaded into {len(clients)} node(s) ({time.monotonic() - mark:.1f} s)"))
        path = enginesfile.save(cluster_engines(engines_path, prefix, planned))
        report(Stage("engines", f"{path} names {', '.join(n.name for n in planned)} (removed by "
                                "`labctl cluster delete`)"))
    except BaseException:
        report(Notice(f"cluster create failed: removing the nodes of {prefix!r} again"))
        try:
            _remove(engine, prefix)
            shutil.rmtree(tls_dir(engines_path, prefix), ignore_errors=True)
        except LabctlError as cleanup:  # the first failure is the one to tell; this one, as a notice
            report(Notice(f"could not remove everything ({cleanup}); `labctl cluster delete --name {prefix}` "
                          "tries again"))
        raise
    return Cluster(prefix, planned, network_name(prefix), subnet, path, lab_image, time.monotonic() - started)


def _wait_for_engine(engine: Engine, node: Node, tls: EngineTls, connect: Connect, deadline: float) -> Engine:
    """The node's dockerd, once it answers; if its container dies first, why (its last log lines)."""
    while True:
        try:
            return connect(node.url, tls)
        except DockerUnavailable as exc:
            problem = str(exc).splitlines()[0]
        found = [c for c in engine.containers({LABEL_NODE: node.name}) if c.name == node.container]
        if not found or found[0].state != "running":
            tail = b"".join(engine.logs(node.container, tail=15)).decode(errors="replace") if found else ""
            raise LabctlError(f"node {node.container} stopped before its engine answered "
                              f"({found[0].state if found else 'gone'}); its last lines:\n{tail}")
        if time.monotonic() > deadline:
            raise LabctlError(f"the engine of node {node.container} did not answer on {node.url} within "
                              f"{NODE_START_TIMEOUT:.0f} s ({problem}); see `docker logs {node.container}`. "
                              "labctl must run where the nodes' bridge is reachable: on the engine's own "
                              "machine, not in a VM or container away from it")
        time.sleep(POLL)


def _make_swarm(nodes: Sequence[Node], clients: Sequence[Engine]) -> None:
    manager, address = clients[0], nodes[0].address
    manager.swarm_init(address, SWARM_POOL)
    token = manager.swarm_worker_token()
    workers = list(zip(clients[1:], nodes[1:], strict=True))
    parallel(lambda pair: pair[0].swarm_join(address, token, pair[1].address), workers)
    deadline = time.monotonic() + SWARM_TIMEOUT
    while True:
        members = manager.swarm_nodes()
        if len(members) == len(nodes) and all(m.state == "ready" for m in members):
            return
        if time.monotonic() > deadline:
            seen = ", ".join(f"{m.hostname} {m.state}" for m in members)
            raise LabctlError(f"the Swarm of {nodes[0].container} lists {seen or 'no node'} after "
                              f"{SWARM_TIMEOUT:.0f} s, not {len(nodes)} ready nodes")
        time.sleep(POLL)


def delete(engine: Engine, *, prefix: str = DEFAULT_PREFIX, engines_path: Path,
           report: Reporter = ignore) -> Removed:
    """Remove the cluster: its containers, volumes and network, and its engines file. Idempotent."""
    started = time.monotonic()
    check_prefix(prefix)
    containers, volumes, networks = _remove(engine, prefix)
    removed_file = None
    existing = _read(engines_path, report)
    if existing is not None:
        if existing.cluster == prefix:
            engines_path.unlink(missing_ok=True)
            shutil.rmtree(tls_dir(engines_path, prefix), ignore_errors=True)
            removed_file = engines_path
        else:
            whose = f"cluster {existing.cluster!r}'s" if existing.cluster else "your own (no `cluster:` key)"
            report(Notice(f"left {engines_path}: it is {whose}, not cluster {prefix!r}'s"))
    removed = Removed(containers, volumes, networks, removed_file)
    if removed.anything:
        report(Stage("deleted", f"cluster {prefix!r}: {containers} node(s), {volumes} volume(s), {networks} "
                                f"network(s){', ' + str(removed_file) if removed_file else ''} "
                                f"({time.monotonic() - started:.1f} s)"))
    return removed


def _remove(engine: Engine, prefix: str) -> tuple[int, int, int]:
    labels = {LABEL_CLUSTER: prefix}
    containers = engine.containers(labels)
    parallel(lambda c: engine.remove_container(c.id, stop_timeout=STOP_TIMEOUT), containers)
    volumes = engine.volumes(labels)
    for volume in volumes:
        engine.remove_volume(volume)
    networks = engine.networks(labels)
    for net in networks:
        engine.remove_network(net.id)
    return len(containers), len(volumes), len(networks)


def _read(path: Path, report: Reporter | None = None) -> Engines | None:
    """The engines file at ``path``, or None. One that does not parse is an error (``report`` None:
    create, which must not write over it), or reported and left alone (delete)."""
    if not path.exists():
        return None
    try:
        return enginesfile.parse(path, path.read_text(encoding="utf-8"))
    except LabctlError as exc:
        if report is None:
            raise LabctlError(f"{exc}\n(`labctl cluster create` will not write over an engines file it cannot "
                              "read; fix it, or give the cluster another with --engines FILE)") from exc
        report(Notice(f"left {path}: it does not parse, so it is not this cluster's ({exc})"))
        return None


def nodes_of(engine: Engine, prefix: str = DEFAULT_PREFIX) -> list[tuple[Node, ContainerInfo]]:
    """The cluster's nodes on this machine, in order, with their containers."""
    found = []
    for c in engine.containers({LABEL_CLUSTER: prefix}):
        name, address = c.labels.get(LABEL_NODE), c.labels.get(LABEL_NODE_ADDRESS)
        if name and address:
            found.append((Node(name, c.name, address), c))
    return sorted(found, key=lambda pair: int(pair[0].name.removeprefix("node") or 0))


def status(engine: Engine, *, prefix: str = DEFAULT_PREFIX, engines_path: Path,
           connect: Connect = _connect) -> list[NodeStatus]:
    """Every node: its container's state and, from its own engine, its Swarm role and images."""
    check_prefix(prefix)
    tls = client_tls(engines_path, prefix)

    def ask(pair: tuple[Node, ContainerInfo]) -> NodeStatus:
        node, container = pair
        if container.state != "running":
            return NodeStatus(node, container.state)
        try:
            client = connect(node.url, tls)
            return NodeStatus(node, container.state, client.swarm_state(),
                              tuple(sorted(t for i in client.images() for t in i.tags)))
        except (DockerUnavailable, EngineError) as exc:
            return NodeStatus(node, container.state, error=str(exc).splitlines()[0])

    return parallel(ask, nodes_of(engine, prefix))
