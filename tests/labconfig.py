"""The lab configuration of a host of compose/lab.yml, for tests that run a service without a lab.

labctl renders the shipped topology into each host's lab.json (labctl.topology.load, then
Topology.lab_config); the tests start from the same rendering, so a server under test reads the
lab a student runs. A test changes only what it is about: where its servers listen (127.0.0.1 with
port 0), a password, the retry schedule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace

from labctl import topology
from services.config import LabConfig, MuaSettings, Retry

LAB = "test"


@functools.cache
def _topology() -> topology.Topology:
    return topology.load()


def lab_config(me: str, *, addresses: Mapping[str, str] | None = None, passwords: Mapping[str, str] | None = None,
               subnet: str | None = None, nameserver: str | None = None, retry: Retry | None = None,
               mua: MuaSettings | None = None) -> LabConfig:
    """What host ``me`` of compose/lab.yml reads, with the changes a test asks for.

    ``addresses``: host name -> the address it has here (a server under test on a loopback
    address); ``passwords``: mail address -> its password; the other arguments replace the field of
    that name (``mua`` only where one is given: the topology's hosts keep theirs).
    """
    topo = _topology()
    cfg = topo.lab_config(LAB, topo.host(me))
    moved, changed = addresses or {}, passwords or {}
    _known(moved, {h.name for h in cfg.hosts}, "host")
    _known(changed, {a.address for d in cfg.domains for a in d.accounts}, "account")
    hosts = tuple(replace(h, address=moved.get(h.name, h.address)) for h in cfg.hosts)
    domains = tuple(replace(d, accounts=tuple(replace(a, password=changed.get(a.address, a.password))
                                              for a in d.accounts)) for d in cfg.domains)
    return replace(cfg, hosts=hosts, domains=domains, subnet=subnet or cfg.subnet,
                   nameserver=nameserver or cfg.nameserver, retry=retry or cfg.retry, mua=mua or cfg.mua)


def password(address: str) -> str:
    """The password compose/lab.yml gives the account ``address`` (every host's config has them all)."""
    account = lab_config(_topology().hosts[0].name).account(address)
    if account is None:
        raise KeyError(f"no account {address} in compose/lab.yml")
    return account.password


def _known(changes: Mapping[str, str], names: set[str], what: str) -> None:
    """A change for a name the lab does not have is a typo in the test, not a new host or account."""
    unknown = sorted(set(changes) - names)
    if unknown:
        raise KeyError(f"no {what} {', '.join(unknown)} in compose/lab.yml (there are: {', '.join(sorted(names))})")
