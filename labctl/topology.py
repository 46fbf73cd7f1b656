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
SERVICE_KEYS = ("hostname", "command", "networks", "environment", "labels", "image")
SERVICE_NETWORK_KEYS = ("ipv4_address",)
MUA_ENV = ("MAIL_USER", "MAIL_SMTP", "MAIL_POP3")

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
            hosts.append(
                HostSpec(
                    name=name,
                    fqdn=fqdn,
                    role=role,
                    address=address,
                    environment=tuple(sorted(env.items())),
                    labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
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

    def retry(self, value: Any) -> svc.Retry:
        at: PathKey = ("x-maillab", "retry")
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


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)
