"""A topology file (``compose/lab.yml``): its Compose part and its ``x-maillab`` part, checked."""

from __future__ import annotations

from pathlib import Path

from labctl import yamlsource
from labctl.topology import checks, compose, mail
from labctl.topology.checks import About
from labctl.topology.model import DomainSpec, Topology
from labctl.yamlreader import Reader
from labctl.yamlsource import PathKey

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent.parent.parent / "compose" / "lab.yml"

# `name` and `version` are Compose's; labctl reads neither (a lab's name is `--lab`/$LABCTL_LAB).
TOP_KEYS = ("name", "version", "x-maillab", "networks", "services")


def load(path: Path = DEFAULT_TOPOLOGY, text: str | None = None) -> Topology:
    """Read and check a topology file; raise :class:`SourceError` at the first problem."""
    r = Reader(yamlsource.load(path, text))
    top = r.mapping(r.doc.value, (), TOP_KEYS, "the topology", optional=True)
    for required in ("services", "networks"):
        if required not in top:
            raise r.fail((), f"the topology has no {required!r} section")
    network, subnet = compose.network(r, top["networks"])
    hosts = compose.hosts(r, top["services"], network, subnet)
    ext = r.mapping(top.get("x-maillab"), ("x-maillab",), mail.LAB_KEYS, "x-maillab", optional=True)
    retry = mail.retry(r, ext.get("retry"), ("x-maillab", "retry"))
    tls = mail.tls(r, ext.get("tls"), ("x-maillab", "tls"))
    at0: PathKey = ("x-maillab", "domains")
    domains: list[DomainSpec] = []
    placed: dict[str, PathKey] = {}
    for raw, spec in r.mapping(ext.get("domains"), at0, None, "domains", optional=True).items():
        d = mail.domain(r, raw, spec, at0 + (raw,), None, hosts)
        if d.name in placed:
            raise r.fail(at0 + (raw,), f"domain {d.name} is given twice (first at line {r.doc.line(placed[d.name])})")
        placed[d.name] = at0 + (raw,)
        domains.append(d)

    def where(about: About) -> PathKey:
        if about[0] == "domain":
            return placed[about[1]] + (about[2],)
        if about[0] == "host":
            return ("services", about[1], "environment") + ((about[2],) if about[2] else ())
        return ("services",)

    place = mail.placement(r, ext.get("placement"), ("x-maillab", "placement"), hosts)
    return checks.raise_first(Topology(r.doc.path, network, subnet, hosts, tuple(domains), retry, tls, place),
                              where, r.fail)
