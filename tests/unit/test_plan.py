"""What each host is made of, planned from the topology before any engine is asked (labctl.plan)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from labctl import topology
from labctl.errors import LabctlError
from labctl.plan import CAPABILITIES, LABEL_CONFIG, LABEL_HOST, LABEL_LAB, LABEL_ROLE, LABEL_USER, plan
from services import config as svc


def test_every_host_gets_a_container_on_the_lab_network_at_its_address() -> None:
    topo = topology.load()
    plans = plan("lab1", topo, "maillab:1")
    assert set(plans) == {h.name for h in topo.hosts}
    for host in topo.hosts:
        spec = plans[host.name].container
        assert spec.name == f"lab1-{host.name}" and spec.image == "maillab:1"
        assert spec.command == (host.role,) and spec.hostname == host.fqdn
        assert (spec.network, spec.address, spec.aliases) == (f"lab1-{topo.network}", str(host.address), (host.fqdn,))
        assert spec.dns == (str(topo.nameserver.address),)  # every lookup goes to the lab DNS (the seal)
        assert spec.cap_add == CAPABILITIES
        assert spec.labels[LABEL_LAB] == "lab1" and spec.labels[LABEL_HOST] == host.name
        assert spec.labels[LABEL_ROLE] == host.role and spec.labels[LABEL_CONFIG] == plans[host.name].digest


def test_the_files_a_host_reads_travel_in_its_environment(tmp_path: Path) -> None:
    topo = topology.load()
    plans = plan("lab1", topo, "maillab:1")

    def written(host: str) -> set[str]:  # as the host's role writes them at start
        root = tmp_path / host
        paths = svc.materialize_files(dict(plans[host].container.environment), root)
        return {str(p.relative_to(root)) for p in paths}

    assert any(name.startswith("maillab/zones/") for name in written(topo.nameserver.name))
    mta = next(h for h in topo.hosts if h.kind == "mta")
    assert written(mta.name) == {"maillab/lab.json"}  # only the name server gets zone files
    assert json.loads((tmp_path / mta.name / "maillab/lab.json").read_text())["me"] == mta.name


def test_mail_servers_keep_queue_and_mailboxes_in_volumes_and_muas_are_labelled_with_their_user() -> None:
    topo = topology.load()
    plans = plan("lab1", topo, "maillab:1")
    for host in topo.hosts:
        spec = plans[host.name].container
        if host.kind in ("mta", "mx"):
            assert set(spec.volumes.values()) == {str(svc.SPOOL_DIR), str(svc.MAIL_DIR)}
            assert all(v.startswith(f"lab1-{host.name}-") for v in spec.volumes)
        else:
            assert spec.volumes == {}
        if "MAIL_USER" in host.env:
            assert spec.labels[LABEL_USER] == host.env["MAIL_USER"]


def test_the_digest_changes_with_the_image_the_subnet_and_a_tmpfs_and_nothing_else() -> None:
    topo = topology.load()
    first = {n: p.digest for n, p in plan("lab1", topo, "maillab:1").items()}
    assert first == {n: p.digest for n, p in plan("lab1", topo, "maillab:1").items()}  # pure: same in, same out
    assert first != {n: p.digest for n, p in plan("lab1", topo, "maillab:2").items()}
    moved = topo.with_subnet(ipaddress.IPv4Network("10.89.7.0/24"))
    assert all(first[n] != p.digest for n, p in plan("lab1", moved, "maillab:1").items())


def test_a_host_whose_image_was_not_given_is_refused_with_how_to_build_it() -> None:
    topo = topology.load()
    with pytest.raises(LabctlError, match="labctl image build --reference"):
        plan("lab1", topo, {"reference": "maillab-reference:1"})
