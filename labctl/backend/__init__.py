"""The one door from labctl to a container engine: an interface, and what crosses it.

:class:`Engine` is everything labctl asks of an engine, in labctl's terms (a container to create
is a :class:`ContainerSpec`, a network an internal bridge on a subnet); the Docker Engine API
implementation is :class:`labctl.backend.docker.DockerEngine`, the only module of labctl that
imports the docker SDK. :class:`labctl.lab.Lab` asks for each host's engine by host
(:meth:`labctl.lab.Lab.engine_of`), so a lab whose hosts live on several engines (the
multi-machine issue) is a second implementation of this interface, not a change to its users.

Errors: an engine raises :class:`EngineError` (a :class:`~labctl.errors.LabctlError` whose text is
the engine's own explanation) and :class:`NotFound` for a container, network, volume, image or
path that is not there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from labctl.errors import LabctlError


class EngineError(LabctlError):
    """The engine refused or failed a request; the text is its explanation."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the engine's HTTP status, when it has one (409: conflict)


class NotFound(EngineError):
    """No such container, network, volume, image or path."""


Labels = Mapping[str, str]


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    labels: Labels
    state: str  # running, exited, created, ...
    image_id: str
    exit_code: int | None = None  # when exited: its exit status (137: killed by SIGKILL)


@dataclass(frozen=True)
class NetworkInfo:
    id: str
    name: str
    labels: Labels
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    internal: bool
    driver: str = "bridge"  # "overlay": a Swarm network spanning engines (a split lab's)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    labels: Labels


@dataclass(frozen=True)
class SwarmState:
    """An engine's own view of its Swarm membership (`docker info`'s Swarm section)."""

    state: str  # inactive, pending, active, error, locked
    node_id: str = ""
    cluster_id: str = ""  # the same on every member of one Swarm (empty on a worker: ask a manager)
    manager: bool = False


@dataclass(frozen=True)
class SwarmNode:
    """A member of the Swarm, as its manager lists it."""

    id: str
    hostname: str
    role: str  # manager, worker
    state: str  # ready, down, unknown
    address: str


@dataclass(frozen=True)
class ArchivedFile:
    """A regular file read out of a container's file system."""

    name: str  # its name, without the folder
    size: int
    mtime: float
    data: bytes  # empty when only the listing was asked for


@dataclass(frozen=True)
class ContainerSpec:
    """One container to create: everything the engine needs, nothing it must look up."""

    name: str
    image: str
    command: tuple[str, ...]
    hostname: str
    labels: Labels
    environment: Mapping[str, str]
    network: str  # the network (by name) it is attached to at creation
    address: str  # its static IPv4 address there
    aliases: tuple[str, ...] = ()
    volumes: Mapping[str, str] = field(default_factory=dict)  # volume name -> mount path (created first)
    volume_labels: Labels = field(default_factory=dict)
    tmpfs: Mapping[str, str] = field(default_factory=dict)  # mount path -> options
    cap_add: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 3
    # What a cluster node (a Docker engine in a container, labctl.cluster) needs, short of
    # --privileged: capabilities to drop after cap_add, "seccomp=unconfined" and the like, and
    # device cgroup rules ("c *:* rwm").
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    device_cgroup_rules: tuple[str, ...] = ()


Output = Callable[[bytes], Any]


class Engine(Protocol):
    """What labctl asks of a container engine."""

    where: str  # for messages: the engine's address (unix:///var/run/docker.sock, tcp://node2:2375)

    # -- looking things up ------------------------------------------------------------------------
    def containers(self, labels: Labels | None = None) -> list[ContainerInfo]: ...
    def networks(self, labels: Labels | None = None) -> list[NetworkInfo]: ...
    def volumes(self, labels: Labels) -> list[str]: ...

    # -- making and removing ----------------------------------------------------------------------
    def create_network(self, name: str, subnet: ipaddress.IPv4Network, labels: Labels, *,
                       overlay_range: ipaddress.IPv4Network | None = None) -> None:
        """An internal network on ``subnet``: a bridge, or with ``overlay_range`` an attachable
        Swarm overlay whose engines take their own addresses from that range (a manager only)."""
    def remove_network(self, ident: str) -> None: ...
    def create_container(self, spec: ContainerSpec) -> None: ...
    def remove_container(self, ident: str, *, stop_timeout: int) -> None: ...
    def remove_volume(self, name: str) -> None: ...

    # -- running ----------------------------------------------------------------------------------
    def start(self, container: str) -> None: ...
    def stop(self, container: str, *, timeout: int) -> None: ...
    def signal(self, container: str, signal: str) -> None: ...
    def exec(self, container: str, cmd: Sequence[str], out: Output, err: Output, *, privileged: bool = False,
             stdin: bytes | None = None, environment: Mapping[str, str] | None = None) -> int: ...
    def logs(self, container: str, *, follow: bool = False, tail: int | str = "all") -> Iterator[bytes]: ...

    # -- files and cables -------------------------------------------------------------------------
    def read_files(self, container: str, folder: str, *, with_data: bool = True) -> list[ArchivedFile]: ...
    def put_archive(self, container: str, folder: str, tar: bytes) -> None: ...
    def disconnect(self, container: str, network: str) -> None: ...
    def connect(self, container: str, network: str, address: str, aliases: Sequence[str]) -> None: ...

    # -- images -----------------------------------------------------------------------------------
    def image_id(self, ref: str) -> str | None: ...
    def images(self) -> list[ImageInfo]: ...
    def remove_image(self, ref: str) -> None: ...
    def pull(self, ref: str) -> str: ...
    def build(self, context_tar: bytes, tag: str, buildargs: Mapping[str, str],
              labels: Labels) -> Iterator[dict[str, Any]]: ...
    def import_image(self, tarball: str, repository: str, tag: str, changes: Sequence[str]) -> None: ...
    def tag(self, ref: str, repository: str, tag: str) -> None: ...
    def save_image(self, ref: str) -> Iterator[bytes]:
        """The image and its parents as a `docker save` tar stream."""
    def load_image(self, chunks: Iterable[bytes]) -> None:
        """`docker load` of a tar stream another engine's save_image gave."""

    # -- the machine ------------------------------------------------------------------------------
    def memory(self) -> int | None:
        """The memory of the engine's machine (bytes), None when it does not say."""

    # -- Swarm: only ever asked of labctl's own cluster nodes (labctl.cluster) --------------------
    def swarm_init(self, address: str, default_addr_pool: str) -> None:
        """Make this engine a Swarm manager advertising, and carrying data, on ``address``."""
    def swarm_join(self, manager: str, token: str, address: str) -> None:
        """Join the Swarm of the manager at ``manager`` (an address) with a join token."""
    def swarm_worker_token(self) -> str: ...
    def swarm_leave(self) -> None: ...
    def swarm_state(self) -> SwarmState: ...
    def swarm_nodes(self) -> list[SwarmNode]: ...
