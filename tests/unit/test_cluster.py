"""labctl.cluster's pure choices: node containers, addresses, the engines file and its refusals.

The shell (create/delete/status on a real engine) is tests/lab/test_cluster_nodes.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from labctl import cluster, enginesfile, subnets
from labctl.enginesfile import EngineEntry, Engines
from labctl.errors import LabctlError

BUILD_HOST = [ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "203.0.113.0/24", "10.255.0.0/16")]


def test_a_node_is_a_docker_engine_without_privileged() -> None:
    subnet = ipaddress.IPv4Network("10.88.3.0/24")
    node = cluster.plan_nodes("maillab-node", subnet, 2)[1]
    spec = cluster.node_spec("maillab-node", node, "maillab-node:abc")
    assert (spec.name, spec.hostname, spec.image) == ("maillab-node2", "node2", "maillab-node:abc")
    assert spec.cap_add == ("ALL",) and spec.cap_drop == ("SYS_RESOURCE",)
    assert set(spec.security_opt) == {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}
    assert set(spec.device_cgroup_rules) == {"c *:* rwm", "b *:* rwm"}
    assert spec.volumes == {"maillab-node2-docker": "/var/lib/docker"}
    assert spec.volume_labels == {cluster.LABEL_CLUSTER: "maillab-node"}
    assert spec.labels == {cluster.LABEL_CLUSTER: "maillab-node", cluster.LABEL_NODE: "node2",
                           cluster.LABEL_NODE_ADDRESS: "10.88.3.12"}
    assert (spec.network, spec.address) == ("maillab-node-net", "10.88.3.12")
    assert spec.command == ()  # the image's own entrypoint: dockerd after the cgroup remount


def test_an_in_memory_node_keeps_its_docker_store_on_a_tmpfs_and_has_no_volume() -> None:
    node = cluster.plan_nodes("maillab-node", ipaddress.IPv4Network("10.88.0.0/24"), 1)[0]
    spec = cluster.node_spec("maillab-node", node, "maillab-node:abc", in_memory=True)
    assert spec.volumes == {}
    options = spec.tmpfs["/var/lib/docker"].split(",")
    assert {"exec", "dev", "suid"} <= set(options) and any(o.startswith("size=") for o in options)


def test_nodes_are_numbered_from_one_at_fixed_host_numbers() -> None:
    nodes = cluster.plan_nodes("cn-x", ipaddress.IPv4Network("10.88.0.0/24"), 3)
    assert [(n.name, n.container, n.address, n.url) for n in nodes] == [
        ("node1", "cn-x1", "10.88.0.11", "tcp://10.88.0.11:2376"),
        ("node2", "cn-x2", "10.88.0.12", "tcp://10.88.0.12:2376"),
        ("node3", "cn-x3", "10.88.0.13", "tcp://10.88.0.13:2376"),
    ]


def test_the_nodes_bridge_avoids_taken_networks_the_build_host_and_the_labs() -> None:
    taken = [subnets.Taken(ipaddress.IPv4Network("10.88.0.0/24"), "docker network other")]
    subnet = subnets.free_subnet(cluster.NODE_PREFIXLEN, taken, cluster.NODE_SEARCH)
    assert subnet == ipaddress.IPv4Network("10.88.1.0/24")
    every_node = cluster.plan_nodes("p", subnet, cluster.MAX_NODES)
    assert all(ipaddress.IPv4Address(n.address) in subnet for n in every_node)
    for reserved in [*BUILD_HOST, subnets.SUBNET_SEARCH]:
        assert not cluster.NODE_SEARCH.overlaps(reserved)
    pool = ipaddress.IPv4Network(cluster.SWARM_POOL)
    for reserved in [*BUILD_HOST, subnets.SUBNET_SEARCH, cluster.NODE_SEARCH]:
        assert not pool.overlaps(reserved), reserved  # Swarm's default 10.0.0.0/8 would overlap the labs


def test_the_engines_file_names_every_node_with_node1_the_manager(tmp_path: Path) -> None:
    path = tmp_path / "engines.yml"
    nodes = cluster.plan_nodes("maillab-node", ipaddress.IPv4Network("10.88.0.0/24"), 2)
    written = enginesfile.save(cluster.cluster_engines(path, "maillab-node", nodes))
    back = enginesfile.load(str(written))
    assert back is not None
    tls = cluster.client_tls(path, "maillab-node")
    assert tls.key == tmp_path / "maillab-node-tls" / "key.pem"  # beside the engines file
    assert [(e.name, e.url, e.capacity, e.tls) for e in back.entries] == [
        ("node1", "tcp://10.88.0.11:2376", enginesfile.DEFAULT_CAPACITY // 2, tls),
        ("node2", "tcp://10.88.0.12:2376", enginesfile.DEFAULT_CAPACITY // 2, tls),
    ]
    assert (back.manager, back.cluster) == ("node1", "maillab-node")


def test_capacity_is_shared_by_the_nodes_of_one_machine() -> None:
    assert cluster.node_capacity(1) == enginesfile.DEFAULT_CAPACITY
    assert cluster.node_capacity(2) * 2 <= enginesfile.DEFAULT_CAPACITY
    assert cluster.node_capacity(cluster.MAX_NODES) >= 1


def test_a_users_own_engines_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    own = Engines(tmp_path / "engines.yml", (EngineEntry("lab-a", "ssh://me@lab-a.example"),))
    with pytest.raises(LabctlError, match=r"engines file of your own \(it has no `cluster:` key\).*--engines FILE"):
        cluster.check_engines_file(own, "maillab-node")
    other = Engines(tmp_path / "engines.yml", (), cluster="cn-other")
    with pytest.raises(LabctlError, match="labctl cluster delete --name cn-other"):
        cluster.check_engines_file(other, "maillab-node")
    cluster.check_engines_file(None, "maillab-node")  # no file: written
    cluster.check_engines_file(Engines(tmp_path / "e.yml", (), cluster="maillab-node"), "maillab-node")  # ours


class Untouched:
    """An engine that must not be asked anything: a refusal comes before any work."""

    where = "unix:///nowhere"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was asked {name} before the refusal")


def test_create_refuses_a_users_engines_file_before_touching_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "engines.yml"
    path.write_text("engines:\n  lab-a: {url: 'ssh://me@lab-a.example'}\n")
    with pytest.raises(LabctlError, match="will not write over it"):
        cluster.create(Untouched(), 2, engines_path=path)  # type: ignore[arg-type]
    assert path.read_text() == "engines:\n  lab-a: {url: 'ssh://me@lab-a.example'}\n"


def test_create_refuses_an_engines_file_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "engines.yml"
    path.write_text("engines:\n  node1: {url: 'http://x'}\n")
    with pytest.raises(LabctlError, match=r"(?s)engines.yml:2: engine URL .*will not write over an engines file"):
        cluster.create(Untouched(), 2, engines_path=path)  # type: ignore[arg-type]


@pytest.mark.parametrize("nodes", [0, -1, cluster.MAX_NODES + 1])
def test_a_node_count_out_of_range_is_refused(nodes: int, tmp_path: Path) -> None:
    with pytest.raises(LabctlError, match=f"--nodes {nodes}: a cluster on one machine has 1 to"):
        cluster.create(Untouched(), nodes, engines_path=tmp_path / "e.yml")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "Maillab", "1node", "a" * 31, "node_1", "a/b"])
def test_a_bad_cluster_name_is_refused(prefix: str) -> None:
    with pytest.raises(LabctlError, match="is not a cluster name"):
        cluster.check_prefix(prefix)


def test_each_node_gets_its_own_server_certificate_and_labctl_a_client_one(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    nodes = cluster.plan_nodes("cn-x", ipaddress.IPv4Network("10.88.0.0/24"), 2)
    tls = cluster.make_tls("cn-x", nodes)
    files = tls.node_files(nodes[1])
    assert set(files) == {f"{cluster.NODE_TLS_DIR}/{n}" for n in ("ca.pem", "server.pem", "server-key.pem")}
    server = x509.load_pem_x509_certificate(files[f"{cluster.NODE_TLS_DIR}/server.pem"])
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.88.0.12"]  # node2's address
    assert sans.get_values_for_type(x509.DNSName) == ["cn-x2"]
    client = tls.client.certificate
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    written = cluster.write_client_tls(tmp_path / "engines.yml", "cn-x", tls)
    assert written.key.stat().st_mode & 0o777 == 0o600 and written.ca.parent.stat().st_mode & 0o777 == 0o700
    assert written.ca.read_text() == tls.ca.cert_pem
