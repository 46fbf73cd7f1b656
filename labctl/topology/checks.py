"""The rules a whole lab must keep, checked once after every edit.

A topology file, an overlay and a scenario's live DNS change each edit a :class:`Topology`; they
all end in :func:`problems`, so what is refused cannot depend on which parser made the change.
Each problem names what it is about (:data:`About`); the parser that made the edit knows which line
of its file that is (``where``) and raises it there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from labctl.errors import SourceError
from labctl.topology.model import DNS, MTA, MUA, MUA_ENV, MX, DomainSpec, Topology
from labctl.yamlsource import PathKey

# ("lab",) | ("domain", NAME, KEY) | ("host", NAME, KEY | ""): what a problem is about, in the
# model's terms; a parser turns it into a place in its document.
About = tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    about: About
    message: str


def problems(topo: Topology) -> Iterator[Problem]:
    """Every broken rule of ``topo``, in a stable order (the first is the one reported)."""
    dns = [h.name for h in topo.hosts_of(DNS)]
    if len(dns) != 1:
        yield Problem(("lab",), "the lab needs exactly one host with command: dns (or nsd-dns), "
                                f"not {len(dns)}" + (f": {', '.join(dns)}" if dns else ""))
    for d in topo.domains:
        yield from _domain_problems(topo, d)
    yield from _mua_problems(topo)


def raise_first(topo: Topology, where: Callable[[About], PathKey],
                fail: Callable[[PathKey, str], SourceError]) -> Topology:
    """``topo`` if it keeps every rule; else the first problem, raised at its place in the file."""
    for problem in problems(topo):
        at = where(problem.about)
        # "{key}": the setting as the file spells it (MAIL_USER in lab.yml, user in an overlay).
        raise fail(at, problem.message.replace("{key}", str(at[-1]) if at else problem.about[-1]))
    return topo


def _domain_problems(topo: Topology, domain: DomainSpec) -> Iterator[Problem]:
    names = {h.name: h for h in topo.hosts}
    servers = ", ".join(h.name for h in topo.mail_servers) or "none defined"
    keeper = names.get(domain.mail_host)
    if keeper is None or not keeper.runs_smtp:
        yield Problem(("domain", domain.name, "mail_host"),
                      f"mail_host {domain.mail_host!r} must name an mta or mx host; valid choices: {servers}")
    if domain.address is not None and domain.address not in names:
        yield Problem(("domain", domain.name, "address"),
                      f"address {domain.address!r} must name a host: {', '.join(names)} "
                      "(or null for no address record)")
    yield from _mx_problems(topo, domain)


def _mx_problems(topo: Topology, domain: DomainSpec) -> Iterator[Problem]:
    """A lab host named as MX must be able to take the mail: its mail host, or an MTA that relays
    (RFC 5321 §5.1: a less preferred MX relays to the best one).

    A name that is no lab host is fine (an MX pointing nowhere is a lesson of its own).
    """
    by_fqdn = {h.fqdn: h for h in topo.hosts}
    at = ("domain", domain.name, "mx")
    for mx in domain.mx:
        h = by_fqdn.get(mx.exchange)
        if h is None or h.name == domain.mail_host or h.kind == MTA:
            continue
        if h.kind == MX:
            yield Problem(at, f"MX {mx.exchange} of {domain.name} is host {h.name!r}, an mx that keeps only "
                              f"its own domains' mail; make it the domain's mail_host, or give it role mta "
                              "to make it a backup MX that queues and relays")
        else:
            yield Problem(at, f"MX {mx.exchange} of {domain.name} is host {h.name!r} (role {h.role}), "
                              "which runs no SMTP server; an MX must be an mta or mx host")


def _mua_problems(topo: Topology) -> Iterator[Problem]:
    accounts = set(topo.accounts)
    fqdns = {h.fqdn for h in topo.hosts}
    for h in topo.hosts_of(MUA):
        env = h.env
        if not any(k in env for k in MUA_ENV):
            continue  # a MUA host without a user of its own: the student's bare machine
        missing = [k for k in MUA_ENV if k not in env]
        if missing:
            yield Problem(("host", h.name, ""),
                          f"mua host {h.name!r} sets some of {', '.join(MUA_ENV)} but not {missing[0]}")
            continue
        if env["MAIL_USER"] not in accounts:
            yield Problem(("host", h.name, "MAIL_USER"),
                          f"{{key}} {env['MAIL_USER']!r} is not a lab account; accounts: "
                          f"{', '.join(sorted(accounts))} (add it under its domain's users:)")
        for key in ("MAIL_SMTP", "MAIL_POP3"):
            if env[key] not in fqdns:
                yield Problem(("host", h.name, key),
                              f"{key} {env[key]!r} is not a lab host; hosts: {', '.join(sorted(fqdns))}")
