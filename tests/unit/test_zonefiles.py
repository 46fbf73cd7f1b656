"""Zone files written from the topology load in dnspython with the records the lab needs."""

from __future__ import annotations

from pathlib import Path

import dns.rdatatype
import dns.zone

from labctl import topology, zonefiles

LAB_YML = topology.DEFAULT_TOPOLOGY.read_text()


def zones(text: str = LAB_YML) -> dict[str, dns.zone.Zone]:
    topo = topology.load(Path("lab.yml"), text)
    return {name: dns.zone.from_text(body, relativize=False, check_origin=True)
            for name, body in zonefiles.render(topo).items()}


def rrset(zone: dns.zone.Zone, name: str, rdtype: str) -> list[str]:
    found = zone.get_rrset(name, dns.rdatatype.from_text(rdtype))
    return sorted(r.to_text() for r in found) if found else []


def test_one_zone_per_domain_plus_host_parents_and_reverse() -> None:
    assert sorted(zones()) == [
        "0.89.10.in-addr.arpa.zone", "lab.example.zone", "ouhk.example.zone", "stevenchoy.example.zone",
    ]


def test_mx_and_host_records() -> None:
    z = zones()
    steven = z["stevenchoy.example.zone"]
    assert rrset(steven, "stevenchoy.example.", "MX") == ["10 mail.stevenchoy.example."]
    assert rrset(steven, "mail.stevenchoy.example.", "A") == ["10.89.0.110"]
    assert rrset(steven, "stevenchoy.example.", "NS") == ["ns.lab.example."]
    assert rrset(z["lab.example.zone"], "ns.lab.example.", "A") == ["10.89.0.53"]
    assert rrset(z["0.89.10.in-addr.arpa.zone"], "25.0.89.10.in-addr.arpa.", "PTR") == ["smtp.ouhk.example."]


def test_null_mx_no_mx_apex_address_and_extra_records() -> None:
    text = LAB_YML.replace('      mx: ["10 mail.stevenchoy.example"]',
                           '      mx: []\n      address: mail\n      records: ["www IN CNAME mail"]')
    text = text.replace('      mx: ["10 smtp.ouhk.example"]', '      mx: ["0 ."]')
    z = zones(text)
    steven = z["stevenchoy.example.zone"]
    assert rrset(steven, "stevenchoy.example.", "MX") == []
    assert rrset(steven, "stevenchoy.example.", "A") == ["10.89.0.110"]  # the implicit MX
    assert rrset(steven, "www.stevenchoy.example.", "CNAME") == ["mail.stevenchoy.example."]
    assert rrset(z["ouhk.example.zone"], "ouhk.example.", "MX") == ["0 ."]


def test_moving_the_subnet_moves_every_record() -> None:
    import ipaddress

    topo = topology.load().with_subnet(ipaddress.IPv4Network("10.89.3.0/24"))
    files = zonefiles.render(topo)
    assert "mail\tIN\tA\t10.89.3.110" in files["stevenchoy.example.zone"]
    assert "3.89.10.in-addr.arpa.zone" in files
