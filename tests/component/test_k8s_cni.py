"""`labctl render k8s`'s network, run through the real CNI plugins Multus would call.

No Kubernetes cluster can be installed here, so this takes what Multus does with the rendered
NetworkAttachmentDefinition and does it by hand: the NAD's CNI config, with the Pod annotation's
``ips`` passed as ``runtimeConfig`` (which Multus does only when the config declares the ``ips``
capability), fed to Debian's containernetworking-plugins (``bridge`` with ``static`` IPAM) for two
network namespaces. Each must get its lab address on ``net1`` and reach the other, and DEL must
undo it. Needs root and the plugins (.ci/run installs them); in CI it runs, never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl import topology
from labctl.render.k8s import LAB_INTERFACE, NETWORKS_ANNOTATION, render

CNI_PATH = Path("/usr/lib/cni")
LAB = "k8s-cni"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not (CNI_PATH / "bridge").exists() or not (CNI_PATH / "static").exists() or not shutil.which("ip") \
            or not shutil.which("iptables") or not shutil.which("ping"):
        return "needs Debian's containernetworking-plugins, iproute2, iptables and ping (.ci/run installs them)"
    return None


if _missing() and os.environ.get("CI") != "true":
    pytest.skip(_missing() or "", allow_module_level=True)


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def cni(command: str, config: dict[str, Any], netns: str, container: str) -> dict[str, Any]:
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": f"/var/run/netns/{netns}",
           "CNI_IFNAME": LAB_INTERFACE, "CNI_PATH": str(CNI_PATH)}
    done = subprocess.run([str(CNI_PATH / config["type"])], input=json.dumps(config), env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"CNI {command} failed: {done.stdout} {done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else {}


@pytest.fixture
def rendered() -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    objects = render(LAB, topology.load(), "maillab")
    nad = next(o for o in objects if o["kind"] == "NetworkAttachmentDefinition")
    config = json.loads(nad["spec"]["config"])
    ips = {o["metadata"]["name"]: json.loads(o["metadata"]["annotations"][NETWORKS_ANNOTATION])[0]["ips"][0]
           for o in objects if o["kind"] == "Pod"}
    yield config, ips
    subprocess.run(["ip", "link", "del", config["bridge"]], capture_output=True, timeout=30)


def test_two_pods_get_their_addresses_from_the_annotation_and_reach_each_other(
        rendered: tuple[dict[str, Any], dict[str, str]]) -> None:
    missing = _missing()
    assert missing is None, missing  # in CI this runs
    config, ips = rendered
    assert config["capabilities"] == {"ips": True}  # without it Multus drops the annotation's ips
    pods = ["smtp", "mail"]
    spaces = {pod: f"k8s-{pod}-{uuid.uuid4().hex[:6]}" for pod in pods}
    added: list[str] = []
    try:
        for pod in pods:
            run("ip", "netns", "add", spaces[pod])
            # As Multus calls it: the config, plus runtimeConfig from the Pod's annotation.
            result = cni("ADD", {**config, "runtimeConfig": {"ips": [ips[pod]]}}, spaces[pod], spaces[pod])
            added.append(pod)
            assert [ip["address"] for ip in result["ips"]] == [ips[pod]]
            shown = run("ip", "-n", spaces[pod], "-4", "-o", "addr", "show", "dev", LAB_INTERFACE)
            assert f"inet {ips[pod]}" in shown
            # No gateway and no route out: the lab stays sealed, as on Docker.
            assert "default" not in run("ip", "-n", spaces[pod], "route")
        # Docker on this machine sets iptables' FORWARD policy to DROP, and br_netfilter passes
        # bridged frames through it; a Kubernetes node allows its pod bridges the same way.
        rule = ("FORWARD", "-i", config["bridge"], "-o", config["bridge"], "-j", "ACCEPT")
        run("iptables", "-I", *rule)
        try:
            other = ips["mail"].split("/")[0]
            run("ip", "netns", "exec", spaces["smtp"], "ping", "-c", "1", "-W", "2", other)
        finally:
            run("iptables", "-D", *rule)
    finally:
        for pod in added:
            cni("DEL", {**config, "runtimeConfig": {"ips": [ips[pod]]}}, spaces[pod], spaces[pod])
        for pod in pods:
            subprocess.run(["ip", "netns", "del", spaces[pod]], capture_output=True, timeout=30)
    assert not any(s in run("ip", "netns", "list") for s in spaces.values())
