"""Labs with reference peers that the topology refused or the runner broke on (issue 11), on the engine.

Each overlay of tests/overlays/ goes through `labctl up --overlay FILE` as a user would type it; the
two scenarios of tests/scenarios/ through `labctl run`. The reference image is built on first use,
as for tests/lab/test_interop.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.lab.conftest import labctl, unique_lab

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "tests" / "overlays"
SCENARIOS = ROOT / "tests" / "scenarios"


@pytest.fixture
def overlay_lab(client: docker.DockerClient, image: str) -> Iterator[Any]:
    """Bring up a lab with an overlay of tests/overlays/; every lab it made goes at the end."""
    made: list[str] = []

    def up(name: str) -> str:
        lab = unique_lab("kind")
        made.append(lab)
        labctl("up", "--lab", lab, "--overlay", str(OVERLAYS / name))
        return lab

    yield up
    for lab in made:
        labctl("down", "--lab", lab, check=False)


def roles(lab: str) -> dict[str, str]:
    hosts = json.loads(labctl("status", "--lab", lab, "--json").stdout)[lab]
    assert all(h["state"] == "running" for h in hosts), hosts
    return {h["name"]: h["role"] for h in hosts}


def lab_json(lab: str, host: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(labctl("exec", "--lab", lab, host, "--", "cat", "/etc/maillab/lab.json").stdout)
    return config


def domain(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in config["domains"] if d["name"] == name)
    return found


def mx_of(lab: str, name: str) -> list[str]:
    answer = labctl("exec", "--lab", lab, "andy", "--", "dig", "+short", "MX", name).stdout.split("\n")
    return sorted(x for x in answer if x)


def test_a_postfix_mx_named_as_mail_host_comes_up(overlay_lab: Any) -> None:
    lab = overlay_lab("postfix-mx-mail-host.yml")
    assert roles(lab)["mail"] == "postfix-mx"
    assert domain(lab_json(lab, "mail"), "stevenchoy.example")["mail_host"] == "mail"
    # Postfix says who it is on port 25 of the host that keeps betty's mailbox.
    greeting = labctl("exec", "--lab", lab, "andy", "--", "swaks", "--server", "mail.stevenchoy.example",
                      "--quit-after", "CONNECT").stdout
    assert "ESMTP Postfix" in greeting


def test_a_backup_mx_beside_a_postfix_mx_comes_up(overlay_lab: Any) -> None:
    lab = overlay_lab("postfix-mx-backup.yml")
    assert roles(lab)["mail"] == "postfix-mx" and roles(lab)["mx2"] == "mta"
    assert mx_of(lab, "stevenchoy.example") == ["10 mail.stevenchoy.example.", "20 mx2.stevenchoy.example."]
    assert domain(lab_json(lab, "mx2"), "stevenchoy.example")["backup_mx"] == ["mx2"]


def test_a_postfix_mta_as_backup_mx_comes_up(overlay_lab: Any) -> None:
    lab = overlay_lab("postfix-mta-backup-mx.yml")
    assert roles(lab)["smtp"] == "postfix-mta"
    assert mx_of(lab, "stevenchoy.example") == ["10 mail.stevenchoy.example.", "20 smtp.ouhk.example."]
    assert domain(lab_json(lab, "smtp"), "stevenchoy.example")["backup_mx"] == ["smtp"]
    # As a backup MX it takes stevenchoy.example's mail from a host that is no relay client of it
    # (relay_domains); before, Postfix answered "554 5.7.1 Relay access denied".
    dialogue = labctl("exec", "--lab", lab, "mail", "--", "swaks", "--server", "smtp.ouhk.example",
                      "--from", "x@stevenchoy.example", "--to", "betty@stevenchoy.example",
                      "--quit-after", "RCPT", check=False).stdout
    assert "<-  250 2.1.5 Ok" in dialogue, dialogue


def run(*args: str) -> dict[str, Any]:
    proc = labctl("run", "--json", *args, check=False)
    (result,) = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["status"] == "passed", f"{result['message']}\n{proc.stderr[-3000:]}"
    return dict(result)


def test_a_scenario_talks_smtp_by_hand_to_a_postfix_mx(client: docker.DockerClient, image: str) -> None:
    result = run(str(SCENARIOS / "postfix-mx-dialogue.yml"))
    assert [s["status"] for s in result["steps"]] == ["passed", "passed"]


def test_a_scenario_runs_in_an_nsd_lab_and_traffic_hides_its_probe(client: docker.DockerClient, image: str) -> None:
    result = run("--keep", str(SCENARIOS / "nsd-dns.yml"))
    lab = result["lab"]
    try:
        assert roles(lab)["ns"] == "nsd-dns"
        # The readiness probe runs on the name server (NSD's host here): lab machinery, shown only with --all.
        everything = json.loads(labctl("traffic", "--lab", lab, "--json", "--all").stdout)
        assert any(c["client"]["name"] == "ns.lab.example" for c in everything)
        shown = json.loads(labctl("traffic", "--lab", lab, "--json").stdout)
        assert shown and not any(c["client"]["name"] == "ns.lab.example" for c in shown)
    finally:
        labctl("down", "--lab", lab, check=False)


def test_an_outside_client_gets_530_on_the_submission_port(client: docker.DockerClient, image: str) -> None:
    """The MUA hosts may send on 587 without AUTH; compose/outsider.yml's host may not (issue 14)."""
    lab = unique_lab("out")
    try:
        labctl("up", "--lab", lab, "--overlay", str(ROOT / "compose" / "outsider.yml"))
        assert roles(lab)["outsider"] == "client"

        def swaks(*extra: str) -> str:
            ran = labctl("exec", "outsider", "--lab", lab, "--", "swaks", "--server", "smtp.ouhk.example",
                         "--to", "betty@stevenchoy.example", "--from", "carol@elsewhere.example", *extra,
                         check=False)
            return ran.stdout + ran.stderr
        assert "<** 530 5.7.0 Authentication required" in swaks("--port", "587")
        assert "<** 550 5.7.1 <betty@stevenchoy.example>... Relaying denied" in swaks("--port", "25")
        authed = swaks("--port", "587", "--auth", "PLAIN", "--auth-user", "andy@ouhk.example",
                       "--auth-password", "andy-secret")
        assert "235 2.7.0 Authentication successful" in authed and "250 2.0.0 " in authed, authed
    finally:
        labctl("down", "--lab", lab, check=False)
