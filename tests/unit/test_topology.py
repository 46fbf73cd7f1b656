"""Topology parsing: the shipped file, and every class of error with its line number."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from labctl import topology
from labctl.errors import LabctlError, SourceError
from labctl.lab import check_lab_name

LAB_YML = topology.DEFAULT_TOPOLOGY.read_text()


def load_text(text: str) -> topology.Topology:
    return topology.load(Path("lab.yml"), text)


def error_of(text: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        load_text(text)
    return info.value


def line_of(needle: str, text: str = LAB_YML, nth: int = 0) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[nth]


def test_shipped_topology_has_the_five_hosts_of_the_article() -> None:
    topo = topology.load()
    roles = {h.name: (h.fqdn, h.role, str(h.address)) for h in topo.hosts}
    assert roles == {
        "ns": ("ns.lab.example", "dns", "10.89.0.53"),
        "smtp": ("smtp.ouhk.example", "mta", "10.89.0.25"),
        "mail": ("mail.stevenchoy.example", "mx", "10.89.0.110"),
        "andy": ("andy.ouhk.example", "mua", "10.89.0.10"),
        "betty": ("betty.stevenchoy.example", "mua", "10.89.0.20"),
    }
    assert topo.subnet == ipaddress.IPv4Network("10.89.0.0/24")
    steven = next(d for d in topo.domains if d.name == "stevenchoy.example")
    assert steven.mail_host == "mail"
    assert [(m.preference, m.exchange) for m in steven.mx] == [(10, "mail.stevenchoy.example")]
    assert dict(steven.users) == {"betty": "betty-secret"}
    assert topo.retry.schedule == (5.0, 10.0, 20.0, 40.0)


def test_lab_config_carries_accounts_and_mua_settings() -> None:
    topo = topology.load()
    cfg = topo.lab_config("maillab", topo.host("betty"))
    assert cfg.me == "betty"
    assert cfg.nameserver == "10.89.0.53"
    assert cfg.mua is not None and cfg.mua.user == "betty@stevenchoy.example"
    assert cfg.mua.pop3 == "mail.stevenchoy.example"
    account = cfg.account("Betty@StevenChoy.example")
    assert account is not None and account.password == "betty-secret"
    assert cfg.is_relay_client("10.89.0.10")  # andy, a MUA host
    assert not cfg.is_relay_client("10.89.0.110")  # the MX is "the Internet" to the MTA
    # the JSON round-trip is the contract with the services
    import json

    from services.config import LabConfig

    assert LabConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_a_clear_labs_config_has_no_tls_key_so_its_digests_stay_as_they_were() -> None:
    import dataclasses
    import json

    from services.config import LabConfig, TlsSettings

    topo = topology.load()
    cfg = topo.lab_config("maillab", topo.host("mail"))
    assert "tls" not in json.loads(cfg.to_json())
    on = dataclasses.replace(cfg, tls=TlsSettings(enabled=True, auth_needs_tls=False, relay="verify"))
    assert json.loads(on.to_json())["tls"] == {"enabled": True, "auth_needs_tls": False, "relay": "verify"}
    assert LabConfig.from_dict(json.loads(on.to_json())) == on


def test_with_subnet_keeps_host_numbers() -> None:
    topo = topology.load().with_subnet(ipaddress.IPv4Network("10.89.7.0/24"))
    assert str(topo.host("smtp").address) == "10.89.7.25"
    assert str(topo.nameserver.address) == "10.89.7.53"
    with pytest.raises(ValueError):
        topology.load().with_subnet(ipaddress.IPv4Network("10.89.7.0/26"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    hostname: smtp.ouhk.example", "    hostnmae: smtp.ouhk.example",
         "unknown key 'hostnmae' in service 'smtp'; valid keys: hostname, command, networks, environment, labels"),
        ("    command: mta", "    command: sendmail",
         "command 'sendmail' is not a lab role; valid roles: dns, mta, mx, mua"),
        ("        ipv4_address: 10.89.0.25", "        ipv4_address: 10.99.0.25",
         "ipv4_address 10.99.0.25 is not a host address in 10.89.0.0/24"),
        ("        ipv4_address: 10.89.0.25", "        ipv4_address: 10.89.0.53",
         "ipv4_address 10.89.0.53 is also used by 'ns'"),
        ("        ipv4_address: 10.89.0.25", "        ipv4_address: 10.89.0.1",
         "is the network's gateway"),
        ("        ipv4_address: 10.89.0.25", "        ipv4_address: not-an-ip",
         "ipv4_address:"),
        ("    hostname: smtp.ouhk.example", "    hostname: smtp.ouhk.com",
         "is not under a reserved test name"),
        ("    internal: true ", "    internal: false ", "internal must be true"),
        ("        - subnet: 10.89.0.0/24", "        - subnet: 10.89.0.0/33", "subnet:"),
        ("        - subnet: 10.89.0.0/24", "        - subnet: 8.8.0.0/24", "is not a private range"),
        ("      mail_host: mail", "      mail_host: betty",
         "mail_host 'betty' must name an mta or mx host; valid choices: smtp, mail"),
        ('      mx: ["10 mail.stevenchoy.example"]', '      mx: ["ten mail.stevenchoy.example"]',
         "must be 'PREFERENCE HOST'"),
        ('      mx: ["10 mail.stevenchoy.example"]', '      mx: ["0 .", "10 mail.stevenchoy.example"]',
         "a null MX"),
        ("    schedule: [5, 10, 20, 40]", "    schedule: [5, -10]",
         "a retry interval must be a positive number of seconds"),
        ("      MAIL_USER: betty@stevenchoy.example", "      MAIL_USER: carol@stevenchoy.example",
         "MAIL_USER 'carol@stevenchoy.example' is not a lab account"),
        ("        betty: betty-secret", "        Betty!: betty-secret", "user name 'Betty!'"),
    ],
)
def test_bad_values_name_the_line(old: str, new: str, message: str) -> None:
    assert old in LAB_YML, old
    text = LAB_YML.replace(old, new, 1)
    err = error_of(text)
    assert message in err.message
    assert err.line == LAB_YML[: LAB_YML.index(old)].count("\n") + 1, str(err)
    assert str(err).startswith(f"lab.yml:{err.line}: ")


def test_unknown_top_level_key_lists_the_valid_ones() -> None:
    err = error_of(LAB_YML + "volumes:\n  data: {}\n")
    assert err.line == len(LAB_YML.splitlines()) + 1
    valid = "valid keys: name, version, x-maillab, networks, services"
    assert f"unknown key 'volumes' in the topology; {valid}" in err.message


def test_duplicate_key_is_an_error_not_last_one_wins() -> None:
    text = LAB_YML.replace("    command: mta\n", "    command: mta\n    command: mx\n", 1)
    err = error_of(text)
    assert "duplicate key 'command'" in err.message
    assert err.line == line_of("command: mx", text)


def test_invalid_yaml_reports_where() -> None:
    err = error_of("services:\n  ns: [unclosed\n")
    assert err.line == 3 and "not valid YAML" in err.message


def test_missing_sections_and_dns_host() -> None:
    assert "no 'services' section" in error_of("networks: {}\n").message
    no_dns = LAB_YML.replace("    command: dns", "    command: mua")
    assert "exactly one host with command: dns" in error_of(no_dns).message


def test_wrong_shape_is_explained() -> None:
    err = error_of(LAB_YML.replace("    command: mta\n", "    command: mta\n    environment: 12\n", 1))
    assert "environment must be a mapping (key: value), not a number" in err.message


def test_environment_as_list_is_compose_compatible() -> None:
    text = LAB_YML.replace(
        "    environment:\n      MAIL_USER: andy@ouhk.example\n      MAIL_SMTP: smtp.ouhk.example\n"
        "      MAIL_POP3: smtp.ouhk.example\n",
        "    environment:\n      - MAIL_USER=andy@ouhk.example\n      - MAIL_SMTP=smtp.ouhk.example\n"
        "      - MAIL_POP3=smtp.ouhk.example\n",
    )
    assert load_text(text).host("andy").env["MAIL_SMTP"] == "smtp.ouhk.example"


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read the file"):
        topology.load(tmp_path / "nope.yml")


def test_files_travel_in_the_environment_and_only_under_maillab(tmp_path: Path) -> None:
    from services import config as svc

    files = {"maillab/lab.json": '{"x": 1}', "maillab/zones/a.zone": "$ORIGIN a.\n"}
    written = svc.materialize_files({svc.FILES_ENV: svc.encode_files(files)}, root=tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(files)
    assert (tmp_path / "maillab/zones/a.zone").read_text() == "$ORIGIN a.\n"
    assert svc.materialize_files({}, root=tmp_path) == []
    for bad in ("passwd", "maillab/../passwd", "/etc/maillab/x"):
        with pytest.raises(svc.ConfigError, match="only files under maillab/"):
            svc.materialize_files({svc.FILES_ENV: svc.encode_files({bad: "x"})}, root=tmp_path)
    with pytest.raises(svc.ConfigError, match="not valid JSON"):
        svc.materialize_files({svc.FILES_ENV: "{"}, root=tmp_path)


MX_SERVICE = "    hostname: mail.stevenchoy.example\n    command: mx\n"


def with_tmpfs(value: str, service: str = MX_SERVICE) -> str:
    assert service in LAB_YML
    return LAB_YML.replace(service, f"{service}    tmpfs: {value}\n", 1)


def test_tmpfs_gives_a_mail_directory_a_small_disk() -> None:
    topo = load_text(with_tmpfs("[/var/mail/maillab:size=2m]"))
    assert topo.host("mail").tmpfs == (("/var/mail/maillab", "size=2m"),)
    assert topo.host("smtp").tmpfs == ()
    both = load_text(with_tmpfs('"/var/spool/maillab:size=512k"'))  # Compose also allows one string
    assert both.host("mail").tmpfs == (("/var/spool/maillab", "size=512k"),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[/etc:size=1m]", "tmpfs '/etc': only the mail directories may be a tmpfs: /var/mail/maillab, "
                           "/var/spool/maillab"),
        ("[/var/mail/maillab]", "needs a size and nothing else, e.g. '/var/mail/maillab:size=2m'"),
        ('["/var/mail/maillab:size=2m,exec"]', "needs a size and nothing else"),
        ("[/var/mail/maillab:size=0]", "needs a size and nothing else"),
        ("[/var/mail/maillab:size=1m, /var/mail/maillab:size=2m]", "tmpfs /var/mail/maillab is given twice"),
        ("{size: 1m}", "tmpfs must be a list like ['/var/mail/maillab:size=2m'], not a mapping"),
    ],
)
def test_bad_tmpfs_is_explained_with_its_line(value: str, message: str) -> None:
    text = with_tmpfs(value)
    err = error_of(text)
    assert message in err.message, err.message
    assert err.line == line_of("tmpfs:", text)


def test_tmpfs_only_on_mail_servers() -> None:
    text = with_tmpfs("[/var/mail/maillab:size=1m]", "    hostname: andy.ouhk.example\n    command: mua\n")
    assert "tmpfs is for the mail servers' directories; a mua host has none" in error_of(text).message


@pytest.mark.parametrize("name", ["maillab", "sc-journey-4f2a1c", "Lab_2.b", "x" * 48])
def test_lab_names_docker_accepts(name: str) -> None:
    check_lab_name(name)


@pytest.mark.parametrize("name", ["Bad_Name!", "-lab", ".lab", "", "x" * 49, "lab name", "lab/1", "läb"])
def test_lab_names_docker_refuses_are_refused_first(name: str) -> None:
    with pytest.raises(LabctlError, match="letters, digits, '-', '_' or '.'"):
        check_lab_name(name)


# -- a lab split over several engines: the overlay's corner and x-maillab.placement ------------

def test_the_engines_corner_of_a_subnet_is_its_top_sixteenth() -> None:
    from labctl.subnets import node_range
    assert str(node_range(ipaddress.IPv4Network("10.89.0.0/24"))) == "10.89.0.240/28"
    assert str(node_range(ipaddress.IPv4Network("10.89.0.0/16"))) == "10.89.240.0/20"
    assert str(node_range(ipaddress.IPv4Network("10.89.0.16/28"))) == "10.89.0.28/30"
    # No shipped host sits there, so every lab can be split without renumbering.
    topo = topology.load()
    assert not any(h.address in node_range(topo.subnet) for h in topo.hosts)


def test_a_static_address_in_the_engines_corner_is_refused_with_its_line() -> None:
    old = "        ipv4_address: 10.89.0.25"
    err = error_of(LAB_YML.replace(old, "        ipv4_address: 10.89.0.241", 1))
    assert err.line == line_of(old)
    assert "10.89.0.241 is in 10.89.0.240/28, kept for the engines' own addresses" in err.message
    assert "pick one below 10.89.0.240" in err.message


PLACED = LAB_YML.replace("x-maillab:\n", "x-maillab:\n  placement: {mail: node2, betty: node2}\n", 1)


def test_placement_puts_named_hosts_on_named_engines_in_topology_order() -> None:
    assert "placement:" in PLACED
    topo = load_text(PLACED)
    assert topo.placement == (("mail", "node2"), ("betty", "node2"))
    assert topo.placed_on("mail") == "node2"
    assert topo.placed_on("smtp") is None
    assert topology.load().placement == ()


@pytest.mark.parametrize(("value", "message"), [
    ("{carol: node2}", "placement names host 'carol', which is not in the lab; hosts: ns, smtp, mail, andy, betty"),
    ("{mail: Node_2}", "placement of mail: 'Node_2' is not an engine name"),
    ("{mail: [node2]}", "is not an engine name"),
    ("[mail]", "placement (host: engine name)"),
])
def test_a_bad_placement_names_its_line(value: str, message: str) -> None:
    text = LAB_YML.replace("x-maillab:\n", f"x-maillab:\n  placement: {value}\n", 1)
    err = error_of(text)
    assert message in err.message, err.message
    assert err.line == line_of("placement:", text)
