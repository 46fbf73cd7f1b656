"""The Docker Engine API behind :class:`labctl.backend.Engine`: the only module that imports docker.

labctl talks to the Engine API with the docker SDK, not the compose CLI (design decision 1): the
Compose plugin is missing from many installs, the SDK needs only a running engine.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import re
import socket
import struct
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import docker
import docker.constants
import docker.errors
import docker.tls
import docker.types
import requests.exceptions

from labctl.backend import (
    ArchivedFile,
    ContainerInfo,
    ContainerSpec,
    EngineError,
    ImageInfo,
    Labels,
    NetworkInfo,
    NotFound,
    Output,
    SwarmNode,
    SwarmState,
)
from labctl.enginesfile import EngineTls
from labctl.errors import DockerUnavailable

# One pooled connection per host started in parallel; the SDK's default of 10 would make a
# 50-host lab wait on the pool.
POOL_SIZE = 64
API_TIMEOUT = 120  # seconds; building an image streams, but `stop` of a stuck host can take a while
IMAGE_CHUNK = 1024 * 1024  # bytes per read of `docker save` as it streams to the other engine
CONFLICT = 409  # the Engine's answer while another request is removing the same container
UNMASKED_PATHS = "systempaths=unconfined"  # see create_container
FIRST_API_VERSION = "1.24"  # the oldest the SDK speaks: enough to ask an engine for its own
SWARM_PORT = 2377  # Swarm's cluster management port (tcp); gossip is 7946 tcp+udp, VXLAN 4789 udp
SWARM_SUBNET_SIZE = 24  # each overlay Swarm allocates from the pool gets a /24


def connect(base_url: str | None = None, *, tls: EngineTls | None = None) -> DockerEngine:
    """The engine at ``base_url``, else where DOCKER_HOST (or the local socket) says; it must answer.

    ``ssh://`` goes through the machine's own ssh client (its keys, agent and known_hosts), as the
    docker CLI does, rather than a Python SSH library; ``tls`` is a ``tcp://`` engine's client TLS.
    """
    where = base_url or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if base_url:
            client = _remote(base_url, tls, FIRST_API_VERSION)
            # Then the API version the engine speaks (as "auto" would ask, but on our own session).
            spoken = str(client.api.version()["ApiVersion"])
            newest = docker.constants.DEFAULT_DOCKER_API_VERSION
            client = _remote(base_url, tls, min(spoken, newest, key=lambda v: tuple(map(int, v.split(".")))))
        else:
            client = docker.from_env(timeout=API_TIMEOUT, max_pool_size=POOL_SIZE)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailable(
            f"cannot reach the Docker engine at {where} ({_first_line(exc)}).\n"
            "Start it and try again:\n"
            "  - on Debian/Ubuntu: `sudo systemctl start docker`, or `sudo dockerd &` where there is no systemd\n"
            "  - from this repository: `sudo tools/ensure-host` installs and starts one\n"
            "  - Docker Desktop: start the application\n"
            "  - a remote engine: set DOCKER_HOST"
        ) from exc
    return DockerEngine(client, where)


def _remote(base_url: str, tls: EngineTls | None, version: str) -> docker.DockerClient:
    tls_config = docker.tls.TLSConfig(client_cert=(str(tls.cert), str(tls.key)), ca_cert=str(tls.ca),
                                      verify=True) if tls is not None else None
    # A version given: the SDK asks the engine nothing while it is made, so what follows holds for
    # every request, the first too.
    client = docker.DockerClient(base_url=base_url.replace("tcp://", "https://") if tls else base_url,
                                 version=version, timeout=API_TIMEOUT, max_pool_size=POOL_SIZE,
                                 tls=tls_config or False, use_ssh_client=base_url.startswith("ssh://"))
    # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override the engine's own CA (docker-py
    # #2433: "self-signed certificate in certificate chain" on machines that set them), and
    # $HTTP(S)_PROXY send the Engine API through a proxy: an engine of the engines file is reached
    # as named there, with nothing from the environment.
    client.api.trust_env = False
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:160]


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """The SDK's errors as ours: the engine's explanation, and what it was asked to do."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise NotFound(f"{what}: {_explain(exc)}", 404) from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{what}: {_explain(exc)}", exc.status_code) from exc


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc).strip()


def _filters(labels: Labels | None) -> dict[str, list[str]] | None:
    return {"label": [f"{k}={v}" if v else k for k, v in labels.items()]} if labels else None


class DockerEngine:
    """One Docker engine, through its Engine API."""

    def __init__(self, client: docker.DockerClient, where: str = "") -> None:
        self.api = client.api
        self.where = where or str(self.api.base_url)

    # -- looking things up ------------------------------------------------------------------------

    def containers(self, labels: Labels | None = None) -> list[ContainerInfo]:
        with _translated("listing containers"):
            found = self.api.containers(all=True, filters=_filters(labels))
        return [ContainerInfo(c["Id"], c["Names"][0].lstrip("/"), c.get("Labels") or {}, c["State"],
                              str(c.get("ImageID", "")), _exit_code(str(c.get("Status", "")))) for c in found]

    def networks(self, labels: Labels | None = None) -> list[NetworkInfo]:
        with _translated("listing networks"):
            found = self.api.networks(filters=_filters(labels))
        out = []
        for net in found:
            subnets = []
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError):
                    subnets.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
            out.append(NetworkInfo(net["Id"], net["Name"], net.get("Labels") or {}, tuple(subnets),
                                   bool(net.get("Internal")), net.get("Driver") or "bridge"))
        return out

    def volumes(self, labels: Labels) -> list[str]:
        with _translated("listing volumes"):
            found = self.api.volumes(filters=_filters(labels)).get("Volumes") or []
        return [v["Name"] for v in found]

    # -- making and removing ----------------------------------------------------------------------

    def create_network(self, name: str, subnet: ipaddress.IPv4Network, labels: Labels, *,
                       overlay_range: ipaddress.IPv4Network | None = None) -> None:
        pool = docker.types.IPAMPool(subnet=str(subnet), iprange=str(overlay_range) if overlay_range else None)
        ipam = docker.types.IPAMConfig(pool_configs=[pool])
        with _translated(f"creating network {name} on {subnet}"):
            # internal: no route out of the lab (design decision 5). An overlay is attachable so
            # that plain containers (not Swarm services, which cannot have static addresses:
            # moby#24170) join it from each engine; its VXLAN MTU is the driver's 1450.
            self.api.create_network(name, driver="overlay" if overlay_range else "bridge", internal=True,
                                    attachable=bool(overlay_range), ipam=ipam, labels=dict(labels),
                                    check_duplicate=True)

    def remove_network(self, ident: str) -> None:
        with contextlib.suppress(docker.errors.NotFound), _translated(f"removing network {ident}"):
            self.api.remove_network(ident)

    def create_container(self, spec: ContainerSpec) -> None:
        with _translated(f"creating {spec.name}"):
            binds = {}
            for volume, path in spec.volumes.items():
                self.api.create_volume(volume, labels=dict(spec.volume_labels))
                binds[volume] = {"bind": path, "mode": "rw"}
            security_opt = [o for o in spec.security_opt if o != UNMASKED_PATHS]
            host_config = self.api.create_host_config(
                binds=binds, tmpfs=dict(spec.tmpfs) or None, cap_add=list(spec.cap_add) or None,
                dns=list(spec.dns) or None, dns_search=list(spec.dns_search) or None,
                cap_drop=list(spec.cap_drop) or None, security_opt=security_opt or None,
                device_cgroup_rules=list(spec.device_cgroup_rules) or None)
            if UNMASKED_PATHS in spec.security_opt:
                # The docker CLI's `--security-opt systempaths=unconfined` is no engine option: it
                # sends empty masked and read-only path lists (absent ones mean the defaults).
                host_config["MaskedPaths"] = []
                host_config["ReadonlyPaths"] = []
            networking = self.api.create_networking_config({
                spec.network: self.api.create_endpoint_config(ipv4_address=spec.address,
                                                              aliases=list(spec.aliases))})
            self.api.create_container(
                spec.image, command=list(spec.command), name=spec.name, hostname=spec.hostname,
                labels=dict(spec.labels), environment=dict(spec.environment), host_config=host_config,
                networking_config=networking, stop_signal=spec.stop_signal, stop_timeout=spec.stop_timeout,
                detach=True)

    def remove_container(self, ident: str, *, stop_timeout: int) -> None:
        """Stop and remove it with its anonymous volumes; gone already, or going, is fine."""
        try:
            self.api.stop(ident, timeout=stop_timeout)
            self.api.remove_container(ident, v=True, force=True)
        except docker.errors.NotFound:
            pass  # removed by someone else meanwhile: that is what we wanted
        except docker.errors.APIError as exc:
            if exc.status_code != CONFLICT:  # another `down` is removing it right now
                raise EngineError(f"removing {ident}: {_explain(exc)}", exc.status_code) from exc
            with contextlib.suppress(docker.errors.NotFound):
                self.api.wait(ident, condition="removed", timeout=stop_timeout * 10)

    def remove_volume(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound), _translated(f"removing volume {name}"):
            self.api.remove_volume(name, force=True)

    # -- running ----------------------------------------------------------------------------------

    def start(self, container: str) -> None:
        with _translated(f"starting {container}"):
            self.api.start(container)

    def stop(self, container: str, *, timeout: int) -> None:
        with _translated(f"stopping {container}"):
            self.api.stop(container, timeout=timeout)

    def signal(self, container: str, signal: str) -> None:
        with _translated(f"sending {signal} to {container}"):
            self.api.kill(container, signal=signal)

    def exec(self, container: str, cmd: Sequence[str], out: Output, err: Output, *, privileged: bool = False,
             stdin: bytes | None = None, environment: Mapping[str, str] | None = None) -> int:
        with _translated(f"running {cmd[0]} on {container}"):
            ex = self.api.exec_create(container, list(cmd), stdout=True, stderr=True, stdin=stdin is not None,
                                      privileged=privileged, environment=dict(environment) if environment else None)
            if stdin is not None:
                sock = self.api.exec_start(ex["Id"], socket=True)
                raw = getattr(sock, "_sock", sock)
                raw.sendall(stdin)
                raw.shutdown(socket.SHUT_WR)
                for stream, chunk in demux(raw):
                    (out if stream == 1 else err)(chunk)
                raw.close()
            else:
                for o, e in self.api.exec_start(ex["Id"], stream=True, demux=True):
                    if o:
                        out(o)
                    if e:
                        err(e)
            return int(self.api.exec_inspect(ex["Id"])["ExitCode"] or 0)

    def logs(self, container: str, *, follow: bool = False, tail: int | str = "all") -> Iterator[bytes]:
        with _translated(f"reading the log of {container}"):
            if follow:
                yield from self.api.logs(container, stream=True, follow=True, tail=tail)
            else:
                yield self.api.logs(container, tail=tail)

    # -- files and cables -------------------------------------------------------------------------

    def read_files(self, container: str, folder: str, *, with_data: bool = True) -> list[ArchivedFile]:
        """The regular files in ``folder`` (through the archive API: works on a stopped container too)."""
        with _translated(f"reading {folder} on {container}"):
            stream, _ = self.api.get_archive(container, folder)
            # Read whole: a lazily read HTTP stream left unread once emptied a scenario's capture.
            archive = io.BytesIO(b"".join(stream))
        found = []
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                data = b""
                if with_data:
                    extracted = tar.extractfile(member)
                    data = extracted.read() if extracted else b""
                found.append(ArchivedFile(member.name.rpartition("/")[2], member.size, float(member.mtime), data))
        return found

    def put_archive(self, container: str, folder: str, tar: bytes) -> None:
        with _translated(f"copying files to {folder} on {container}"):
            self.api.put_archive(container, folder, tar)

    def disconnect(self, container: str, network: str) -> None:
        with _translated(f"disconnecting {container} from {network}"):
            self.api.disconnect_container_from_network(container, network, force=True)

    def connect(self, container: str, network: str, address: str, aliases: Sequence[str]) -> None:
        with _translated(f"connecting {container} to {network}"):
            self.api.connect_container_to_network(container, network, ipv4_address=address, aliases=list(aliases))

    # -- images -----------------------------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            return None

    def images(self) -> list[ImageInfo]:
        with _translated("listing images"):
            found = self.api.images()
        return [ImageInfo(i["Id"], tuple(i.get("RepoTags") or ()), i.get("Labels") or {}) for i in found]

    def remove_image(self, ref: str) -> None:
        with _translated(f"removing {ref}"):
            self.api.remove_image(ref)

    def pull(self, ref: str) -> str:
        repo, _, tag = ref.partition(":")
        with _translated(f"pulling {ref}"):
            self.api.pull(repo, tag=tag or "latest")
        image_id = self.image_id(ref)
        if image_id is None:
            raise NotFound(f"pulling {ref}: the engine reported no image")
        return image_id

    def build(self, context_tar: bytes, tag: str, buildargs: Mapping[str, str],
              labels: Labels) -> Iterator[dict[str, Any]]:
        with _translated(f"building {tag}"):
            yield from self.api.build(fileobj=io.BytesIO(context_tar), custom_context=True, tag=tag,
                                      buildargs=dict(buildargs), labels=dict(labels), rm=True, forcerm=True,
                                      decode=True)

    def import_image(self, tarball: str, repository: str, tag: str, changes: Sequence[str]) -> None:
        with _translated(f"importing {repository}:{tag}"):
            self.api.import_image_from_file(tarball, repository=repository, tag=tag, changes=list(changes))

    def tag(self, ref: str, repository: str, tag: str) -> None:
        with _translated(f"tagging {ref}"):
            self.api.tag(ref, repository, tag)

    def save_image(self, ref: str) -> Iterator[bytes]:
        with _translated(f"saving {ref}"):
            yield from self.api.get_image(ref, chunk_size=IMAGE_CHUNK)

    def load_image(self, chunks: Iterable[bytes]) -> None:
        # requests sends an iterable body chunked: the image is never held whole in memory.
        with _translated("loading an image"):
            for _ in self.api.load_image(chunks):
                pass

    def memory(self) -> int | None:
        with _translated("asking the engine's memory"):
            total = self.api.info().get("MemTotal")
        return int(total) if total else None

    # -- Swarm (labctl's cluster nodes only) -------------------------------------------------------

    def swarm_init(self, address: str, default_addr_pool: str) -> None:
        with _translated(f"making {self.where} a Swarm manager"):
            # --data-path-addr: on a machine with several interfaces, VXLAN traffic from the wrong
            # one is silently dropped; the pool: Swarm's default 10.0.0.0/8 overlaps the labs'.
            self.api.init_swarm(advertise_addr=address, listen_addr=f"{address}:{SWARM_PORT}",
                                data_path_addr=address, default_addr_pool=[default_addr_pool],
                                subnet_size=SWARM_SUBNET_SIZE)

    def swarm_join(self, manager: str, token: str, address: str) -> None:
        with _translated(f"joining {self.where} to the Swarm of {manager}"):
            self.api.join_swarm([f"{manager}:{SWARM_PORT}"], token, listen_addr=f"{address}:{SWARM_PORT}",
                                advertise_addr=address, data_path_addr=address)

    def swarm_worker_token(self) -> str:
        with _translated(f"asking {self.where} for the Swarm's worker join token"):
            return str(self.api.inspect_swarm()["JoinTokens"]["Worker"])

    def swarm_leave(self) -> None:
        if self.swarm_state().state == "inactive":
            return
        with _translated(f"leaving the Swarm on {self.where}"):
            self.api.leave_swarm(force=True)

    def swarm_state(self) -> SwarmState:
        with _translated(f"asking {self.where} for its Swarm state"):
            swarm = self.api.info().get("Swarm") or {}
        return SwarmState(str(swarm.get("LocalNodeState") or "inactive"), str(swarm.get("NodeID") or ""),
                          str((swarm.get("Cluster") or {}).get("ID") or ""), bool(swarm.get("ControlAvailable")))

    def swarm_nodes(self) -> list[SwarmNode]:
        with _translated(f"listing the Swarm's nodes on {self.where}"):
            found = self.api.nodes()
        return [SwarmNode(str(n["ID"]), str((n.get("Description") or {}).get("Hostname", "")),
                          str((n.get("Spec") or {}).get("Role", "")), str((n.get("Status") or {}).get("State", "")),
                          str((n.get("Status") or {}).get("Addr", ""))) for n in found]


def demux(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
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


_EXITED = re.compile(r"Exited \((-?\d+)\)")


def _exit_code(status: str) -> int | None:
    """The exit status in the list's human status ("Exited (137) 3 seconds ago"): the list has no
    field of its own for it, and inspecting every container would cost a request per host."""
    m = _EXITED.match(status)
    return int(m.group(1)) if m else None
