"""The lab as labctl knows it: frozen dataclasses, and the questions the rest of labctl asks of it.

Hosts are asked for by what they do (:meth:`Topology.hosts_of`, :attr:`Topology.mail_servers`,
:attr:`Topology.nameserver`), never by their role string: ``postfix-mx`` does the job of an ``mx``
(services.config.role_kind), and every caller that compared roles by hand got the reference peers
wrong once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path

from services import config as svc

# What a host does, whoever's software does it (services.config.role_kind).
DNS, MTA, MX, MUA, CLIENT = svc.ROLES
# The kinds that run an SMTP server: ours (mta, mx) and the reference peers (postfix-mta, postfix-mx).
MAIL_KINDS = (MTA, MX)

# The images a host can run (`image:` of a service), by the name a topology uses. `lab` is the
# one image of design decision 3; `reference` adds Postfix, Dovecot, NSD, fetchmail and dnsperf
# for the side-by-side comparisons (compose/reference/Dockerfile). The reference roles need it.
IMAGES = {
    "lab": "our services and the student's tools (the default)",
    "reference": "the lab image plus Postfix, Dovecot, NSD, fetchmail and dnsperf",
}
MUA_ENV = ("MAIL_USER", "MAIL_SMTP", "MAIL_POP3")


def is_reference(role: str) -> bool:
    """Does ``role`` run a reference peer (Postfix, NSD) rather than our own server?"""
    return role in svc.REFERENCE_ROLES


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

    @property
    def accounts(self) -> tuple[str, ...]:
        return tuple(f"{u}@{self.name}" for u, _ in self.users)


class Role:
    """What a host's role says of it, for a planned host (HostSpec) and a running one (HostStatus) alike."""

    role: str

    @property
    def kind(self) -> str:
        """The job the host does (dns, mta, mx, mua), whoever's software does it."""
        return svc.role_kind(self.role)

    @property
    def is_reference(self) -> bool:
        """Does a reference peer (Postfix, NSD) do this host's job, rather than our server?"""
        return is_reference(self.role)

    @property
    def runs_our_smtp(self) -> bool:
        """Does our SMTP server (services.smtp: the MTA or the MX) run here, not Postfix?"""
        return self.kind in MAIL_KINDS and not self.is_reference


@dataclass(frozen=True)
class HostSpec(Role):
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
    def runs_smtp(self) -> bool:
        return self.kind in MAIL_KINDS

    @property
    def user(self) -> str | None:
        """The mail address of a MUA host's user (MAIL_USER), if it has one."""
        return self.env.get("MAIL_USER") if self.kind == MUA else None


@dataclass(frozen=True)
class Topology:
    source: Path
    network: str
    subnet: ipaddress.IPv4Network
    hosts: tuple[HostSpec, ...]
    domains: tuple[DomainSpec, ...]
    retry: svc.Retry
    tls: svc.TlsSettings = field(default_factory=svc.TlsSettings)  # x-maillab.tls, `labctl up --tls`
    # x-maillab.placement: (host, engine name) for the hosts a split lab puts on a given engine;
    # the others are placed by policy (labctl.split). Empty: the lab is whole on one engine.
    placement: tuple[tuple[str, str], ...] = ()

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if name in (h.name, h.fqdn):
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise KeyError(f"no host {name!r} in this lab (hosts: {known})")

    def placed_on(self, host: str) -> str | None:
        """The engine the topology puts ``host`` on (x-maillab.placement), if it says."""
        return dict(self.placement).get(host)

    def domain(self, name: str) -> DomainSpec | None:
        name = name.lower().rstrip(".")
        return next((d for d in self.domains if d.name == name), None)

    # -- hosts by what they do ---------------------------------------------------------------

    def hosts_of(self, *kinds: str) -> tuple[HostSpec, ...]:
        """The hosts doing one of ``kinds`` (dns, mta, mx, mua), in topology order."""
        return tuple(h for h in self.hosts if h.kind in kinds)

    @property
    def mail_servers(self) -> tuple[HostSpec, ...]:
        """The hosts that run an SMTP server: our mta/mx and the reference postfix-mta/postfix-mx."""
        return self.hosts_of(*MAIL_KINDS)

    @property
    def nameserver(self) -> HostSpec:
        return next(h for h in self.hosts if h.kind == DNS)

    @property
    def accounts(self) -> tuple[str, ...]:
        """The lab's users, as mail addresses (betty@stevenchoy.example)."""
        return tuple(a for d in self.domains for a in d.accounts)

    @property
    def clients(self) -> tuple[HostSpec, ...]:
        """The outside client hosts: on the lab network, no lab user, no relay client of the MTA."""
        return self.hosts_of(CLIENT)

    @property
    def mua_hosts(self) -> tuple[HostSpec, ...]:
        """The MUA hosts that have a user of their own (MAIL_USER)."""
        return tuple(h for h in self.hosts_of(MUA) if h.user is not None)

    def mua_for(self, who: str) -> HostSpec | None:
        """The MUA host of ``who``: a host name (andy), its FQDN, or its user's address."""
        who = who.lower()
        return next((h for h in self.mua_hosts if who in (h.name, h.fqdn, h.user)), None)

    def backup_mx(self, domain: DomainSpec) -> tuple[str, ...]:
        """The lab hosts listed as MX of ``domain`` that do not keep its mailboxes: they relay."""
        names = {m.exchange for m in domain.mx}
        return tuple(h.name for h in self.hosts if h.fqdn in names and h.name != domain.mail_host)

    # -- placing and configuring ---------------------------------------------------------------

    def with_tmpfs(self, host: str, path: str, size: str) -> Topology:
        """The same lab with ``path`` on ``host`` a RAM disk of ``size`` ("size=16m"), unless the
        topology already makes it one (its own size stands)."""
        hosts = tuple(replace(h, tmpfs=(*h.tmpfs, (path, size)))
                      if h.name == host and path not in dict(h.tmpfs) else h for h in self.hosts)
        return replace(self, hosts=hosts)

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
        if host.user is not None:
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
            tls=self.tls,
        )

    @property
    def tls_servers(self) -> tuple[HostSpec, ...]:
        """The hosts that get a certificate of their own when TLS is on: every one serving SMTP,
        POP3 or IMAP (our mta/mx and the reference Postfix + Dovecot hosts)."""
        return self.mail_servers if self.tls.enabled else ()
