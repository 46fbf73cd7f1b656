"""Zone files for the lab DNS server, written from the topology.

The lab DNS server loads ordinary master files (RFC 1035 §5); labctl writes them from
``compose/lab.yml`` so that addresses live in one place and move with ``--subnet``. A student can
read them on the name server: ``labctl exec ns -- cat /etc/maillab/zones/stevenchoy.example.zone``.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from labctl.topology import HostSpec, Topology
from services.config import lab_zones

TTL = 300  # short: a scenario that changes a record wants it seen at once
# RFC 1912 §2.2 values, scaled down for a lab whose zones live minutes.
SOA_TIMERS = "3600 600 86400 300"  # refresh retry expire minimum (negative-caching TTL)


def zone_names(topo: Topology) -> list[str]:
    """Every zone the lab serves: the mail domains plus the parent of each host name (the rule the
    MTA and the MUA also know the seal by, services.config.lab_zones)."""
    return lab_zones([d.name for d in topo.domains], [h.fqdn for h in topo.hosts])


def _owner(fqdn: str, zones: list[str]) -> str:
    """The closest enclosing zone of ``fqdn`` (longest match)."""
    return max((z for z in zones if fqdn == z or fqdn.endswith("." + z)), key=len)


def render(topo: Topology, serial: int = 1) -> dict[str, str]:
    """Zone file name -> contents, including the reverse zones of the lab subnet.

    ``serial`` goes into every SOA: a live change (a scenario's DNS fault) writes a higher one, so
    ``dig SOA`` shows when the server has reloaded.
    """
    zones = zone_names(topo)
    ns = topo.nameserver.fqdn
    body: dict[str, list[str]] = defaultdict(list)
    for d in topo.domains:
        for mx in d.mx:
            target = "." if mx.exchange == "." else mx.exchange + "."
            body[d.name].append(f"@\tIN\tMX\t{mx.preference} {target}")
        if d.address is not None:
            body[d.name].append(f"@\tIN\tA\t{topo.host(d.address).address}")
        body[d.name].extend(d.records)
    for h in topo.hosts:
        zone = _owner(h.fqdn, zones)
        rel = "@" if h.fqdn == zone else h.fqdn[: -len(zone) - 1]
        body[zone].append(f"{rel}\tIN\tA\t{h.address}")
    files = {f"{z}.zone": _zone_text(z, ns, body[z], serial) for z in zones}
    files.update(_reverse_zones(topo.hosts, ns, serial))
    return files


def _zone_text(zone: str, ns: str, lines: list[str], serial: int) -> str:
    head = [
        f"; zone {zone}, written by labctl from the lab topology",
        f"$ORIGIN {zone}.",
        f"$TTL {TTL}",
        f"@\tIN\tSOA\t{ns}. hostmaster.{zone}. ({serial} {SOA_TIMERS})",
        f"@\tIN\tNS\t{ns}.",
    ]
    return "\n".join(head + lines) + "\n"


def _reverse_zones(hosts: tuple[HostSpec, ...], ns: str, serial: int) -> dict[str, str]:
    """PTR records so a Received: header can name the connecting host (RFC 5321 §4.4)."""
    by_zone: dict[str, list[str]] = defaultdict(list)
    for h in hosts:
        net = ipaddress.IPv4Network(f"{h.address}/24", strict=False)
        zone = ".".join(reversed(str(net.network_address).split(".")[:3])) + ".in-addr.arpa"
        by_zone[zone].append(f"{str(h.address).split('.')[3]}\tIN\tPTR\t{h.fqdn}.")
    return {f"{z}.zone": _zone_text(z, ns, lines, serial) for z, lines in sorted(by_zone.items())}
