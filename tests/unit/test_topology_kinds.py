"""Hosts asked by what they do (issue 11): the reference peers count as the job they do.

Each overlay of tests/overlays/ was refused before, though it is a lab that works; the lab tests
(tests/lab/test_topology_kinds.py) bring the same files up on the real engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import topology, yamlsource
from labctl.errors import SourceError
from labctl.scenario import model as m
from labctl.scenario import parse
from labctl.topology import checks
from labctl.traffic.cli import names_from_hosts, probe_addresses

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "tests" / "overlays"
BASE = topology.load()


def with_overlay(name: str) -> topology.Topology:
    return topology.load_overlay(BASE, OVERLAYS / name)


def steven(topo: topology.Topology) -> topology.DomainSpec:
    found = topo.domain("stevenchoy.example")
    assert found is not None
    return found


def test_the_queries_of_the_shipped_lab() -> None:
    assert [h.name for h in BASE.hosts_of("mua")] == ["andy", "betty"]
    assert [h.name for h in BASE.mail_servers] == ["smtp", "mail"]
    assert BASE.nameserver.name == "ns"
    assert BASE.accounts == ("andy@ouhk.example", "betty@stevenchoy.example")
    andy = BASE.mua_for("andy@ouhk.example")
    assert andy is not None and andy.name == "andy" and BASE.mua_for("ANDY") == andy
    assert BASE.mua_for("mail") is None and BASE.mua_for("carol@ouhk.example") is None
    assert not any(h.is_reference for h in BASE.hosts)
    assert list(checks.problems(BASE)) == []


def test_a_postfix_mx_named_as_mail_host_is_accepted() -> None:
    topo = with_overlay("postfix-mx-mail-host.yml")
    mail = topo.host("mail")
    assert mail.role == "postfix-mx" and mail.kind == "mx" and mail.is_reference and mail.runs_smtp
    assert steven(topo).mail_host == "mail" and mail in topo.mail_servers


def test_a_backup_mx_beside_a_postfix_mx_is_accepted() -> None:
    topo = with_overlay("postfix-mx-backup.yml")
    assert [(x.preference, x.exchange) for x in steven(topo).mx] == [(10, "mail.stevenchoy.example"),
                                                                   (20, "mx2.stevenchoy.example")]
    assert topo.backup_mx(steven(topo)) == ("mx2",)
    cfg = topo.lab_config("t", topo.host("mx2"))
    assert cfg.is_backup_mx("stevenchoy.example")


def test_a_postfix_mta_named_as_backup_mx_is_accepted() -> None:
    topo = with_overlay("postfix-mta-backup-mx.yml")
    assert topo.host("smtp").role == "postfix-mta"
    assert topo.backup_mx(steven(topo)) == ("smtp",)


def test_a_reference_peer_that_runs_no_smtp_server_is_still_refused_as_mx() -> None:
    text = "swap:\n  ns: nsd-dns\ndomains:\n  stevenchoy.example:\n    mx: ['10 ns.lab.example']\n"
    with pytest.raises(SourceError, match=r"overlay.yml:5: MX ns.lab.example .* \(role nsd-dns\), which runs no "
                                          "SMTP server"):
        topology.load_overlay(BASE, Path("overlay.yml"), text)


def test_an_overlay_is_checked_with_the_whole_lab_and_blamed_on_its_line() -> None:
    # An MX naming a host the same overlay adds, which runs no SMTP server (a MUA host).
    text = "hosts:\n  ghost:\n    hostname: ghost.stevenchoy.example\n    role: mua\n" \
           "    user: betty@stevenchoy.example\ndomains:\n  stevenchoy.example:\n" \
           "    mx: ['10 ghost.stevenchoy.example']\n"
    with pytest.raises(SourceError, match="overlay.yml:8: .*which runs no SMTP server"):
        topology.load_overlay(BASE, Path("overlay.yml"), text)


def test_a_live_dns_change_is_checked_by_the_same_rules() -> None:
    base = with_overlay("postfix-mx-mail-host.yml")
    doc = yamlsource.load(Path("s.yml"), "dns:\n  domain: stevenchoy.example\n  mx: ['10 mail.stevenchoy.example',"
                                          " '20 smtp.ouhk.example']\n")
    changed = topology.change_domain(base, doc, ("dns",))
    assert changed.backup_mx(steven(changed)) == ("smtp",)
    doc = yamlsource.load(Path("s.yml"), "dns:\n  domain: stevenchoy.example\n  mx: ['10 betty.stevenchoy.example']\n")
    with pytest.raises(SourceError, match="s.yml:3: .*which runs no SMTP server"):
        topology.change_domain(base, doc, ("dns",))


def test_a_scenario_may_talk_by_hand_to_a_postfix_mx() -> None:
    sc = parse.load(ROOT / "tests" / "scenarios" / "postfix-mx-dialogue.yml")
    action = sc.steps[0].action
    assert isinstance(action, m.Dialogue) and action.server == "mail.stevenchoy.example"
    assert sc.topology.host("mail").is_reference


def test_a_scenario_in_an_nsd_lab_finds_its_name_server() -> None:
    sc = parse.load(ROOT / "tests" / "scenarios" / "nsd-dns.yml")
    assert sc.topology.nameserver.role == "nsd-dns"


def test_the_queue_of_a_postfix_mta_is_not_ours_to_read() -> None:
    text = "name: t\ndescription: d\ngoal: g\ntopology:\n  swap: {smtp: postfix-mta}\n" \
           "steps:\n  - expect: {queue: {empty: true}}\n"
    with pytest.raises(SourceError, match="s.yml:7: this lab has no mta host of ours"):
        parse.load(Path("s.yml"), text)


def test_traffic_hides_the_probe_of_an_nsd_name_server_too() -> None:
    nsd = topology.load_overlay(BASE, ROOT / "compose" / "reference" / "dns.yml")
    hosts = [(h.name, h.fqdn, h.kind, str(h.address)) for h in nsd.hosts]
    assert probe_addresses(hosts) == {"10.89.0.53"}
    assert names_from_hosts(hosts)["10.89.0.53"] == "ns.lab.example"
    assert names_from_hosts(hosts)["10.89.0.10"] == "andy"


def test_the_up_hint_names_the_hosts_of_the_lab_that_is_up() -> None:
    from labctl import cli

    text = topology.DEFAULT_TOPOLOGY.read_text().replace("ouhk.example", "school.test").replace(
        "stevenchoy.example", "home.test")
    hint = cli._try_hint(topology.load(topology.DEFAULT_TOPOLOGY, text), "lab2")
    assert hint == ("Try: [bold]labctl shell andy --lab lab2[/], then `dig MX home.test` or "
                    "`telnet smtp.school.test 25`")
