"""What each host of a lab is made of: a pure plan from the topology, before any engine is asked.

For every host, the container to create (:class:`~labctl.backend.ContainerSpec`: image, labels,
environment with the files its services read, volumes or tmpfs, capabilities, DNS) and the digest
of all of it, which `up` compares with a running host's to tell a changed topology or image.
No engine, no clock: `tests/unit/test_plan.py` checks it as data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from labctl import labtls, zonefiles
from labctl.backend import ContainerSpec
from labctl.errors import LabctlError
from labctl.topology import HostSpec, Topology
from services import config as svc

LABEL_LAB = "org.maillab.lab"
LABEL_HOST = "org.maillab.host"
LABEL_ROLE = "org.maillab.role"
LABEL_FQDN = "org.maillab.fqdn"
LABEL_ADDRESS = "org.maillab.address"
LABEL_USER = "org.maillab.user"  # on MUA hosts: the mail address of the host's user
LABEL_CONFIG = "org.maillab.config"  # hash of everything a host was created from
LABEL_ENGINE = "org.maillab.engine"  # the engine (engines-file name) a host was created on

STOP_TIMEOUT = 3  # seconds; services exit on SIGTERM in milliseconds, this is for a stuck one

# Volumes keep the MTA queue and the mailboxes across a container restart until `down`.
MAIL_VOLUMES = {"spool": str(svc.SPOOL_DIR), "mail": str(svc.MAIL_DIR)}
# NET_ADMIN lets the host drop the default route Docker gives it (the seal, see
# services.runtime.join_lab) and lets fault scenarios shape traffic with tc/iptables inside the
# host's own namespace; the host's own interface is all it can touch.
CAPABILITIES = ("NET_ADMIN",)


def container_name(lab: str, host: str) -> str:
    return f"{lab}-{host}"


def network_name(lab: str, topo: Topology) -> str:
    return f"{lab}-{topo.network}"


@dataclass(frozen=True)
class HostPlan:
    host: HostSpec
    container: ContainerSpec
    digest: str  # of the image and every file and setting the host is created from


def host_images(topo: Topology, image: str | Mapping[str, str]) -> dict[str, str]:
    """Host name -> the tag of the image it runs."""
    tags = {"lab": image} if isinstance(image, str) else dict(image)
    missing = sorted({h.image for h in topo.hosts} - set(tags))
    if missing:
        users = ", ".join(h.name for h in topo.hosts if h.image in missing)
        raise LabctlError(f"hosts {users} run the {' and '.join(missing)} image, which was not given; "
                          "`labctl up` builds it, or run `labctl image build --reference`")
    return {h.name: tags[h.image] for h in topo.hosts}


def host_files(lab: str, topo: Topology, host: HostSpec, tls: labtls.LabTls | None = None) -> dict[str, str]:
    """The files a host's services read under /etc: its lab.json, and zone files on the DNS host.

    They travel in the container's environment and the role writes them at start
    (services.config.materialize_files): copying them in with the Engine's archive upload
    mounted each container's file system and cost about 0.15 s on the way to `up`.
    """
    files = {"maillab/lab.json": topo.lab_config(lab, host).to_json()}
    if host.kind == "dns":
        for fname, text in zonefiles.render(topo).items():
            files[f"maillab/zones/{fname}"] = text
    if tls is not None:
        files.update(tls.files(host))
    return files


def digest(image: str, files: Mapping[str, str]) -> str:
    """Of the image and the files, but not the TLS certificates and keys: they are new at every
    issue (random keys), and which CA a host has is its LABEL_TLS_CA; lab.json says TLS is on."""
    h = hashlib.sha256(image.encode())
    for name in sorted(n for n in files if not n.startswith(labtls.TLS_FILES)):
        h.update(name.encode() + b"\0" + files[name].encode())
    return h.hexdigest()[:16]


def plan_host(lab: str, topo: Topology, host: HostSpec, image: str,
              tls: labtls.LabTls | None = None) -> HostPlan:
    files = host_files(lab, topo, host, tls)
    # A host's tmpfs is part of what it was created from (absent: the digest is as before).
    made_of = {**files, **({"tmpfs": repr(host.tmpfs)} if host.tmpfs else {})}
    host_digest = digest(image, made_of)
    name = container_name(lab, host.name)
    labels = dict(host.labels)
    labels.update({
        LABEL_LAB: lab, LABEL_HOST: host.name, LABEL_ROLE: host.role,
        LABEL_FQDN: host.fqdn, LABEL_ADDRESS: str(host.address), LABEL_CONFIG: host_digest,
    })
    if "MAIL_USER" in host.env:
        labels[LABEL_USER] = host.env["MAIL_USER"]
    if tls is not None:
        labels.update(tls.labels())
    tmpfs = dict(host.tmpfs)  # topology `tmpfs:`: a small RAM disk replaces that volume
    volumes = {}
    if host.kind in ("mta", "mx"):
        volumes = {f"{name}-{kind}": path for kind, path in MAIL_VOLUMES.items() if path not in tmpfs}
    spec = ContainerSpec(
        name=name, image=image, command=(host.role,), hostname=host.fqdn, labels=labels,
        environment={**dict(host.environment), svc.FILES_ENV: svc.encode_files(files)},
        network=network_name(lab, topo), address=str(host.address), aliases=(host.fqdn,),
        volumes=volumes, volume_labels={LABEL_LAB: lab, LABEL_HOST: host.name}, tmpfs=tmpfs,
        cap_add=CAPABILITIES, dns=(str(topo.nameserver.address),), dns_search=(host.fqdn.partition(".")[2],),
        stop_signal="SIGTERM", stop_timeout=STOP_TIMEOUT,
    )
    return HostPlan(host, spec, host_digest)


def plan(lab: str, topo: Topology, image: str | Mapping[str, str],
         tls: labtls.LabTls | None = None) -> dict[str, HostPlan]:
    """Every host's plan, by host name; ``topo`` already on the subnet the lab gets; ``tls``: the
    lab's CA and certificates when TLS is on and hosts are to be created."""
    images = host_images(topo, image)
    return {h.name: plan_host(lab, topo, h, images[h.name], tls) for h in topo.hosts}
