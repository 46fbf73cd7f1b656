"""A lab as Kubernetes objects for a cluster with Multus (Kathara's Megalos shape), pure data.

A Namespace, one NetworkAttachmentDefinition (``k8s.cni.cncf.io/v1``) whose CNI config is a bridge
with static IPAM on the lab subnet, one Pod per host with its fixed address in the Multus
annotation, and a deny-all NetworkPolicy for the cluster's own (default) network: lab traffic goes
over the secondary interface only. Each Pod is made from the host's
:class:`~labctl.backend.ContainerSpec` as ``labctl up`` plans it (:func:`labctl.plan.plan`), so a
host renders with the image, command, environment and capabilities it would start with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from labctl.plan import LABEL_HOST, LABEL_LAB, network_name, plan
from labctl.topology import Topology

Obj = dict[str, Any]

NAD_API = "k8s.cni.cncf.io/v1"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
LAB_INTERFACE = "net1"  # Multus's name for the first secondary interface
CNI_VERSION = "0.4.0"  # what Debian 12's containernetworking-plugins (1.1.1) speak and Multus accepts


def dns_label(text: str) -> str:
    """A DNS-1123 label (RFC 1123: lower case, digits, '-', at most 63): what names and hostnames must be."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or "x"


def cni_config(lab: str, topo: Topology) -> Obj:
    """The CNI network config: a Linux bridge per node, addresses given per Pod (static IPAM)."""
    return {
        "cniVersion": CNI_VERSION,
        "name": dns_label(network_name(lab, topo)),
        "type": "bridge",
        "bridge": f"ml-{dns_label(lab)}"[:15],  # IFNAMSIZ: 15 characters
        "isGateway": False,  # the lab has no route out, as on Docker (an internal network)
        "ipMasq": False,
        # Each Pod's address comes from its Multus annotation: Multus hands the annotation's "ips"
        # to the plugins as runtimeConfig only when the config declares that capability.
        "capabilities": {"ips": True},
        "ipam": {"type": "static"},
    }


def quantity(size: str) -> str:
    """A tmpfs size ("16m", Docker's, 1024-based) as a Kubernetes quantity ("16Mi"; "16m" there
    would mean 16 thousandths of a byte)."""
    number, unit = (size[:-1], size[-1]) if size[-1:].isalpha() else (size, "")
    return number + {"": "", "k": "Ki", "m": "Mi", "g": "Gi"}[unit.lower()]


def _labels(lab: str, host: str | None = None) -> dict[str, str]:
    labels = {LABEL_LAB: lab}
    if host is not None:
        labels[LABEL_HOST] = host
    return labels


def render(lab: str, topo: Topology, image: str | Mapping[str, str]) -> list[Obj]:
    """Every object, in the order `kubectl apply -f` needs them (the Namespace first)."""
    ns = dns_label(lab)
    nad = dns_label(network_name(lab, topo))
    prefix = topo.subnet.prefixlen
    objects: list[Obj] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": _labels(lab)}},
        {"apiVersion": NAD_API, "kind": "NetworkAttachmentDefinition",
         "metadata": {"name": nad, "namespace": ns, "labels": _labels(lab)},
         "spec": {"config": json.dumps(cni_config(lab, topo), sort_keys=True)}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "deny-all", "namespace": ns, "labels": _labels(lab)},
         # No rules: nothing in or out over the cluster network; Multus's bridge is not policed.
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
    ]
    for name, hp in plan(lab, topo, image).items():
        c = hp.container
        # A Pod's hostname is one DNS label; the host's FQDN lives in the lab's own DNS (its name
        # server renders the zones as on Docker), which dnsConfig points the Pod at.
        volumes: list[Obj] = [{"name": f"v{i}", "emptyDir": {}} for i in range(len(c.volumes))]
        mounts: list[Obj] = [{"name": f"v{i}", "mountPath": path} for i, path in enumerate(c.volumes.values())]
        for j, path in enumerate(c.tmpfs):
            size = dict(kv.split("=", 1) for kv in c.tmpfs[path].split(",") if "=" in kv).get("size")
            limit = {"sizeLimit": quantity(size)} if size else {}
            volumes.append({"name": f"t{j}", "emptyDir": {"medium": "Memory", **limit}})
            mounts.append({"name": f"t{j}", "mountPath": path})
        objects.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": dns_label(name), "namespace": ns, "labels": _labels(lab, name),
                "annotations": {NETWORKS_ANNOTATION: json.dumps(
                    [{"name": nad, "interface": LAB_INTERFACE, "ips": [f"{c.address}/{prefix}"]}])},
            },
            "spec": {
                "hostname": dns_label(c.hostname.partition(".")[0]),
                "subdomain": nad,
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": c.stop_timeout,
                "dnsPolicy": "None",
                "dnsConfig": {"nameservers": list(c.dns), "searches": list(c.dns_search)},
                "containers": [{
                    "name": "host", "image": c.image, "imagePullPolicy": "IfNotPresent",
                    "args": list(c.command),
                    "env": [{"name": k, "value": v} for k, v in sorted(c.environment.items())],
                    "securityContext": {"capabilities": {"add": list(c.cap_add)}},
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
            },
        })
    return objects
