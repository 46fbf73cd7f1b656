"""Where a lab's network goes: a pure choice over the networks already taken.

A lab's topology names a subnet; another lab, a Docker network or this machine's own LAN or name
server may already hold it. :func:`choose_subnet` keeps the topology's subnet when it is free,
moves the lab to the first free one of the same size in :data:`SUBNET_SEARCH` when it is not
(every host keeps its host number), and refuses an explicit ``--subnet`` that clashes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import AddressClash

# Where another subnet is looked for. The build hosts use 192.0.2.0/24, 203.0.113.0/24 and
# 10.255.0.0/16: all outside it.
SUBNET_SEARCH = ipaddress.IPv4Network("10.89.0.0/16")


@dataclass(frozen=True)
class Taken:
    network: ipaddress.IPv4Network
    owner: str  # for the message: "lab 'maillab'", "docker network bridge", "this machine's network"


@dataclass(frozen=True)
class Choice:
    subnet: ipaddress.IPv4Network
    moved_from: str | None = None  # why the topology's subnet was not used: what holds it


def node_range(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """The corner of a lab subnet that no host may take: the top sixteenth (``.240/28`` of a /24,
    at least a /30).

    When a lab is split over several engines its network is a Swarm overlay, and every engine that
    attaches a container to it takes an address of its own there (its load-balancer endpoint) from
    the overlay's ``--ip-range``. The range is this corner, so those addresses never meet a host's
    static one; the topology parser keeps every lab out of it, split or not, so a lab can be split
    later without renumbering.
    """
    prefix = min(subnet.prefixlen + 4, 30)
    size = 1 << (32 - prefix)
    return ipaddress.IPv4Network((int(subnet.broadcast_address) + 1 - size, prefix))


def clash(net: ipaddress.IPv4Network, taken: Sequence[Taken]) -> Taken | None:
    return next((t for t in taken if net.overlaps(t.network)), None)


def free_subnet(prefixlen: int, taken: Sequence[Taken],
                search: ipaddress.IPv4Network = SUBNET_SEARCH) -> ipaddress.IPv4Network:
    for candidate in search.subnets(new_prefix=prefixlen):
        if clash(candidate, taken) is None:
            return candidate
    raise AddressClash(f"no free /{prefixlen} left in {search}; pass --subnet")


def choose_subnet(default: ipaddress.IPv4Network, wanted: ipaddress.IPv4Network | None, taken: Sequence[Taken],
                  search: ipaddress.IPv4Network = SUBNET_SEARCH) -> Choice:
    """``wanted`` (``--subnet``) if given and free; else ``default`` if free; else a free one."""
    if wanted is not None:
        held = clash(wanted, taken)
        if held is not None:
            raise AddressClash(f"subnet {wanted} overlaps {held.network} ({held.owner}); choose a free one with "
                               f"--subnet, e.g. {free_subnet(wanted.prefixlen, taken, search)}")
        return Choice(wanted)
    held = clash(default, taken)
    if held is None:
        return Choice(default)
    return Choice(free_subnet(default.prefixlen, taken, search), f"{held.network} ({held.owner})")


def host_networks(route_table: Path = Path("/proc/net/route"),
                  resolv_conf: Path = Path("/etc/resolv.conf")) -> list[Taken]:
    """Networks this machine routes to directly, and its name servers.

    A lab subnet over one of them would hide it behind the lab bridge: the machine would lose its
    own LAN or its DNS. (When the engine is remote this is merely conservative.)
    """
    nets: list[ipaddress.IPv4Network] = []
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "00000000":
            continue  # the default route covers everything; it is not a clash
        dest = ipaddress.IPv4Address(struct.pack("<I", int(fields[1], 16)))
        mask = ipaddress.IPv4Address(struct.pack("<I", int(fields[7], 16)))
        try:
            nets.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
        except ValueError:
            continue
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    nets.append(ipaddress.IPv4Network(f"{parts[1]}/32"))
                except ValueError:
                    continue
    except OSError:
        pass
    return [Taken(n, "this machine's network") for n in nets]
