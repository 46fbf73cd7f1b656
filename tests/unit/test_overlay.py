"""Topology overlays (a scenario's `topology:` section, `labctl up --overlay`): the changes, and each error."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from labctl import topology, yamlsource, zonefiles
from labctl.errors import SourceError

BASE = topology.load()


def overlay(text: str) -> topology.Topology:
    return topology.load_overlay(BASE, Path("overlay.yml"), text)


def error_of(text: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        overlay(text)
    return info.value


def domain(topo: topology.Topology, name: str) -> topology.DomainSpec:
    return next(d for d in topo.domains if d.name == name)


def test_a_backup_mx_with_preferences_gets_an_address_and_relays() -> None:
    topo = overlay("""
hosts:
  mx2:
    hostname: mx2.stevenchoy.example
    role: mta
domains:
  stevenchoy.example:
    mx: ["10 mail.stevenchoy.example", "20 mx2.stevenchoy.example"]
retry: {schedule: [1, 2], give_up: 60}
""")
    mx2 = topo.host("mx2")
    assert mx2.address == ipaddress.IPv4Address("10.89.0.100") and mx2.role == "mta"
    steven = domain(topo, "stevenchoy.example")
    assert [(m.preference, m.exchange) for m in steven.mx] == [(10, "mail.stevenchoy.example"),
                                                               (20, "mx2.stevenchoy.example")]
    assert dict(steven.users) == {"betty": "betty-secret"}  # kept
    assert topo.retry.schedule == (1.0, 2.0) and topo.retry.give_up == 60.0
    cfg = topo.lab_config("x", mx2)
    assert cfg.is_backup_mx("stevenchoy.example") and not topo.lab_config("x", topo.host("mail")).is_backup_mx(
        "stevenchoy.example")
    zone = zonefiles.render(topo)["stevenchoy.example.zone"]
    assert "MX\t20 mx2.stevenchoy.example." in zone and "mx2\tIN\tA\t10.89.0.100" in zone
    assert BASE.host("mail").name == "mail" and len(BASE.hosts) == 5  # the base is untouched


def test_no_mx_null_mx_mx_to_nowhere_extra_users_and_a_new_mua() -> None:
    topo = overlay("""
hosts:
  carol: {hostname: carol.stevenchoy.example, role: mua, user: carol@stevenchoy.example, address: 30}
domains:
  stevenchoy.example:
    users: {carol: carol-pw}
  nomx.example: {mail_host: mail, mx: [], address: mail, users: {dave: d}}
  nullmx.example: {mail_host: mail, mx: ["0 ."]}
  nowhere.example:
    mail_host: mail
    mx: ["10 ghost.nowhere.example"]
    records: ["www IN A 10.89.0.99"]
""")
    assert dict(domain(topo, "stevenchoy.example").users) == {"betty": "betty-secret", "carol": "carol-pw"}
    carol = topo.host("carol")
    assert str(carol.address) == "10.89.0.30"
    assert carol.env == {"MAIL_USER": "carol@stevenchoy.example", "MAIL_SMTP": "smtp.ouhk.example",
                         "MAIL_POP3": "mail.stevenchoy.example"}
    zones = zonefiles.render(topo)
    nomx = zones["nomx.example.zone"]
    assert "MX" not in nomx.split("NS")[1] and "@\tIN\tA\t10.89.0.110" in nomx
    assert "@\tIN\tMX\t0 ." in zones["nullmx.example.zone"]
    assert "10 ghost.nowhere.example." in zones["nowhere.example.zone"] and "www IN A" in zones["nowhere.example.zone"]


def test_a_live_dns_change_replaces_mx_and_keeps_the_rest() -> None:
    doc = yamlsource.load(Path("s.yml"), "fault:\n  dns: {domain: stevenchoy.example, mx: ['0 .']}\n")
    topo = topology.change_domain(BASE, doc, ("fault", "dns"))
    steven = domain(topo, "stevenchoy.example")
    assert [(m.preference, m.exchange) for m in steven.mx] == [(0, ".")] and steven.mail_host == "mail"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("hostz: {}\n", 1, "unknown key 'hostz' in topology changes; valid keys: hosts, swap, domains, retry"),
    ("hosts:\n  mx2:\n    hostname: mx2.stevenchoy.example\n    role: dns\n", 4,
     "role 'dns' cannot be added; valid roles: mta, mx, mua"),
    ("hosts:\n  mx2:\n    hostname: mx2.stevenchoy.example\n    rol: mx\n", 4,
     "unknown key 'rol' in host 'mx2'; valid keys: hostname, role, address, user"),
    ("hosts:\n  mx2: {role: mx}\n", 2, "host 'mx2' has no 'hostname'"),
    ("hosts:\n  mail: {hostname: m2.stevenchoy.example, role: mx}\n", 2, "host 'mail' is already in the lab"),
    ("hosts:\n  mx2: {hostname: mail.stevenchoy.example, role: mx}\n", 2,
     "hostname mail.stevenchoy.example is already used"),
    ("hosts:\n  mx2: {hostname: mx2.stevenchoy.com, role: mx}\n", 2, "is not under a reserved test name"),
    ("hosts:\n  mx2:\n    hostname: mx2.stevenchoy.example\n    role: mx\n    address: 25\n", 5,
     "address 10.89.0.25 is also used by 'smtp'"),
    ("hosts:\n  mx2:\n    hostname: mx2.stevenchoy.example\n    role: mx\n    address: 10.90.0.5\n", 5,
     "address 10.90.0.5 is not a host address in 10.89.0.0/24"),
    ("hosts:\n  c:\n    hostname: c.stevenchoy.example\n    role: mua\n    user: carol@stevenchoy.example\n", 5,
     "user 'carol@stevenchoy.example' is not a lab account"),
    ("domains:\n  new.example:\n    mx: []\n", 2, "new domain 'new.example' needs a mail_host"),
    ("domains:\n  new.example:\n    mail_host: andy\n", 3,
     "mail_host 'andy' must name an mta or mx host; valid choices: smtp, mail"),
    ("domains:\n  stevenchoy.example:\n    mx: [mail.stevenchoy.example]\n", 3, "must be 'PREFERENCE HOST'"),
    ("domains:\n  stevenchoy.example:\n    mx: ['0 .', '10 mail.stevenchoy.example']\n", 3,
     "a null MX ('0 .', RFC 7505) must be the domain's only MX record"),
    ("domains:\n  stevenchoy.example:\n    mx: ['10 andy.ouhk.example']\n", 3, "which runs no SMTP server"),
    ("hosts:\n  mx2: {hostname: mx2.stevenchoy.example, role: mx}\ndomains:\n  stevenchoy.example:\n"
     "    mx: ['10 mail.stevenchoy.example', '20 mx2.stevenchoy.example']\n", 5,
     "give it role mta to make it a backup MX"),
    ("domains:\n  stevenchoy.example:\n    address: nohost\n", 3, "address 'nohost' must name a host"),
    ("domains:\n  stevenchoy.example:\n    records: MX 10 x\n", 3, "records must be a list of zone-file lines"),
    ("domains:\n  stevenchoy.example:\n    colour: red\n", 3,
     "unknown key 'colour' in domain 'stevenchoy.example'; valid keys: mail_host, mx, users, address, records"),
    ("retry:\n  schedule: [1, -2]\n", 2, "a retry interval must be a positive number of seconds"),
    ("retry:\n  every: 3\n", 2, "unknown key 'every' in retry; valid keys: schedule, give_up"),
])
def test_every_error_has_its_line(text: str, line: int, message: str) -> None:
    err = error_of(text)
    assert err.line == line, str(err)
    assert message in err.message, err.message
    assert str(err).startswith(f"overlay.yml:{line}: ")


def test_a_live_dns_change_refuses_server_settings_and_unknown_domains() -> None:
    doc = yamlsource.load(Path("s.yml"), "dns:\n  domain: nope.example\n  mx: []\n")
    with pytest.raises(SourceError, match="s.yml:2: domain 'nope.example' is not a lab domain; valid choices"):
        topology.change_domain(BASE, doc, ("dns",))
    doc = yamlsource.load(Path("s.yml"), "dns:\n  domain: stevenchoy.example\n  users: {x: y}\n")
    with pytest.raises(SourceError, match="users and mail_host are the servers' configuration"):
        topology.change_domain(BASE, doc, ("dns",))


def test_the_base_lab_rejects_an_mx_host_of_a_foreign_domain() -> None:
    text = topology.DEFAULT_TOPOLOGY.read_text().replace('mx: ["10 smtp.ouhk.example"]',
                                                         'mx: ["10 mail.stevenchoy.example"]')
    with pytest.raises(SourceError, match="an mx that keeps only its own domains' mail"):
        topology.load(Path("lab.yml"), text)


def test_an_outside_client_host_is_no_user_and_no_relay_client() -> None:
    """Shows 587's 530 without AUTH: the MUA hosts may relay, so another host must ask (issue 14)."""
    topo = overlay("hosts:\n  outsider: {hostname: outsider.lab.example, role: client}\n")
    [client] = topo.clients
    assert (client.name, client.kind, client.user, str(client.address)) == (
        "outsider", "client", None, "10.89.0.100")
    assert client not in topo.mua_hosts
    cfg = topo.lab_config("t", topo.host("smtp"))
    assert not cfg.is_relay_client(str(client.address))
    assert cfg.is_relay_client(str(topo.host("andy").address))
    with pytest.raises(SourceError, match="only a mua host has a user"):
        overlay("hosts:\n  outsider: {hostname: outsider.lab.example, role: client, user: andy@ouhk.example}\n")


def test_an_overlay_places_hosts_it_adds_and_keeps_the_bases_placement() -> None:
    base = replace(BASE, placement=(("mail", "node2"),))
    topo = topology.load_overlay(base, Path("overlay.yml"), (
        "hosts:\n  carol: {hostname: carol.stevenchoy.example, role: mua, user: carol@stevenchoy.example}\n"
        "domains:\n  stevenchoy.example: {users: {carol: c}}\n"
        "placement: {carol: node2, smtp: node1}\n"))
    assert topo.placement == (("smtp", "node1"), ("mail", "node2"), ("carol", "node2"))


def test_an_overlay_cannot_place_a_host_the_lab_does_not_have() -> None:
    err = error_of("placement:\n  dave: node2\n")
    assert err.line == 2
    assert "placement names host 'dave', which is not in the lab" in err.message
