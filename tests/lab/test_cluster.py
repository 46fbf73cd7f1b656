"""Labs over two real Docker engines (issue 16): docker-in-docker nodes joined in a Swarm, made by
`labctl cluster create --nodes 2` once for the module (the `cluster` fixture, tests/lab/conftest.py).

Step A: labs each whole on one engine, placed, found and removed by asking both engines.
Step B: one lab split over both nodes on an attachable overlay; a message crosses the nodes.
Every command is the real `labctl` with `--engines` naming the cluster's engines file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from labctl import enginesfile
from labctl.fleet import Fleet
from labctl.plan import LABEL_LAB

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent.parent


def labctl(engines: Path, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    words = list(args)
    cut = words.index("--") if "--" in words else len(words)  # labctl's options go before a command's `--`
    words[cut:cut] = ["--engines", str(engines)]
    done = subprocess.run([sys.executable, "-m", "labctl", *words], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"labctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def status_all(engines: Path) -> dict[str, Any]:
    return dict(json.loads(labctl(engines, "status", "--all", "--json").stdout))


def leftovers(engines: Path, prefix: str) -> list[str]:
    """Every container, network and volume of labs named ``prefix*`` on any engine of the file."""
    fleet = Fleet(enginesfile.parse(engines, engines.read_text()))
    found: list[str] = []
    for name in fleet.names():
        e = fleet.engine(name)
        found += [f"{name}: container {c.name}" for c in e.containers({LABEL_LAB: ""})
                  if c.labels[LABEL_LAB].startswith(prefix)]
        found += [f"{name}: network {n.name}" for n in e.networks({LABEL_LAB: ""})
                  if n.labels[LABEL_LAB].startswith(prefix)]
        found += [f"{name}: volume {v}" for v in e.volumes({LABEL_LAB: ""}) if v.startswith(prefix)]
    return found


def carries_a_message(engines: Path, lab: str) -> str:
    """andy sends to betty; betty fetches it by POP3: the message's subject as fetched."""
    subject = f"cluster {uuid.uuid4().hex[:8]}"
    labctl(engines, "send", "--lab", lab, "--from", "andy", "--to", "betty@stevenchoy.example",
           "--subject", subject, "--body", "over the engines")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        box = labctl(engines, "mailbox", "betty", "--server", "--json", "--lab", lab, check=False)
        if subject in box.stdout:
            break
        time.sleep(0.5)
    fetched = labctl(engines, "fetch", "--lab", lab, "betty")
    assert "fetched 1 new message" in fetched.stdout, fetched.stdout
    box = labctl(engines, "mailbox", "betty", "--json", "--lab", lab)  # betty's own Maildir, on her host
    assert subject in box.stdout, box.stdout
    return subject


# -- step A: many labs, each whole on one engine -------------------------------------------------


def test_two_labs_go_to_two_engines_and_each_carries_a_message(cluster: Path) -> None:
    up = labctl(cluster, "up", "--labs", "cl-a,cl-b")
    assert "2 of 2 labs up" in up.stdout, up.stdout
    try:
        labs = status_all(cluster)["labs"]
        assert {labs["cl-a"]["running"], labs["cl-b"]["running"]} == {5}
        engines = {tuple(labs[n]["engines"]) for n in ("cl-a", "cl-b")}
        assert engines == {("node1",), ("node2",)}, labs  # the emptier engine each time
        for lab in ("cl-a", "cl-b"):
            carries_a_message(cluster, lab)
        # A scenario in each lab, one JUnit file with a test case per lab.
        junit = cluster.parent / "labs.xml"
        ran = labctl(cluster, "run", "--labs", "cl-a,cl-b", "--junit", str(junit),
                     str(ROOT / "tests" / "scenarios" / "cluster-mail.yml"))
        assert "2 of 2 labs passed" in ran.stdout, ran.stdout + ran.stderr
        text = junit.read_text()
        assert 'name="Mail across the engines [cl-a]"' in text and 'name="Mail across the engines [cl-b]"' in text
        assert 'failures="0"' in text
    finally:
        down = labctl(cluster, "down", "--labs", "cl-a,cl-b")
    assert "2 of 2 labs removed" in down.stdout, down.stdout
    assert leftovers(cluster, "cl-") == []


def test_a_command_for_a_lab_on_no_engine_says_which_labs_there_are(cluster: Path) -> None:
    missing = labctl(cluster, "exec", "--lab", "cl-nowhere", "andy", "--", "true", check=False)
    assert missing.returncode == 1
    assert "lab 'cl-nowhere' is on none of the engines in" in missing.stderr and "labctl up --lab" in missing.stderr


def test_an_engine_added_by_hand_with_tls_answers_and_is_listed(cluster: Path, tmp_path: Path) -> None:
    node1 = enginesfile.parse(cluster, cluster.read_text()).get("node1")
    assert node1.tls is not None
    mine = tmp_path / "mine.yml"
    added = labctl(mine, "engines", "add", "room-a", node1.url, "--capacity", "3", "--tls-ca", str(node1.tls.ca),
                   "--tls-cert", str(node1.tls.cert), "--tls-key", str(node1.tls.key))
    assert "engine room-a answers at" in added.stderr and "up to 3 labs" in added.stdout
    listed = labctl(mine, "engines", "list")
    assert "room-a" in listed.stdout and "did not answer" not in listed.stdout and "MiB" in listed.stdout
    without = labctl(tmp_path / "no-tls.yml", "engines", "add", "bare", node1.url, check=False)
    assert without.returncode == 1 and "cannot reach the Docker engine" in without.stderr  # TLS is required
    labctl(mine, "engines", "remove", "room-a")
    assert "room-a" not in mine.read_text()


# -- step B: one lab over both nodes ------------------------------------------------------------


def test_one_lab_split_over_two_nodes(cluster: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "split.yml"
    overlay.write_text("placement: {ns: node1, smtp: node1, andy: node1, mail: node2, betty: node2}\n")
    lab = "cl-split"
    up = labctl(cluster, "up", "--lab", lab, "--overlay", str(overlay), timeout=300)
    assert "a Swarm overlay" in up.stderr, up.stderr
    try:
        hosts = {h["name"]: h for h in json.loads(labctl(cluster, "status", "--lab", lab, "--json").stdout)[lab]}
        assert {n: h["engine"] for n, h in hosts.items()} == {
            "ns": "node1", "smtp": "node1", "andy": "node1", "mail": "node2", "betty": "node2"}

        # A message from andy (node1) through smtp (node1) to mail (node2), fetched by betty (node2).
        subject = carries_a_message(cluster, lab)
        traffic = json.loads(labctl(cluster, "traffic", "--lab", lab, "--json").stdout)
        relay = [c for c in traffic if c["protocol"] == "smtp" and (c["server"]["name"] or "").startswith("mail.")
                 and subject in json.dumps(c)]
        assert relay, [(c["protocol"], c["client"], c["server"]) for c in traffic]
        assert {"smtp", "mail"} <= set(relay[0]["vantages"]), relay[0]["vantages"]  # both nodes' captures

        # A host on node2 stopped and started keeps its address and serves again.
        address = hosts["mail"]["address"]
        labctl(cluster, "stop", "--lab", lab, "mail")
        labctl(cluster, "start", "--lab", lab, "mail")
        again = {h["name"]: h for h in json.loads(labctl(cluster, "status", "--lab", lab, "--json").stdout)[lab]}
        assert again["mail"]["address"] == address and again["mail"]["state"] == "running"

        # A scenario across the nodes, in this lab.
        ran = labctl(cluster, "run", "--lab", lab, str(ROOT / "tests" / "scenarios" / "cluster-mail.yml"))
        assert ran.returncode == 0, ran.stderr
    finally:
        labctl(cluster, "down", "--lab", lab)
    assert leftovers(cluster, "cl-split") == []
