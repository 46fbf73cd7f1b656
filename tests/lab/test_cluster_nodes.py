"""`labctl cluster create --nodes 2` on the real engine: two Docker engines in containers, one Swarm
inside them, the lab image in each, an engines file naming them; `cluster delete` leaves nothing.

The `cluster` fixture (tests/lab/conftest.py) makes the cluster once for this module; the last
test deletes it, so keep it last.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import docker
import docker.errors
import docker.tls
import pytest
from docker.models.networks import Network

from labctl import enginesfile
from labctl.backend.docker_engine import DockerEngine, connect
from labctl.cluster import LABEL_CLUSTER, SWARM_POOL
from tests.lab.conftest import TEST_CLUSTER, labctl, raw_api


def nodes(engines: Path) -> dict[str, DockerEngine]:
    found = enginesfile.load(str(engines))
    assert found is not None
    return {e.name: connect(e.url, tls=e.tls) for e in found.entries}


def sdk(engines: Path, name: str) -> docker.DockerClient:
    """A docker SDK client of a node, with labctl's client certificate (the test's own probe)."""
    found = enginesfile.load(str(engines))
    assert found is not None
    entry = found.get(name)
    assert entry.tls is not None
    tls = docker.tls.TLSConfig(client_cert=(str(entry.tls.cert), str(entry.tls.key)), ca_cert=str(entry.tls.ca),
                               verify=True)
    # A version given, so that nothing is asked before $REQUESTS_CA_BUNDLE is kept out (docker-py#2433).
    client = docker.DockerClient(base_url=entry.url.replace("tcp://", "https://"), tls=tls, version="1.41")
    client.api.trust_env = False
    return client


def test_the_engines_file_names_both_nodes_and_the_manager(cluster: Path) -> None:
    found = enginesfile.load(str(cluster))
    assert found is not None
    assert found.names() == ["node1", "node2"]
    assert all(e.url.startswith("tcp://10.88.") and e.url.endswith(":2376") and e.tls is not None
               for e in found.entries)
    assert (found.manager, found.cluster) == ("node1", TEST_CLUSTER)


def test_both_nodes_answer_and_are_in_one_swarm(cluster: Path) -> None:
    engines = nodes(cluster)
    manager, worker = engines["node1"].swarm_state(), engines["node2"].swarm_state()
    assert (manager.state, manager.manager) == ("active", True)
    assert (worker.state, worker.manager) == ("active", False)
    members = {m.id: m for m in engines["node1"].swarm_nodes()}
    assert {(m.hostname, m.role, m.state) for m in members.values()} == {("node1", "manager", "ready"),
                                                                          ("node2", "worker", "ready")}
    assert worker.node_id in members  # the worker is a member of the manager's Swarm, not of another


def test_the_nodes_are_not_privileged_but_have_what_dockerd_needs(cluster: Path) -> None:
    api = raw_api()
    for c in api.containers(filters={"label": [f"{LABEL_CLUSTER}={TEST_CLUSTER}"]}):
        host = api.inspect_container(c["Id"])["HostConfig"]
        assert host["Privileged"] is False
        assert (host["CapAdd"], host["CapDrop"]) == (["ALL"], ["SYS_RESOURCE"])
        assert host["MaskedPaths"] == [] and host["ReadonlyPaths"] == []  # systempaths=unconfined
        assert set(host["SecurityOpt"]) == {"seccomp=unconfined", "apparmor=unconfined"}
        assert set(host["DeviceCgroupRules"]) == {"c *:* rwm", "b *:* rwm"}


def test_a_node_lets_in_only_a_client_with_the_clusters_certificate(cluster: Path) -> None:
    import ssl
    import urllib.error
    import urllib.request

    found = enginesfile.load(str(cluster))
    assert found is not None
    entry = found.get("node2")
    assert entry.tls is not None
    url = entry.url.replace("tcp://", "https://") + "/version"
    anonymous = ssl.create_default_context(cafile=str(entry.tls.ca))  # trusts the node, has no certificate
    anonymous.check_hostname = False
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(url, context=anonymous, timeout=5).read()
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no TLS at all: nothing answers
        urllib.request.urlopen(url.replace("https://", "http://"), timeout=5).read()
    known = ssl.create_default_context(cafile=str(entry.tls.ca))
    known.check_hostname = False
    known.load_cert_chain(str(entry.tls.cert), str(entry.tls.key))
    assert b"ApiVersion" in urllib.request.urlopen(url, context=known, timeout=5).read()


def test_the_machines_own_engine_never_enters_swarm_mode(cluster: Path, client: DockerEngine) -> None:
    assert client.swarm_state().state == "inactive"


def test_every_node_has_the_lab_image_the_machine_has(cluster: Path, client: DockerEngine, image: str) -> None:
    local = client.image_id(image)
    assert local is not None
    assert {name: e.image_id(image) for name, e in nodes(cluster).items()} == {"node1": local, "node2": local}


def test_a_container_of_the_lab_image_runs_on_node2(cluster: Path, image: str) -> None:
    node2 = sdk(cluster, "node2")
    try:
        probe = ["python3", "-c", "import socket; print('on', socket.gethostname())"]
        out = node2.containers.run(image, entrypoint=probe, hostname="cn-probe", remove=True)
    finally:
        node2.close()
    assert out.decode().strip() == "on cn-probe"


def test_an_overlay_from_the_swarms_pool_carries_packets_between_the_nodes(cluster: Path, image: str) -> None:
    """The data path (VXLAN on --data-path-addr), not only the control plane: a ping from node2 to node1."""
    node1, node2 = sdk(cluster, "node1"), sdk(cluster, "node2")
    net = node1.networks.create("cn-probe-overlay", driver="overlay", attachable=True, internal=True)
    try:
        # The manager answers the create before Swarm has allocated the subnet; under load the
        # first inspect can show no IPAM config yet (seen once in CI's run at load 6).
        deadline = time.monotonic() + 15
        while not net.attrs["IPAM"]["Config"] and time.monotonic() < deadline:
            time.sleep(0.2)
            net.reload()
        subnet = ipaddress.IPv4Network(net.attrs["IPAM"]["Config"][0]["Subnet"])
        assert subnet.subnet_of(ipaddress.IPv4Network(SWARM_POOL))  # not Swarm's default 10.0.0.0/8
        sleeper = ["sleep", "60"]
        a = node1.containers.run(image, entrypoint=sleeper, network="cn-probe-overlay", detach=True, remove=True)
        b = node2.containers.run(image, entrypoint=sleeper, network="cn-probe-overlay", detach=True, remove=True)
        try:
            a.reload()
            address = a.attrs["NetworkSettings"]["Networks"]["cn-probe-overlay"]["IPAddress"]
            code, out = b.exec_run(["ping", "-c", "2", "-W", "2", address])
            assert code == 0, out.decode()
        finally:
            for c in (b, a):
                c.remove(force=True)
    finally:
        remove_overlay(net)
        node1.close()
        node2.close()


def remove_overlay(net: Network) -> None:
    """An overlay is "in use" for a moment after a container on another node left it (gossip)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            net.remove()
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_status_shows_each_node_its_role_and_the_image(cluster: Path, image: str) -> None:
    shown = labctl("cluster", "status", "--name", TEST_CLUSTER, "--engines", str(cluster)).stdout
    lines = {line.split()[1]: line for line in shown.splitlines() if line.startswith("│ node")}
    assert set(lines) == {"node1", "node2"}
    assert "manager" in lines["node1"] and "worker" in lines["node2"]
    assert all("running" in line and image in line for line in lines.values())


def test_image_push_copies_the_lab_image_to_an_engine_without_it_and_skips_one_with_it(
        cluster: Path, client: DockerEngine, image: str) -> None:
    node2 = nodes(cluster)["node2"]
    node2.remove_image(image)
    assert node2.image_id(image) is None
    said = labctl("image", "push", "--engine", "node2", "--engines", str(cluster)).stdout
    assert f"{image} copied to node2" in said
    assert node2.image_id(image) == client.image_id(image)
    said = labctl("image", "push", "--engine", "node2", "--engines", str(cluster)).stdout
    assert f"{image} already on node2" in said


def test_create_refuses_a_cluster_that_exists(cluster: Path) -> None:
    proc = labctl("cluster", "create", "--nodes", "2", "--name", TEST_CLUSTER, "--engines", str(cluster), check=False)
    assert proc.returncode == 1
    assert f"cluster {TEST_CLUSTER!r} exists already" in proc.stderr
    assert len(nodes(cluster)["node1"].swarm_nodes()) == 2  # and it is left as it was


def test_a_create_that_fails_removes_what_it_made_and_nothing_else(client: DockerEngine, image: str,
                                                                   tmp_path: Path) -> None:
    """A stranger's container holds node1's name: node1 cannot be made, node2 may have started."""
    name = f"{TEST_CLUSTER}-clash"
    api = raw_api()
    stranger = api.create_container(image, name=f"{name}1", entrypoint=["true"])["Id"]
    try:
        proc = labctl("cluster", "create", "--nodes", "2", "--name", name, "--engines", str(tmp_path / "e.yml"),
                      check=False)
        assert proc.returncode == 1
        assert f"creating {name}1" in proc.stderr and "removing the nodes" in proc.stderr
        label = {"label": [f"{LABEL_CLUSTER}={name}"]}
        assert api.containers(all=True, filters=label) == []
        assert (api.volumes(filters=label).get("Volumes") or []) == []
        assert api.networks(filters=label) == []
        assert not (tmp_path / "e.yml").exists()
        assert api.inspect_container(stranger)["Name"] == f"/{name}1"  # not ours: left alone
    finally:
        api.remove_container(stranger, force=True)


def test_delete_leaves_nothing_on_the_machine(cluster: Path) -> None:
    labctl("cluster", "delete", "--name", TEST_CLUSTER, "--engines", str(cluster))
    api = raw_api()
    label = {"label": [f"{LABEL_CLUSTER}={TEST_CLUSTER}"]}
    assert api.containers(all=True, filters=label) == []
    assert (api.volumes(filters=label).get("Volumes") or []) == []
    assert api.networks(filters=label) == []
    assert not cluster.exists()
    again = labctl("cluster", "delete", "--name", TEST_CLUSTER, "--engines", str(cluster))
    assert "nothing to remove" in again.stdout  # idempotent

