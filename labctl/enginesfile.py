"""The engines file: the Docker engines labctl spreads labs over (issue 16).

Where it is, first found wins: ``--engines FILE``, ``$LABCTL_ENGINES``, then
``$XDG_CONFIG_HOME/maillab/engines.yml`` (``~/.config/maillab/engines.yml``). With none, labctl
uses the one engine DOCKER_HOST (or the local socket) names, as it always did.

    # written by `labctl engines add`; edit by hand if you like
    engines:
      node1: {url: "tcp://10.20.0.5:2375", capacity: 20}   # plain TCP: only on a network you trust
      lab-a: {url: "ssh://teacher@lab-a.example", capacity: 40}
      lab-b:
        url: "tcp://lab-b.example:2376"
        tls: {ca: ca.pem, cert: cert.pem, key: key.pem}   # paths relative to this file
    swarm: {manager: node1}      # only for labs split across engines (x-maillab.placement)
    cluster: maillab-node        # set by `labctl cluster create`: which local nodes made it

Parsing is pure (text in, :class:`Engines` out) and every mistake names the file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from labctl import yamlsource
from labctl.errors import LabctlError

ENV = "LABCTL_ENGINES"
DEFAULT_CAPACITY = 20  # labs; a 2-core, 4 GiB machine held 20 five-host labs (bench/bench_cluster.py)
ENGINE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
SCHEMES = ("unix://", "tcp://", "ssh://")
TLS_KEYS = ("ca", "cert", "key")


@dataclass(frozen=True)
class EngineTls:
    """Client TLS for a ``tcp://`` engine (dockerd --tlsverify): the CA and the client's pair."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class EngineEntry:
    name: str
    url: str
    capacity: int = DEFAULT_CAPACITY
    tls: EngineTls | None = None


@dataclass(frozen=True)
class Engines:
    """What the file says; ``path`` is where it was read (or is to be written)."""

    path: Path
    entries: tuple[EngineEntry, ...] = ()
    manager: str | None = None  # the Swarm manager's engine, for split labs
    cluster: str | None = None  # the local node prefix `labctl cluster create` made them with
    existed: bool = field(default=True, compare=False)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> EngineEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise LabctlError(f"no engine {name!r} in {self.path} (engines: {', '.join(self.names()) or 'none'}); "
                          "see them with `labctl engines list`, add one with `labctl engines add NAME URL`")

    def with_engine(self, entry: EngineEntry) -> Engines:
        kept = tuple(e for e in self.entries if e.name != entry.name)
        return replace(self, entries=(*kept, entry))

    def without(self, name: str) -> Engines:
        self.get(name)
        return replace(self, entries=tuple(e for e in self.entries if e.name != name),
                       manager=None if self.manager == name else self.manager)


def default_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "maillab" / "engines.yml"


def where(given: str | None = None) -> Path:
    """The engines file labctl reads: ``--engines``, then $LABCTL_ENGINES, then the config dir."""
    return Path(given or os.environ.get(ENV) or default_path())


def load(given: str | None = None) -> Engines | None:
    """The engines file, or None when there is none (``--engines`` names one that must exist)."""
    path = where(given)
    if not path.exists():
        if given or os.environ.get(ENV):
            raise LabctlError(f"engines file {path} does not exist; create it with "
                              f"`labctl engines add NAME URL --engines {path}`")
        return None
    return parse(path, path.read_text(encoding="utf-8"))


def load_or_empty(given: str | None = None) -> Engines:
    """The engines file to change (`engines add`, `cluster create`): empty when there is none yet."""
    path = where(given)
    if not path.exists():
        return Engines(path, existed=False)
    return parse(path, path.read_text(encoding="utf-8"))


def check_url(url: str) -> str | None:
    """What is wrong with an engine URL, or None."""
    if not url.startswith(SCHEMES):
        return f"engine URL {url!r} must begin with one of {', '.join(SCHEMES)} (e.g. tcp://10.88.0.2:2375)"
    rest = url.split("://", 1)[1]
    if not rest:
        return f"engine URL {url!r} names no host or socket"
    return None


def parse(path: Path, text: str) -> Engines:
    doc = yamlsource.load(path, text)
    value = doc.value if doc.value is not None else {}
    if not isinstance(value, dict):
        raise doc.error((), "an engines file is a mapping with `engines:`; write e.g. "
                            "engines: {node1: {url: 'tcp://10.88.0.2:2375'}}")
    unknown = sorted(set(value) - {"engines", "swarm", "cluster"})
    if unknown:
        raise doc.error((unknown[0],), f"unknown key {unknown[0]!r}; an engines file has engines, swarm and cluster")
    engines = value.get("engines") or {}
    if not isinstance(engines, dict):
        raise doc.error(("engines",), "`engines:` maps engine names to {url: ..., capacity: ...}")
    entries = tuple(_entry(doc, path, str(name), spec) for name, spec in engines.items())
    manager = None
    swarm = value.get("swarm")
    if swarm is not None:
        if not isinstance(swarm, dict) or set(swarm) - {"manager"} or "manager" not in swarm:
            raise doc.error(("swarm",), "`swarm:` is {manager: ENGINE}: the engine that is the Swarm manager")
        manager = str(swarm["manager"])
        if manager not in {e.name for e in entries}:
            raise doc.error(("swarm", "manager"), f"swarm manager {manager!r} is not one of the engines "
                                                  f"({', '.join(e.name for e in entries) or 'none'})")
    cluster = value.get("cluster")
    if cluster is not None and not isinstance(cluster, str):
        raise doc.error(("cluster",), "`cluster:` is the name prefix `labctl cluster create` gave its nodes")
    return Engines(path, entries, manager, cluster)


def _entry(doc: yamlsource.Document, path: Path, name: str, spec: Any) -> EngineEntry:
    at: tuple[str | int, ...] = ("engines", name)
    if not ENGINE_NAME.fullmatch(name):
        raise doc.error(at, f"{name!r} is not an engine name: up to 40 lower-case letters, digits, '-', '_', '.'")
    if isinstance(spec, str):
        spec = {"url": spec}
    if not isinstance(spec, dict):
        raise doc.error(at, f"engine {name!r} is {{url: ..., capacity: ...}}")
    unknown = sorted(set(spec) - {"url", "capacity", "tls"})
    if unknown:
        raise doc.error((*at, unknown[0]), f"engine {name!r}: unknown key {unknown[0]!r} (keys: url, capacity, tls)")
    url = spec.get("url")
    if not isinstance(url, str):
        raise doc.error(at, f"engine {name!r} needs url: (unix://..., tcp://HOST:PORT or ssh://USER@HOST)")
    problem = check_url(url)
    if problem:
        raise doc.error((*at, "url"), problem)
    capacity = spec.get("capacity", DEFAULT_CAPACITY)
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise doc.error((*at, "capacity"), f"engine {name!r}: capacity is how many labs it may hold, a whole "
                                           f"number from 1 (got {capacity!r})")
    tls = None
    if "tls" in spec:
        t = spec["tls"]
        if not isinstance(t, dict) or set(t) != set(TLS_KEYS):
            raise doc.error((*at, "tls"), f"engine {name!r}: tls is {{ca: FILE, cert: FILE, key: FILE}}")
        if not url.startswith("tcp://"):
            raise doc.error((*at, "tls"), f"engine {name!r}: tls is for tcp:// engines; {url} needs none")
        tls = EngineTls(*(path.parent / str(t[k]) for k in TLS_KEYS))
    return EngineEntry(name, url, capacity, tls)


def dump(engines: Engines) -> str:
    body: dict[str, Any] = {"engines": {}}
    for e in engines.entries:
        spec: dict[str, Any] = {"url": e.url, "capacity": e.capacity}
        if e.tls is not None:
            spec["tls"] = {k: str(getattr(e.tls, k)) for k in TLS_KEYS}
        body["engines"][e.name] = spec
    if engines.manager:
        body["swarm"] = {"manager": engines.manager}
    if engines.cluster:
        body["cluster"] = engines.cluster
    return ("# maillab engines file: written by `labctl engines add` / `labctl cluster create`\n"
            + yaml.safe_dump(body, sort_keys=False, default_flow_style=False))


def save(engines: Engines) -> Path:
    engines.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engines.path.with_suffix(".tmp")
    tmp.write_text(dump(engines), encoding="utf-8")
    tmp.replace(engines.path)  # a reader never sees half a file
    return engines.path


def check_name(name: str) -> str:
    if not ENGINE_NAME.fullmatch(name):
        raise LabctlError(f"{name!r} is not an engine name: use up to 40 lower-case letters, digits, '-', '_' "
                          "or '.', beginning with a letter or digit")
    return name

