"""Overlays: a scenario's (or ``labctl up --overlay``'s) edits of a topology.

An overlay only edits: it adds hosts (through the same :class:`~labctl.topology.compose.HostReader`
as the base file's services), swaps the program doing a host's job, adds or changes domains
(through the same :func:`~labctl.topology.mail.domain`), and replaces the retry schedule. The
edited lab is then checked whole (:mod:`labctl.topology.checks`), as a loaded one is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from labctl import yamlsource
from labctl.topology import checks, mail
from labctl.topology.checks import About
from labctl.topology.compose import HostReader
from labctl.topology.model import MTA, MUA, DomainSpec, HostSpec, Topology
from labctl.yamlreader import Reader
from labctl.yamlsource import Document, PathKey
from services import config as svc

OVERLAY_KEYS = ("hosts", "swap", "domains", "retry", "tls", "placement")
SWAP_KEYS = ("command", "image")
OVERLAY_HOST_KEYS = ("hostname", "role", "address", "user")
# The lab has one name server; a scenario adds mail hosts, and outside clients (no lab user).
OVERLAY_ROLES = ("mta", "mx", "mua", "client")
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
    return _Overlay(Reader(doc), base, at).topology()


def change_domain(topo: Topology, doc: Document, at: PathKey) -> Topology:
    """``topo`` with one domain changed as the mapping at ``at`` says (a live DNS change).

    The mapping is an overlay domain entry plus ``domain: NAME``.
    """
    return _Overlay(Reader(doc), topo, at).domain_change()


class _Overlay:
    def __init__(self, r: Reader, base: Topology, at: PathKey) -> None:
        self.r = r
        self.base = base
        self.at = at
        # Where each edit was written, for the checks' errors: {("domain", name): path, ...}.
        self.placed: dict[About, PathKey] = {}

    def where(self, about: About) -> PathKey:
        """The line to blame for a problem: the edit that touched it, else the overlay itself."""
        if about[0] == "domain" and ("domain", about[1]) in self.placed:
            return self.placed[("domain", about[1])] + (about[2],)
        if about[0] == "host" and ("host", about[1]) in self.placed:
            return self.placed[("host", about[1])]
        return self.at

    def topology(self) -> Topology:
        spec = self.r.mapping(self.r.value_at(self.at), self.at, OVERLAY_KEYS, "topology changes", optional=True)
        hosts = self.swapped(spec.get("swap"))
        reader = HostReader(self.r, self.base.subnet, hosts)
        added = self.r.mapping(spec.get("hosts"), self.at + ("hosts",), None, "hosts", optional=True)
        for name, value in added.items():
            self.extra_host(reader, name, value)
        retry = self.base.retry
        if "retry" in spec:
            retry = mail.retry(self.r, spec["retry"], self.at + ("retry",))
        tls = mail.tls(self.r, spec["tls"], self.at + ("tls",)) if "tls" in spec else self.base.tls
        place = mail.placement(self.r, spec.get("placement"), self.at + ("placement",), tuple(reader.hosts),
                               self.base.placement)
        topo = replace(self.base, hosts=tuple(reader.hosts), retry=retry, tls=tls, placement=place)
        at0 = self.at + ("domains",)
        domains = list(topo.domains)
        for raw, value in self.r.mapping(spec.get("domains"), at0, None, "domains", optional=True).items():
            self.edit_domain(domains, raw, value, at0 + (raw,), topo.hosts)
        return checks.raise_first(replace(topo, domains=tuple(domains)), self.where, self.r.fail)

    def domain_change(self) -> Topology:
        spec = self.r.mapping(self.r.value_at(self.at), self.at, ("domain", *mail.DOMAIN_KEYS), "a DNS change",
                              optional=True)
        if "domain" not in spec:
            raise self.r.fail(self.at, "say which domain changes: domain: NAME")
        name = spec.pop("domain")
        choices = ", ".join(d.name for d in self.base.domains)
        if not isinstance(name, str) or self.base.domain(name) is None:
            raise self.r.fail(self.at + ("domain",), f"domain {name!r} is not a lab domain; valid choices: {choices}")
        if "users" in spec or "mail_host" in spec:
            raise self.r.fail(self.at, "a live DNS change can set mx, address and records; users and mail_host "
                                       "are the servers' configuration: change them in the topology section")
        domains = list(self.base.domains)
        self.edit_domain(domains, name, spec, self.at, self.base.hosts)
        return checks.raise_first(replace(self.base, domains=tuple(domains)), self.where, self.r.fail)

    def edit_domain(self, domains: list[DomainSpec], raw: Any, value: Any, at: PathKey,
                    hosts: tuple[HostSpec, ...]) -> None:
        name = self.r.fqdn(raw, at, "domain")
        index = next((i for i, d in enumerate(domains) if d.name == name), None)
        new = mail.domain(self.r, raw, value, at, domains[index] if index is not None else None, hosts)
        self.placed[("domain", name)] = at
        if index is None:
            domains.append(new)
        else:
            domains[index] = new

    def swapped(self, value: Any) -> tuple[HostSpec, ...]:
        """The base's hosts with ``swap:`` applied: another program for the same job on a host.

        ``swap: {mail: postfix-mx}`` runs Postfix + Dovecot on the MX host (same name, address,
        domains and accounts), ``swap: {andy: {image: reference}}`` gives a MUA host the reference
        image's tools; the same lab, load and capture then run against the reference peers.
        """
        at0 = self.at + ("swap",)
        raw = self.r.mapping(value, at0, None, "swap", optional=True)
        by_name = {h.name: h for h in self.base.hosts}
        changed = dict(by_name)
        reader = HostReader(self.r, self.base.subnet)
        for name, change in raw.items():
            at = at0 + (name,)
            host = by_name.get(name)
            if host is None:
                raise self.r.fail(at, f"host {name!r} is not in the lab; hosts: {', '.join(sorted(by_name))}")
            spec = {"command": change} if isinstance(change, str) else \
                self.r.mapping(change, at, SWAP_KEYS, f"swap of {name!r}", optional=True)
            role = reader.role(spec.get("command", host.role), at if isinstance(change, str) else at + ("command",))
            if svc.role_kind(role) != host.kind:
                same = ", ".join(r for r in svc.ALL_ROLES if svc.role_kind(r) == host.kind)
                raise self.r.fail(at, f"{name} is the lab's {host.kind} host; it can run {same}, not {role}")
            image = reader.image({"image": spec["image"]} if "image" in spec else {}, at, role)
            changed[name] = replace(host, role=role, image=image)
            self.placed[("host", name)] = at
        return tuple(changed[h.name] for h in self.base.hosts)

    def extra_host(self, reader: HostReader, name: Any, value: Any) -> None:
        at = self.at + ("hosts", name)
        name = reader.name(name, at)
        spec = self.r.mapping(value, at, OVERLAY_HOST_KEYS, f"host {name!r}", optional=True)
        for required in ("hostname", "role"):
            if required not in spec:
                raise self.r.fail(at, f"host {name!r} has no {required!r}")
        fqdn = reader.fqdn(spec["hostname"], at + ("hostname",))
        role = reader.role(spec["role"], at + ("role",), OVERLAY_ROLES, key="role", refused="cannot be added")
        address = self.host_address(reader, spec.get("address"), at + ("address",))
        env: tuple[tuple[str, str], ...] = ()
        if role == MUA:
            env = self.mua_environment(spec.get("user"), at + ("user",))
            self.placed[("host", name)] = at + ("user",)
        elif "user" in spec:
            raise self.r.fail(at + ("user",), "only a mua host has a user")
        reader.add(HostSpec(name=name, fqdn=fqdn, role=role, address=address, environment=env, labels=()))

    def host_address(self, reader: HostReader, value: Any, at: PathKey) -> ipaddress.IPv4Address:
        """``address:`` a host number (111) or an address in the subnet; none: the next free from .100."""
        if value is None:
            return reader.free_address(FIRST_EXTRA_HOST, at)
        subnet = self.base.subnet
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                address = subnet.network_address + value
            else:
                address = ipaddress.IPv4Address(self.r.text(value, at, "address").strip())
        except ValueError as exc:
            raise self.r.fail(at, f"address {value!r}: a host number like 111 or an address in {subnet}") from exc
        return reader.address(address, at, "address")

    def mua_environment(self, value: Any, at: PathKey) -> tuple[tuple[str, str], ...]:
        """A new MUA host sends through the lab's MTA and fetches from its domain's mail host."""
        user = self.r.text(value, at, "user (the mail address of the host's user)").strip().lower()
        # A user added in this same overlay is checked with the whole lab afterwards.
        mta = next(iter(self.base.hosts_of(MTA)), None)
        if mta is None:
            raise self.r.fail(at, "the lab has no mta host to send through")
        domain = self.base.domain(user.rpartition("@")[2])
        pop3 = self.base.host(domain.mail_host).fqdn if domain is not None else mta.fqdn
        return (("MAIL_POP3", pop3), ("MAIL_SMTP", mta.fqdn), ("MAIL_USER", user))
