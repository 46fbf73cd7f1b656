"""The Compose part of a topology: ``networks:`` and ``services:`` read into the lab's hosts.

The file is in Compose format because that is what users know, but labctl drives the Engine API
itself (design decision 1), so it accepts only the subset it really implements. Every key it does
not know is an error naming the file, the line and the keys that are valid there.

:class:`HostReader` is the one place that decides what a valid host is (its name, FQDN, role, image,
address); the base file's services and an overlay's added and swapped hosts all go through it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from labctl.subnets import node_range
from labctl.topology.model import IMAGES, MAIL_KINDS, HostSpec, is_reference
from labctl.yamlreader import LABEL, Reader, describe
from labctl.yamlsource import PathKey
from services import config as svc

# A /28 still holds the five hosts; below /16 the lab would swallow real address space.
MIN_PREFIX, MAX_PREFIX = 16, 28

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NETWORK_KEYS = ("internal", "driver", "ipam")
IPAM_KEYS = ("config",)
IPAM_CONFIG_KEYS = ("subnet",)
SERVICE_KEYS = ("hostname", "command", "networks", "environment", "labels", "tmpfs", "image")
SERVICE_NETWORK_KEYS = ("ipv4_address",)
# `tmpfs:` gives a mail server a small disk of its own for a mail directory, so that a lab (or a
# fault test) can fill it up and watch the server answer 452. Only these directories, only on the
# hosts that have them, and always with a size: a tmpfs without one may take half the machine's RAM.
TMPFS_PATHS = (str(svc.MAIL_DIR), str(svc.SPOOL_DIR))
TMPFS_SIZE = re.compile(r"^size=[1-9][0-9]{0,9}[kmg]?$")


def network(r: Reader, value: Any) -> tuple[str, ipaddress.IPv4Network]:
    """``networks:``: exactly one sealed bridge with one private subnet."""
    nets = r.mapping(value, ("networks",), None, "networks", optional=True)
    if len(nets) != 1:
        raise r.fail(("networks",), f"define exactly one network, not {len(nets)}")
    (name, spec), = nets.items()
    at: PathKey = ("networks", name)
    spec = r.mapping(spec, at, NETWORK_KEYS, f"network {name!r}", optional=True)
    if spec.get("internal", True) is not True:
        raise r.fail(at + ("internal",), "internal must be true: the lab network is sealed from the outside world")
    if spec.get("driver", "bridge") != "bridge":
        raise r.fail(at + ("driver",), "driver: only 'bridge' is supported")
    ipam = r.mapping(spec.get("ipam"), at + ("ipam",), IPAM_KEYS, "ipam", optional=True)
    configs = ipam.get("config")
    if not isinstance(configs, list) or len(configs) != 1:
        raise r.fail(at + ("ipam",), "ipam.config must be a list with one subnet")
    cfg = r.mapping(configs[0], at + ("ipam", "config", 0), IPAM_CONFIG_KEYS, "ipam.config", optional=True)
    where = at + ("ipam", "config", 0, "subnet")
    try:
        subnet = ipaddress.IPv4Network(r.text(cfg.get("subnet"), where, "subnet").strip())
    except ValueError as exc:
        raise r.fail(where, f"subnet: {exc}") from exc
    if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
        raise r.fail(where, f"subnet {subnet}: use a prefix from /{MIN_PREFIX} to /{MAX_PREFIX}")
    if not subnet.is_private:
        raise r.fail(where, f"subnet {subnet} is not a private range (RFC 1918)")
    return name, subnet


class HostReader:
    """The lab's hosts as they are read, base and overlay alike; each check names its line."""

    def __init__(self, r: Reader, subnet: ipaddress.IPv4Network, hosts: tuple[HostSpec, ...] = ()) -> None:
        self.r = r
        self.subnet = subnet
        self.gateway = next(subnet.hosts())  # Docker gives the bridge the first address
        self.reserved = node_range(subnet)  # the engines' own endpoints when the lab is split
        self.hosts = list(hosts)

    def by_name(self, name: str) -> HostSpec | None:
        return next((h for h in self.hosts if h.name == name), None)

    def name(self, name: Any, at: PathKey) -> str:
        if not isinstance(name, str) or not LABEL.match(name):
            raise self.r.fail(at, f"host name {name!r}: use lower-case letters, digits and '-'")
        if self.by_name(name) is not None:
            known = ", ".join(sorted(h.name for h in self.hosts))
            raise self.r.fail(at, f"host {name!r} is already in the lab; hosts: {known}")
        return name

    def fqdn(self, value: Any, at: PathKey) -> str:
        fqdn = self.r.fqdn(value, at, "hostname")
        other = next((h.name for h in self.hosts if h.fqdn == fqdn), None)
        if other is not None:
            raise self.r.fail(at, f"hostname {fqdn} is already used in the lab, by {other!r}")
        return fqdn

    def role(self, value: Any, at: PathKey, allowed: tuple[str, ...] = svc.ALL_ROLES, *, key: str = "command",
             refused: str = "is not a lab role") -> str:
        if isinstance(value, list) and len(value) == 1:  # Compose's exec form: command: [mta]
            value = value[0]
        if value not in allowed:
            raise self.r.fail(at, f"{key} {value!r} {refused}; valid roles: {', '.join(allowed)}")
        return str(value)

    def image(self, spec: dict[str, Any], at: PathKey, role: str) -> str:
        reference = is_reference(role)
        image = spec.get("image", "reference" if reference else "lab")
        if image not in IMAGES:
            valid = "; ".join(f"{name}: {what}" for name, what in IMAGES.items())
            raise self.r.fail(at + ("image",), f"image {image!r} is not a lab image; valid images: {valid}")
        if reference and image != "reference":
            raise self.r.fail(at + ("image",), f"command {role!r} runs on the reference image; "
                              "set image: reference or leave image: out")
        return str(image)

    def address(self, address: ipaddress.IPv4Address, at: PathKey, key: str) -> ipaddress.IPv4Address:
        subnet = self.subnet
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise self.r.fail(at, f"{key} {address} is not a host address in {subnet}")
        if address == self.gateway:
            raise self.r.fail(at, f"{key} {address} is the network's gateway; pick another")
        if address in self.reserved:
            raise self.r.fail(at, f"{key} {address} is in {self.reserved}, kept for the engines' own addresses when "
                                  f"the lab is split over several machines; pick one below "
                                  f"{self.reserved.network_address}")
        other = next((h.name for h in self.hosts if h.address == address), None)
        if other is not None:
            raise self.r.fail(at, f"{key} {address} is also used by {other!r}")
        return address

    def free_address(self, first: int, at: PathKey) -> ipaddress.IPv4Address:
        """The first free host address from host number ``first`` on."""
        taken = {h.address for h in self.hosts}
        for n in range(first, self.subnet.num_addresses - 1):
            candidate = self.subnet.network_address + n
            if candidate not in taken and candidate != self.gateway and candidate not in self.reserved:
                return candidate
        raise self.r.fail(at, f"no free address left in {self.subnet}")

    def add(self, host: HostSpec) -> HostSpec:
        self.hosts.append(host)
        return host

    # -- a Compose service --------------------------------------------------------------------

    def service(self, name: Any, value: Any, network: str) -> HostSpec:
        at: PathKey = ("services", name)
        name = self.name(name, at)
        spec = self.r.mapping(value, at, SERVICE_KEYS, f"service {name!r}", optional=True)
        for required in ("hostname", "command", "networks"):
            if required not in spec:
                raise self.r.fail(at, f"service {name!r} has no {required!r}")
        fqdn = self.fqdn(spec["hostname"], at + ("hostname",))
        role = self.role(spec["command"], at + ("command",))
        image = self.image(spec, at, role)
        nets = self.r.mapping(spec["networks"], at + ("networks",), (network,), f"{name}.networks", optional=True)
        if network not in nets:
            raise self.r.fail(at + ("networks",), f"service {name!r} is not on network {network!r}")
        nat: PathKey = at + ("networks", network)
        ncfg = self.r.mapping(nets[network], nat, SERVICE_NETWORK_KEYS, f"{name}.networks.{network}", optional=True)
        if "ipv4_address" not in ncfg:
            raise self.r.fail(nat, f"service {name!r} needs a fixed ipv4_address (the lab documents them)")
        where = nat + ("ipv4_address",)
        try:
            address = ipaddress.IPv4Address(self.r.text(ncfg["ipv4_address"], where, "ipv4_address").strip())
        except ValueError as exc:
            raise self.r.fail(where, f"ipv4_address: {exc}") from exc
        address = self.address(address, where, "ipv4_address")
        env = self.environment(spec.get("environment"), at + ("environment",))
        labels = self.r.mapping(spec.get("labels"), at + ("labels",), None, "labels", optional=True)
        return self.add(HostSpec(
            name=name,
            fqdn=fqdn,
            role=role,
            address=address,
            environment=tuple(sorted(env.items())),
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            tmpfs=self.tmpfs(spec.get("tmpfs"), at + ("tmpfs",), role),
            image=image,
        ))

    def environment(self, value: Any, at: PathKey) -> dict[str, str]:
        if isinstance(value, list):  # Compose also allows ["KEY=value", ...]
            env: dict[str, str] = {}
            for i, item in enumerate(value):
                if not isinstance(item, str) or "=" not in item:
                    raise self.r.fail(at + (i,), f"environment entry {item!r} is not KEY=value")
                key, _, val = item.partition("=")
                env[key] = val
        else:
            env = {k: "" if v is None else str(v)
                   for k, v in self.r.mapping(value, at, None, "environment", optional=True).items()}
        for key in env:
            if not ENV_NAME.match(key):
                raise self.r.fail(at, f"environment variable name {key!r} is not valid")
        return env

    def tmpfs(self, value: Any, at: PathKey, role: str) -> tuple[tuple[str, str], ...]:
        """Compose's ``tmpfs: [/var/mail/maillab:size=2m]`` (a list, or one string), narrowed as
        :data:`TMPFS_PATHS` says."""
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.r.fail(at, f"tmpfs must be a list like ['{TMPFS_PATHS[0]}:size=2m'], not {describe(value)}")
        if items and svc.role_kind(role) not in MAIL_KINDS:
            raise self.r.fail(at, f"tmpfs is for the mail servers' directories; a {role} host has none")
        out: dict[str, str] = {}
        for i, item in enumerate(items):
            where = at if isinstance(value, str) else at + (i,)
            path, _, options = str(item).partition(":")
            if path not in TMPFS_PATHS:
                raise self.r.fail(where, f"tmpfs {path!r}: only the mail directories may be a tmpfs: "
                                         f"{', '.join(TMPFS_PATHS)}")
            if not TMPFS_SIZE.match(options):
                raise self.r.fail(where, f"tmpfs {item!r} needs a size and nothing else, e.g. '{path}:size=2m' "
                                         "(k, m or g)")
            if path in out:
                raise self.r.fail(where, f"tmpfs {path} is given twice")
            out[path] = options
        return tuple(sorted(out.items()))


def hosts(r: Reader, value: Any, network: str, subnet: ipaddress.IPv4Network) -> tuple[HostSpec, ...]:
    """``services:``, each a host of the lab."""
    services = r.mapping(value, ("services",), None, "services", optional=True)
    if not services:
        raise r.fail(("services",), "services is empty; the lab needs at least a dns host")
    reader = HostReader(r, subnet)
    for name, spec in services.items():
        reader.service(name, spec, network)
    return tuple(reader.hosts)
