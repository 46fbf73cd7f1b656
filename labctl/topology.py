"""The lab topology: ``compose/lab.yml`` parsed and checked into frozen dataclasses.

The file is in Compose format because that is what users know, but labctl drives the Engine API
itself (design decision 1), so it accepts only the subset it really implements. Every key it does
not know is an error naming the file, the line and the keys that are valid there.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from labctl import yamlsource
from labctl.errors import SourceError
from labctl.yamlsource import Document, PathKey
from services import config as svc

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent.parent / "compose" / "lab.yml"

# RFC 2606 / RFC 6761: a lab must never use a name that exists on the real Internet.
RESERVED_SUFFIXES = (".example", ".test", ".invalid", ".localhost",
                     ".example.com", ".example.net", ".example.org")

# A /28 still holds the five hosts; below /16 the lab would swallow real address space.
MIN_PREFIX, MAX_PREFIX = 16, 28

LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
LOCAL_PART = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

TOP_KEYS = ("name", "version", "x-maillab", "networks", "services")
LAB_KEYS = ("domains", "retry")
DOMAIN_KEYS = ("mail_host", "mx", "users", "address", "records")
RETRY_KEYS = ("schedule", "give_up")
NETWORK_KEYS = ("internal", "driver", "ipam")
IPAM_KEYS = ("config",)
IPAM_CONFIG_KEYS = ("subnet",)
SERVICE_KEYS = ("hostname", "command", "networks", "environment", "labels", "tmpfs", "image")
SERVICE_NETWORK_KEYS = ("ipv4_address",)
MUA_ENV = ("MAIL_USER", "MAIL_SMTP", "MAIL_POP3")
# `tmpfs:` gives a mail server a small disk of its own for a mail directory, so that a lab (or a
# fault test) can fill it up and watch the server answer 452. Only these directories, only on the
# roles that have them, and always with a size: a tmpfs without one may take half the machine's RAM.
TMPFS_PATHS = (str(svc.MAIL_DIR), str(svc.SPOOL_DIR))
TMPFS_ROLES = ("mta", "mx")
TMPFS_SIZE = re.compile(r"^size=[1-9][0-9]{0,9}[kmg]?$")

# The images a host can run (`image:` of a service), by the name a topology uses. `lab` is the
# one image of design decision 3; `reference` adds Postfix, Dovecot, NSD, fetchmail and dnsperf
# for the side-by-side comparisons (compose/reference/Dockerfile). The reference roles need it.
IMAGES = {
    "lab": "our services and the student's tools (the default)",
    "reference": "the lab image plus Postfix, Dovecot, NSD, fetchmail and dnsperf",
}


@dataclass(frozen=True)
class MxRecord:
    preference: int
    exchange: str  # a FQDN without the trailing dot; "." is the null MX of RFC 7505


@dataclass(frozen=True)
class DomainSpec:
    name: str
    mail_host: str  # service name of the host keeping the mailboxes
    mx: tuple[MxRecord, ...]  # empty: no MX record (senders fall back to the implicit MX)
    users: tuple[tuple[str, str], ...]  # (local part, password)
    address: str | None  # service whose address the domain's own A record carries
    records: tuple[str, ...]  # extra zone-file lines, relative to the domain


@dataclass(frozen=True)
class HostSpec:
    name: str
    fqdn: str
    role: str
    address: ipaddress.IPv4Address
    environment: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    tmpfs: tuple[tuple[str, str], ...] = ()  # (directory, "size=..."): a RAM disk instead of a volume
    image: str = "lab"  # a key of IMAGES

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)

    @property
    def kind(self) -> str:
        """The job the host does (dns, mta, mx, mua), whoever's software does it."""
        return svc.role_kind(self.role)


@dataclass(frozen=True)
class Topology:
    source: Path
    name: str
    network: str
    subnet: ipaddress.IPv4Network
    hosts: tuple[HostSpec, ...]
    domains: tuple[DomainSpec, ...]
    retry: svc.Retry

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if name in (h.name, h.fqdn):
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise KeyError(f"no host {name!r} in this lab (hosts: {known})")

    @property
    def nameserver(self) -> HostSpec:
        return next(h for h in self.hosts if h.kind == "dns")

    def with_subnet(self, subnet: ipaddress.IPv4Network) -> Topology:
        """The same lab moved to ``subnet``: every host keeps its host number (.25 stays .25)."""
        if subnet.prefixlen > self.subnet.prefixlen:
            raise ValueError(
                f"{subnet} is smaller than the topology's {self.subnet}; "
                f"use a /{self.subnet.prefixlen} or larger"
            )
        base = int(subnet.network_address)
        old = int(self.subnet.network_address)
        hosts = tuple(
            replace(h, address=ipaddress.IPv4Address(base + int(h.address) - old)) for h in self.hosts
        )
        return replace(self, subnet=subnet, hosts=hosts)

    def backup_mx(self, domain: DomainSpec) -> tuple[str, ...]:
        """The lab hosts listed as MX of ``domain`` that do not keep its mailboxes: they relay."""
        names = {m.exchange for m in domain.mx}
        return tuple(h.name for h in self.hosts if h.fqdn in names and h.name != domain.mail_host)

    def lab_config(self, lab: str, host: HostSpec) -> svc.LabConfig:
        """What labctl writes to /etc/maillab/lab.json on ``host``."""
        mua = None
        if host.role == "mua" and "MAIL_USER" in host.env:
            env = host.env
            mua = svc.MuaSettings(user=env["MAIL_USER"], smtp=env["MAIL_SMTP"], pop3=env["MAIL_POP3"])
        return svc.LabConfig(
            lab=lab,
            me=host.name,
            subnet=str(self.subnet),
            nameserver=str(self.nameserver.address),
            hosts=tuple(svc.Host(h.name, h.fqdn, h.role, str(h.address)) for h in self.hosts),
            domains=tuple(
                svc.Domain(
                    name=d.name,
                    mail_host=d.mail_host,
                    accounts=tuple(svc.Account(u, d.name, p) for u, p in d.users),
                    backup_mx=self.backup_mx(d),
                )
                for d in self.domains
            ),
            retry=self.retry,
            mua=mua,
        )


def load(path: Path = DEFAULT_TOPOLOGY, text: str | None = None) -> Topology:
    """Read and check a topology file; raise :class:`SourceError` at the first problem."""
    return _Parser(yamlsource.load(path, text)).topology()


# ---------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, doc: Document) -> None:
        self.doc = doc

    # -- helpers -----------------------------------------------------------------------------

    def fail(self, at: PathKey, message: str) -> SourceError:
        return self.doc.error(at, message)

    def mapping(self, value: Any, at: PathKey, allowed: tuple[str, ...] | None, what: str) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.fail(at, f"{what} must be a mapping (key: value), not {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(at + (key,), f"{what}: keys must be text, not {key!r}")
            if allowed is not None and key not in allowed:
                raise self.fail(
                    at + (key,),
                    f"unknown key {key!r} in {what}; valid keys: {', '.join(allowed)}",
                )
        return dict(value)

    def text(self, value: Any, at: PathKey, what: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(at, f"{what} must be non-empty text, not {_kind(value)}")
        return value.strip()

    def fqdn(self, value: Any, at: PathKey, what: str) -> str:
        name = self.text(value, at, what).lower().rstrip(".")
        labels = name.split(".")
        if len(labels) < 2 or not all(LABEL.match(lab) for lab in labels):
            raise self.fail(at, f"{what} {value!r} is not a valid domain name")
        if not name.endswith(RESERVED_SUFFIXES):
            raise self.fail(
                at,
                f"{what} {value!r} is not under a reserved test name; a lab may only use names "
                f"ending in {', '.join(RESERVED_SUFFIXES)} (RFC 2606) so that no mail can leak "
                "to a real domain",
            )
        return name

    def number(self, value: Any, at: PathKey, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(at, f"{what} must be a positive number of seconds, not {value!r}")
        return float(value)

    # -- the document ------------------------------------------------------------------------

    def topology(self) -> Topology:
        top = self.mapping(self.doc.value, (), TOP_KEYS, "the topology")
        for required in ("services", "networks"):
            if required not in top:
                raise self.fail((), f"the topology has no {required!r} section")
        name = top.get("name", "maillab")
        if not isinstance(name, str) or not LAB_NAME.match(name):
            raise self.fail(("name",), f"name {name!r}: use lower-case letters, digits, '-', '_' or '.'")
        network, subnet = self.network(top["networks"])
        hosts = self.hosts(top["services"], network, subnet)
        ext = self.mapping(top.get("x-maillab"), ("x-maillab",), LAB_KEYS, "x-maillab")
        retry = self.retry(ext.get("retry"))
        domains = self.domains(ext.get("domains"), hosts)
        self.check_mua_settings(hosts, domains)
        for d in domains:
            self.check_mx_hosts(d, hosts, ("x-maillab", "domains", d.name, "mx"))
        return Topology(self.doc.path, name, network, subnet, hosts, domains, retry)

    def network(self, value: Any) -> tuple[str, ipaddress.IPv4Network]:
        nets = self.mapping(value, ("networks",), None, "networks")
        if len(nets) != 1:
            raise self.fail(("networks",), f"define exactly one network, not {len(nets)}")
        (name, spec), = nets.items()
        at: PathKey = ("networks", name)
        spec = self.mapping(spec, at, NETWORK_KEYS, f"network {name!r}")
        if spec.get("internal", True) is not True:
            raise self.fail(
                at + ("internal",),
                "internal must be true: the lab network is sealed from the outside world",
            )
        if spec.get("driver", "bridge") != "bridge":
            raise self.fail(at + ("driver",), "driver: only 'bridge' is supported")
        ipam = self.mapping(spec.get("ipam"), at + ("ipam",), IPAM_KEYS, "ipam")
        configs = ipam.get("config")
        if not isinstance(configs, list) or len(configs) != 1:
            raise self.fail(at + ("ipam",), "ipam.config must be a list with one subnet")
        cfg = self.mapping(configs[0], at + ("ipam", "config", 0), IPAM_CONFIG_KEYS, "ipam.config")
        where = at + ("ipam", "config", 0, "subnet")
        try:
            subnet = ipaddress.IPv4Network(self.text(cfg.get("subnet"), where, "subnet"))
        except ValueError as exc:
            raise self.fail(where, f"subnet: {exc}") from exc
        if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
            raise self.fail(where, f"subnet {subnet}: use a prefix from /{MIN_PREFIX} to /{MAX_PREFIX}")
        if not subnet.is_private:
            raise self.fail(where, f"subnet {subnet} is not a private range (RFC 1918)")
        return name, subnet

    def hosts(self, value: Any, network: str, subnet: ipaddress.IPv4Network) -> tuple[HostSpec, ...]:
        services = self.mapping(value, ("services",), None, "services")
        if not services:
            raise self.fail(("services",), "services is empty; the lab needs at least a dns host")
        gateway = next(subnet.hosts())  # Docker gives the bridge the first address
        hosts: list[HostSpec] = []
        seen_fqdn: dict[str, str] = {}
        seen_addr: dict[ipaddress.IPv4Address, str] = {}
        for name, spec in services.items():
            at: PathKey = ("services", name)
            if not LABEL.match(name):
                raise self.fail(at, f"service name {name!r}: use lower-case letters, digits and '-'")
            spec = self.mapping(spec, at, SERVICE_KEYS, f"service {name!r}")
            for required in ("hostname", "command", "networks"):
                if required not in spec:
                    raise self.fail(at, f"service {name!r} has no {required!r}")
            fqdn = self.fqdn(spec["hostname"], at + ("hostname",), "hostname")
            if fqdn in seen_fqdn:
                raise self.fail(at + ("hostname",), f"hostname {fqdn} is also used by {seen_fqdn[fqdn]!r}")
            seen_fqdn[fqdn] = name
            role = spec["command"]
            if isinstance(role, list) and len(role) == 1:
                role = role[0]
            if role not in svc.ALL_ROLES:
                raise self.fail(
                    at + ("command",), f"command {role!r} is not a lab role; valid roles: {', '.join(svc.ALL_ROLES)}"
                )
            image = self.image(spec, at, role)
            nets = self.mapping(spec["networks"], at + ("networks",), (network,), f"{name}.networks")
            if network not in nets:
                raise self.fail(at + ("networks",), f"service {name!r} is not on network {network!r}")
            nat: PathKey = at + ("networks", network)
            ncfg = self.mapping(nets[network], nat, SERVICE_NETWORK_KEYS, f"{name}.networks.{network}")
            if "ipv4_address" not in ncfg:
                raise self.fail(nat, f"service {name!r} needs a fixed ipv4_address (the lab documents them)")
            where = nat + ("ipv4_address",)
            try:
                address = ipaddress.IPv4Address(self.text(ncfg["ipv4_address"], where, "ipv4_address"))
            except ValueError as exc:
                raise self.fail(where, f"ipv4_address: {exc}") from exc
            if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
                raise self.fail(where, f"ipv4_address {address} is not a host address in {subnet}")
            if address == gateway:
                raise self.fail(where, f"ipv4_address {address} is the network's gateway; pick another")
            if address in seen_addr:
                raise self.fail(where, f"ipv4_address {address} is also used by {seen_addr[address]!r}")
            seen_addr[address] = name
            env = self.environment(spec.get("environment"), at + ("environment",))
            labels = self.mapping(spec.get("labels"), at + ("labels",), None, "labels")
            tmpfs = self.tmpfs(spec.get("tmpfs"), at + ("tmpfs",), role)
            hosts.append(
                HostSpec(
                    name=name,
                    fqdn=fqdn,
                    role=role,
                    address=address,
                    environment=tuple(sorted(env.items())),
                    labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                    tmpfs=tmpfs,
                    image=image,
                )
            )
        dns = [h.name for h in hosts if h.kind == "dns"]
        if len(dns) != 1:
            raise self.fail(("services",), "the lab needs exactly one host with command: dns (or nsd-dns), "
                            f"not {len(dns)}" + (f": {', '.join(dns)}" if dns else ""))
        return tuple(hosts)

    def image(self, spec: dict[str, Any], at: PathKey, role: str) -> str:
        reference = role in svc.REFERENCE_ROLES
        image = spec.get("image", "reference" if reference else "lab")
        if image not in IMAGES:
            valid = "; ".join(f"{name}: {what}" for name, what in IMAGES.items())
            raise self.fail(at + ("image",), f"image {image!r} is not a lab image; valid images: {valid}")
        if reference and image != "reference":
            raise self.fail(at + ("image",), f"command {role!r} runs on the reference image; "
                            "set image: reference or leave image: out")
        return str(image)

    def environment(self, value: Any, at: PathKey) -> dict[str, str]:
        if isinstance(value, list):  # Compose also allows ["KEY=value", ...]
            env: dict[str, str] = {}
            for i, item in enumerate(value):
                if not isinstance(item, str) or "=" not in item:
                    raise self.fail(at + (i,), f"environment entry {item!r} is not KEY=value")
                key, _, val = item.partition("=")
                env[key] = val
        else:
            env = {k: "" if v is None else str(v) for k, v in self.mapping(value, at, None, "environment").items()}
        for key in env:
            if not ENV_NAME.match(key):
                raise self.fail(at, f"environment variable name {key!r} is not valid")
        return env

    def tmpfs(self, value: Any, at: PathKey, role: str) -> tuple[tuple[str, str], ...]:
        """Compose's ``tmpfs: [/var/mail/maillab:size=2m]`` (a list, or one string), narrowed as
        :data:`TMPFS_PATHS` says."""
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.fail(at, f"tmpfs must be a list like ['{TMPFS_PATHS[0]}:size=2m'], not {_kind(value)}")
        if items and svc.role_kind(role) not in TMPFS_ROLES:
            raise self.fail(at, f"tmpfs is for the mail servers' directories; a {role} host has none")
        out: dict[str, str] = {}
        for i, item in enumerate(items):
            where = at if isinstance(value, str) else at + (i,)
            path, _, options = str(item).partition(":")
            if path not in TMPFS_PATHS:
                raise self.fail(where, f"tmpfs {path!r}: only the mail directories may be a tmpfs: "
                                       f"{', '.join(TMPFS_PATHS)}")
            if not TMPFS_SIZE.match(options):
                raise self.fail(where, f"tmpfs {item!r} needs a size and nothing else, e.g. '{path}:size=2m' "
                                       "(k, m or g)")
            if path in out:
                raise self.fail(where, f"tmpfs {path} is given twice")
            out[path] = options
        return tuple(sorted(out.items()))

    def retry(self, value: Any, at: PathKey = ("x-maillab", "retry")) -> svc.Retry:
        if value is None:
            return svc.Retry()
        spec = self.mapping(value, at, RETRY_KEYS, "retry")
        schedule = spec.get("schedule", list(svc.Retry.schedule))
        if not isinstance(schedule, list) or not schedule:
            raise self.fail(at + ("schedule",), "retry.schedule must be a non-empty list of seconds")
        steps = tuple(self.number(s, at + ("schedule", i), "a retry interval") for i, s in enumerate(schedule))
        give_up = self.number(spec.get("give_up", svc.Retry.give_up), at + ("give_up",), "retry.give_up")
        return svc.Retry(schedule=steps, give_up=give_up)

    def domains(self, value: Any, hosts: tuple[HostSpec, ...]) -> tuple[DomainSpec, ...]:
        at0: PathKey = ("x-maillab", "domains")
        raw = self.mapping(value, at0, None, "domains")
        by_name = {h.name: h for h in hosts}
        out: list[DomainSpec] = []
        for dname, spec in raw.items():
            at = at0 + (dname,)
            name = self.fqdn(dname, at, "domain")
            spec = self.mapping(spec, at, DOMAIN_KEYS, f"domain {name!r}")
            mail_host = spec.get("mail_host")
            if mail_host not in by_name or by_name[mail_host].kind not in ("mta", "mx"):
                choices = ", ".join(h.name for h in hosts if h.kind in ("mta", "mx")) or "none defined"
                raise self.fail(
                    at + ("mail_host",),
                    f"mail_host {mail_host!r} must name an mta or mx service; valid choices: {choices}",
                )
            mx = self.mx_records(spec.get("mx"), at + ("mx",), by_name[mail_host].fqdn)
            users = self.users(spec.get("users"), at + ("users",))
            address = spec.get("address")
            if address is not None and address not in by_name:
                raise self.fail(
                    at + ("address",), f"address {address!r} must name a service: {', '.join(by_name)}"
                )
            records = spec.get("records", [])
            if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
                raise self.fail(at + ("records",), "records must be a list of zone-file lines")
            out.append(DomainSpec(name, mail_host, mx, users, address, tuple(records)))
        return tuple(out)

    def mx_records(self, value: Any, at: PathKey, default: str) -> tuple[MxRecord, ...]:
        if value is None:
            return (MxRecord(10, default),)
        if not isinstance(value, list):
            raise self.fail(at, 'mx must be a list like ["10 mail.example.example"], or [] for none')
        out: list[MxRecord] = []
        for i, item in enumerate(value):
            parts = str(item).split()
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) > 65535:
                raise self.fail(at + (i,), f"mx entry {item!r} must be 'PREFERENCE HOST', e.g. '10 mail.x.example'")
            host = parts[1]
            exchange = "." if host == "." else self.fqdn(host, at + (i,), "mx host")
            out.append(MxRecord(int(parts[0]), exchange))
        if any(r.exchange == "." for r in out) and len(out) > 1:
            raise self.fail(at, "a null MX ('0 .', RFC 7505) must be the domain's only MX record")
        return tuple(out)

    def users(self, value: Any, at: PathKey) -> tuple[tuple[str, str], ...]:
        users = self.mapping(value, at, None, "users")
        out: list[tuple[str, str]] = []
        for user, password in users.items():
            if not LOCAL_PART.match(user):
                raise self.fail(at + (user,), f"user name {user!r}: use lower-case letters, digits, . _ + -")
            if not isinstance(password, str | int) or isinstance(password, bool) or str(password) == "":
                raise self.fail(at + (user,), f"the password of {user!r} must be non-empty text")
            out.append((user, str(password)))
        return tuple(out)

    def check_mx_hosts(self, domain: DomainSpec, hosts: tuple[HostSpec, ...], at: PathKey) -> None:
        """A lab host named as MX must be able to take the mail: its mail host, or an MTA that relays.

        A name that is no lab host is fine (an MX pointing nowhere is a lesson of its own).
        """
        by_fqdn = {h.fqdn: h for h in hosts}
        for mx in domain.mx:
            h = by_fqdn.get(mx.exchange)
            if h is None or h.name == domain.mail_host or h.role == "mta":
                continue
            if h.role == "mx":
                raise self.fail(at, f"MX {mx.exchange} of {domain.name} is host {h.name!r}, an mx that keeps only "
                                    f"its own domains' mail; make it the domain's mail_host, or give it role mta "
                                    "to make it a backup MX that queues and relays")
            raise self.fail(at, f"MX {mx.exchange} of {domain.name} is host {h.name!r} (role {h.role}), "
                                "which runs no SMTP server; an MX must be an mta or mx host")

    def check_mua_settings(self, hosts: tuple[HostSpec, ...], domains: tuple[DomainSpec, ...]) -> None:
        accounts = {f"{u}@{d.name}" for d in domains for u, _ in d.users}
        fqdns = {h.fqdn for h in hosts}
        for h in hosts:
            if h.role != "mua":
                continue
            env = h.env
            at: PathKey = ("services", h.name, "environment")
            if not any(k in env for k in MUA_ENV):
                continue
            for key in MUA_ENV:
                if key not in env:
                    raise self.fail(at, f"mua host {h.name!r} sets some of {', '.join(MUA_ENV)} but not {key}")
            if env["MAIL_USER"] not in accounts:
                raise self.fail(
                    at + ("MAIL_USER",),
                    f"MAIL_USER {env['MAIL_USER']!r} is not a lab account; accounts: {', '.join(sorted(accounts))}",
                )
            for key in ("MAIL_SMTP", "MAIL_POP3"):
                if env[key] not in fqdns:
                    hosts_list = ", ".join(sorted(fqdns))
                    raise self.fail(at + (key,), f"{key} {env[key]!r} is not a lab host; hosts: {hosts_list}")


# -- overlays: a scenario's changes on top of a topology ------------------------------------------

OVERLAY_KEYS = ("hosts", "swap", "domains", "retry")
SWAP_KEYS = ("command", "image")
OVERLAY_HOST_KEYS = ("hostname", "role", "address", "user")
OVERLAY_ROLES = ("mta", "mx", "mua")  # the lab has one name server; a scenario adds mail hosts
FIRST_EXTRA_HOST = 100  # added hosts get .100, .101, ... unless they say otherwise


def load_overlay(base: Topology, path: Path, text: str | None = None) -> Topology:
    """``base`` with the changes of an overlay file (``labctl up --overlay FILE``)."""
    return apply_overlay(base, yamlsource.load(path, text), ())


def apply_overlay(base: Topology, doc: Document, at: PathKey) -> Topology:
    """``base`` with the overlay found at ``at`` in ``doc`` (a scenario's ``topology:`` section).

    Errors point into ``doc``. The overlay may add hosts (mta, mx or mua), add domains, change
    a domain (``mx``, ``address``, ``mail_host`` replace; ``users`` and ``records`` add), and
    replace the retry schedule.
    """
    return _OverlayParser(doc, base, at).topology()


def change_domain(topo: Topology, doc: Document, at: PathKey) -> Topology:
    """``topo`` with one domain changed as the mapping at ``at`` says (a live DNS change).

    The mapping is an overlay domain entry plus ``domain: NAME``.
    """
    return _OverlayParser(doc, topo, at).domain_change()


class _OverlayParser(_Parser):
    def __init__(self, doc: Document, base: Topology, at: PathKey) -> None:
        super().__init__(doc)
        self.base = base
        self.at = at

    def value_at(self, at: PathKey) -> Any:
        value = self.doc.value
        for key in at:
            value = value[key]
        return value

    def topology(self) -> Topology:
        spec = self.mapping(self.value_at(self.at), self.at, OVERLAY_KEYS, "topology changes")
        base_hosts = self.swapped(spec.get("swap"))
        hosts = base_hosts + self.extra_hosts(spec.get("hosts"))
        retry = self.base.retry
        if "retry" in spec:
            retry = self.retry(spec["retry"], self.at + ("retry",))
        topo = replace(self.base, hosts=hosts, retry=retry)
        raw = self.mapping(spec.get("domains"), self.at + ("domains",), None, "domains")
        domains = list(topo.domains)
        for name in raw:
            self.one_domain(name, raw[name], self.at + ("domains", name), topo.hosts, domains)
        topo = replace(topo, domains=tuple(domains))
        accounts = {f"{u}@{d.name}" for d in topo.domains for u, _ in d.users}
        for h in hosts[len(base_hosts):]:
            if h.role == "mua" and h.env["MAIL_USER"] not in accounts:
                known = ", ".join(sorted(accounts))
                raise self.fail(self.at + ("hosts", h.name, "user"),
                                f"user {h.env['MAIL_USER']!r} is not a lab account; accounts: {known} "
                                "(add it under domains: DOMAIN: users:)")
        self.check_mua_settings(topo.hosts, topo.domains)
        for name in raw:
            d = next(d for d in topo.domains if d.name == name.lower().rstrip("."))
            self.check_mx_hosts(d, topo.hosts, self.at + ("domains", name, "mx"))
        return topo

    def domain_change(self) -> Topology:
        spec = self.mapping(self.value_at(self.at), self.at, ("domain", *DOMAIN_KEYS), "a DNS change")
        if "domain" not in spec:
            raise self.fail(self.at, "say which domain changes: domain: NAME")
        name = spec.pop("domain")
        choices = ", ".join(d.name for d in self.base.domains)
        if not isinstance(name, str) or name.lower().rstrip(".") not in {d.name for d in self.base.domains}:
            raise self.fail(self.at + ("domain",), f"domain {name!r} is not a lab domain; valid choices: {choices}")
        if "users" in spec or "mail_host" in spec:
            raise self.fail(self.at, "a live DNS change can set mx, address and records; users and mail_host "
                                     "are the servers' configuration: change them in the topology section")
        domains = list(self.base.domains)
        self.one_domain(name, spec, self.at, self.base.hosts, domains)
        topo = replace(self.base, domains=tuple(domains))
        d = next(d for d in topo.domains if d.name == name.lower().rstrip("."))
        self.check_mx_hosts(d, topo.hosts, self.at + ("mx",))
        return topo

    def swapped(self, value: Any) -> tuple[HostSpec, ...]:
        """The base's hosts with ``swap:`` applied: another program for the same job on a host.

        ``swap: {mail: postfix-mx}`` runs Postfix + Dovecot on the MX host (same name, address,
        domains and accounts), ``swap: {andy: {image: reference}}`` gives a MUA host the reference
        image's tools; the same lab, load and capture then run against the reference peers.
        """
        at0 = self.at + ("swap",)
        raw = self.mapping(value, at0, None, "swap")
        by_name = {h.name: h for h in self.base.hosts}
        changed = dict(by_name)
        for name, change in raw.items():
            at = at0 + (name,)
            host = by_name.get(name)
            if host is None:
                raise self.fail(at, f"host {name!r} is not in the lab; hosts: {', '.join(sorted(by_name))}")
            spec = {"command": change} if isinstance(change, str) else self.mapping(change, at, SWAP_KEYS,
                                                                                   f"swap of {name!r}")
            role = spec.get("command", host.role)
            if role not in svc.ALL_ROLES:
                raise self.fail(at + ("command",) if not isinstance(change, str) else at,
                                f"command {role!r} is not a lab role; valid roles: {', '.join(svc.ALL_ROLES)}")
            if svc.role_kind(role) != host.kind:
                same = ", ".join(r for r in svc.ALL_ROLES if svc.role_kind(r) == host.kind)
                raise self.fail(at, f"{name} is the lab's {host.kind} host; it can run {same}, not {role}")
            image = self.image({"image": spec["image"]} if "image" in spec else {}, at, role)
            changed[name] = replace(host, role=role, image=image)
        return tuple(changed[h.name] for h in self.base.hosts)

    def extra_hosts(self, value: Any) -> tuple[HostSpec, ...]:
        at0 = self.at + ("hosts",)
        raw = self.mapping(value, at0, None, "hosts")
        taken = {h.address for h in self.base.hosts}
        names = {h.name for h in self.base.hosts}
        fqdns = {h.fqdn for h in self.base.hosts}
        gateway = next(self.base.subnet.hosts())
        out: list[HostSpec] = []
        for name, spec in raw.items():
            at = at0 + (name,)
            if not LABEL.match(str(name)):
                raise self.fail(at, f"host name {name!r}: use lower-case letters, digits and '-'")
            if name in names:
                raise self.fail(at, f"host {name!r} is already in the lab; hosts: {', '.join(sorted(names))}")
            spec = self.mapping(spec, at, OVERLAY_HOST_KEYS, f"host {name!r}")
            for required in ("hostname", "role"):
                if required not in spec:
                    raise self.fail(at, f"host {name!r} has no {required!r}")
            fqdn = self.fqdn(spec["hostname"], at + ("hostname",), "hostname")
            if fqdn in fqdns:
                raise self.fail(at + ("hostname",), f"hostname {fqdn} is already used in the lab")
            role = spec["role"]
            if role not in OVERLAY_ROLES:
                raise self.fail(at + ("role",),
                                f"role {role!r} cannot be added; valid roles: {', '.join(OVERLAY_ROLES)}")
            address = self.host_address(spec.get("address"), at + ("address",), taken, gateway)
            env: tuple[tuple[str, str], ...] = ()
            if role == "mua":
                env = self.mua_environment(spec.get("user"), at + ("user",))
            elif "user" in spec:
                raise self.fail(at + ("user",), "only a mua host has a user")
            taken.add(address)
            names.add(name)
            fqdns.add(fqdn)
            out.append(HostSpec(name=name, fqdn=fqdn, role=role, address=address, environment=env, labels=()))
        return tuple(out)

    def host_address(self, value: Any, at: PathKey, taken: set[ipaddress.IPv4Address],
                     gateway: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
        subnet = self.base.subnet
        if value is None:
            for n in range(FIRST_EXTRA_HOST, subnet.num_addresses - 1):
                candidate = subnet.network_address + n
                if candidate not in taken and candidate != gateway:
                    return candidate
            raise self.fail(at, f"no free address left in {subnet}")
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                address = subnet.network_address + value
            else:
                address = ipaddress.IPv4Address(self.text(value, at, "address"))
        except (ValueError, ipaddress.AddressValueError) as exc:
            raise self.fail(at, f"address {value!r}: a host number like 111 or an address in {subnet}") from exc
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address, gateway):
            raise self.fail(at, f"address {address} is not a free host address in {subnet}")
        if address in taken:
            raise self.fail(at, f"address {address} is already used in the lab")
        return address

    def mua_environment(self, value: Any, at: PathKey) -> tuple[tuple[str, str], ...]:
        """A new MUA host sends through the lab's MTA and fetches from its domain's mail host."""
        user = self.text(value, at, "user (the mail address of the host's user)").lower()
        domain_name = user.rpartition("@")[2]
        domain = next((d for d in self.base.domains if d.name == domain_name), None)
        # A user added in this same overlay is checked by check_mua_settings afterwards.
        mta = next((h for h in self.base.hosts if h.role == "mta"), None)
        if mta is None:
            raise self.fail(at, "the lab has no mta host to send through")
        pop3 = mta.fqdn
        if domain is not None:
            pop3 = self.base.host(domain.mail_host).fqdn
        return (("MAIL_POP3", pop3), ("MAIL_SMTP", mta.fqdn), ("MAIL_USER", user))

    def one_domain(self, raw_name: Any, value: Any, at: PathKey, hosts: tuple[HostSpec, ...],
                   domains: list[DomainSpec]) -> DomainSpec:
        name = self.fqdn(raw_name, at, "domain")
        spec = self.mapping(value, at, DOMAIN_KEYS, f"domain {name!r}")
        by_name = {h.name: h for h in hosts}
        index = next((i for i, d in enumerate(domains) if d.name == name), None)
        old = domains[index] if index is not None else None
        if old is None and "mail_host" not in spec:
            choices = ", ".join(h.name for h in hosts if h.role in ("mta", "mx"))
            raise self.fail(at, f"new domain {name!r} needs a mail_host (the host keeping its mailboxes): {choices}")
        mail_host = spec.get("mail_host", old.mail_host if old else None)
        if mail_host not in by_name or by_name[mail_host].role not in ("mta", "mx"):
            choices = ", ".join(h.name for h in hosts if h.role in ("mta", "mx"))
            raise self.fail(at + ("mail_host",),
                            f"mail_host {mail_host!r} must name an mta or mx host; valid choices: {choices}")
        if "mx" in spec or old is None:
            mx = self.mx_records(spec.get("mx"), at + ("mx",), by_name[mail_host].fqdn)
        else:
            mx = old.mx
        users = dict(old.users) if old else {}
        users.update(self.users(spec.get("users"), at + ("users",)))
        address = old.address if old else None
        if "address" in spec:
            address = spec["address"]
            if address is not None and address not in by_name:
                raise self.fail(at + ("address",), f"address {address!r} must name a host: {', '.join(by_name)}"
                                                   " (or null for no address record)")
        records = spec.get("records", [])
        if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
            raise self.fail(at + ("records",), "records must be a list of zone-file lines")
        new = DomainSpec(name, mail_host, mx, tuple(users.items()), address,
                         (old.records if old else ()) + tuple(records))
        if index is None:
            domains.append(new)
        else:
            domains[index] = new
        return new


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)
