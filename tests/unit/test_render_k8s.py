"""`labctl render k8s`: every object deserialises into the Kubernetes client's API models (with
its client-side validation on), the NAD's CNI config is the bridge with static IPAM, and each Pod is
the host as `up` would create it (same plan)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, Configuration

from labctl import topology
from labctl.plan import plan
from labctl.render import k8s

IMAGES = {"lab": "registry.example/maillab:1", "reference": "registry.example/maillab-reference:1"}
MODELS = {"Namespace": "V1Namespace", "Pod": "V1Pod", "NetworkPolicy": "V1NetworkPolicy"}


def to_model(obj: dict[str, Any]) -> Any:
    config = Configuration()
    config.client_side_validation = True  # required fields and enums are checked
    api = ApiClient(config)
    return api._ApiClient__deserialize(obj, MODELS[obj["kind"]])  # the client's own deserialiser


def rendered(lab: str = "k8s-lab", topo: topology.Topology | None = None) -> list[dict[str, Any]]:
    topo = topo or topology.load()
    # Through YAML and back: what `kubectl apply -f` would read.
    return list(yaml.safe_load_all(yaml.safe_dump_all(k8s.render(lab, topo, IMAGES))))


def test_every_object_is_a_valid_api_object() -> None:
    objs = rendered()
    kinds = [o["kind"] for o in objs]
    assert kinds[:3] == ["Namespace", "NetworkAttachmentDefinition", "NetworkPolicy"]
    assert kinds.count("Pod") == len(topology.load().hosts)
    for obj in objs:
        if obj["kind"] == "NetworkAttachmentDefinition":
            assert obj["apiVersion"] == "k8s.cni.cncf.io/v1"
            assert set(obj["spec"]) == {"config"}
            continue
        model = to_model(obj)
        assert model.metadata.name == obj["metadata"]["name"]
        assert ApiClient().sanitize_for_serialization(model) == obj  # nothing dropped as unknown


def test_cni_config_is_bridge_with_static_ipam() -> None:
    nad = next(o for o in rendered() if o["kind"] == "NetworkAttachmentDefinition")
    cfg = json.loads(nad["spec"]["config"])
    assert cfg["type"] == "bridge" and cfg["ipam"] == {"type": "static"}
    assert len(cfg["bridge"]) <= 15 and cfg["isGateway"] is False


def test_pods_are_the_hosts_as_up_plans_them() -> None:
    topo = topology.load()
    plans = plan("k8s-lab", topo, IMAGES)
    pods = {o["metadata"]["labels"]["org.maillab.host"]: o for o in rendered() if o["kind"] == "Pod"}
    assert set(pods) == set(plans)
    addresses = []
    for name, pod in pods.items():
        spec = plans[name].container
        nets = json.loads(pod["metadata"]["annotations"][k8s.NETWORKS_ANNOTATION])
        (ip,) = nets[0]["ips"]
        iface = ipaddress.IPv4Interface(ip)
        assert iface.network == topo.subnet and str(iface.ip) == spec.address == str(topo.host(name).address)
        addresses.append(iface.ip)
        (c,) = pod["spec"]["containers"]
        assert c["image"] == spec.image and c["args"] == list(spec.command)
        assert {e["name"]: e["value"] for e in c["env"]} == dict(spec.environment)
        assert c["securityContext"]["capabilities"]["add"] == list(spec.cap_add)
        assert pod["spec"]["hostname"] == spec.hostname.partition(".")[0]
        assert "." not in pod["spec"]["hostname"]  # a Pod's hostname is one DNS label
        assert pod["spec"]["dnsConfig"]["nameservers"] == [str(topo.nameserver.address)]
        assert sorted(m["mountPath"] for m in c["volumeMounts"]) == sorted([*spec.volumes.values(), *spec.tmpfs])
    assert len(set(addresses)) == len(addresses)


def test_overlay_and_x_maillab_are_respected(tmp_path: Path) -> None:
    base = topology.load()
    topo = base.with_tmpfs("mail", "/var/mail", "size=16m")
    pods = {o["metadata"]["name"]: o for o in rendered(topo=topo) if o["kind"] == "Pod"}
    vols = {v["name"]: v for v in pods["mail"]["spec"]["volumes"]}
    assert {"medium": "Memory", "sizeLimit": "16Mi"} in [v.get("emptyDir") for v in vols.values()]
    moved = base.with_subnet(ipaddress.IPv4Network("10.91.7.0/24"))
    for pod in (o for o in rendered(topo=moved) if o["kind"] == "Pod"):
        ip = json.loads(pod["metadata"]["annotations"][k8s.NETWORKS_ANNOTATION])[0]["ips"][0]
        assert ip.startswith("10.91.7.") and ip.endswith("/24")
    # x-maillab's domains travel in every host's lab.json, as on Docker.
    env = next(o for o in rendered() if o["kind"] == "Pod")["spec"]["containers"][0]["env"]
    assert any("stevenchoy.example" in e["value"] for e in env)


@pytest.mark.parametrize("text,label", [("Student_042", "student-042"), ("a.b.c", "a-b-c"), ("x" * 70, "x" * 63)])
def test_dns_label(text: str, label: str) -> None:
    assert k8s.dns_label(text) == label
