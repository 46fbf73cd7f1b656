"""Reading back the lab's always-on capture (services.capture records it inside every host).

The files come out through the Engine API's archive download, never a bind mount or the host's
view of the bridges, so this works when the engine runs in a VM (design decision 6), and it
works on a stopped or killed host too: its files stay in its container until `labctl down`.
"""

from __future__ import annotations

import io
import ipaddress
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import docker.errors

from labctl.lab import HostStatus, Lab
from labctl.traffic.packet import network_payload
from labctl.traffic.pcap import Frame, write_merged_pcapng
from services.capture import CAPTURE_DIR


@dataclass(frozen=True)
class CaptureFile:
    name: str
    size: int  # bytes
    modified: float  # epoch seconds of the last packet written


@dataclass(frozen=True)
class HostCapture:
    host: HostStatus
    files: tuple[CaptureFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def recording(self) -> bool:
        """A running host records: its role starts and supervises the recorder."""
        return self.host.state == "running" and bool(self.files)


class Capture:
    """The capture of one lab: what each host has recorded, and one merged pcapng of it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def _hosts(self, host: str | None) -> list[HostStatus]:
        return [self.lab.find(host)] if host else [h for h in self.lab.status()]

    def status(self, host: str | None = None) -> list[HostCapture]:
        return [HostCapture(h, tuple(self._listing(h))) for h in self._hosts(host)]

    def export(self, out: BinaryIO, *, host: str | None = None, since: float | None = None) -> int:
        """Write every host's capture (or one host's) as one pcapng; returns the packet count.

        Each host is its own interface in the file, named after the host, so Wireshark shows
        where each packet was seen; packets are in timestamp order across hosts.
        """
        return write_merged_pcapng(self.sources(host), out, since=since)

    def sources(self, host: str | None = None) -> dict[str, list[bytes]]:
        """Each host's capture files, oldest first: what labctl.traffic decodes."""
        return {h.name: [data for _, data in self._files(h, with_data=True)] for h in self._hosts(host)}

    def pcap_bytes(self, *, host: str | None = None, since: float | None = None) -> bytes:
        buf = io.BytesIO()
        self.export(buf, host=host, since=since)
        return buf.getvalue()

    def _listing(self, host: HostStatus) -> list[CaptureFile]:
        """The host's capture files, oldest first, without their contents.

        A running host lists them itself: the archive download sends every byte of the ring (up
        to 64 MB a host) only to have the names and sizes read. A stopped host cannot run a
        command, so its archive is read, and its contents skipped.
        """
        if host.state == "running":
            ran = self.lab.exec_in(host.container, ["find", str(CAPTURE_DIR), "-maxdepth", "1", "-type", "f",
                                                    "-printf", r"%f\t%s\t%T@\n"])
            if ran.exit_code == 0:
                files = []
                for line in ran.output.splitlines():
                    name, size, modified = line.rsplit("\t", 2)
                    files.append(CaptureFile(name, int(size), float(modified)))
                return sorted(files, key=lambda f: (f.modified, f.name))
            if b"No such file" in ran.stderr:
                return []  # no capture yet (or capture turned off for this lab)
        return [f for f, _ in self._files(host, with_data=False)]

    def _files(self, host: HostStatus, *, with_data: bool) -> Iterator[tuple[CaptureFile, bytes]]:
        """The host's capture files, oldest first, read from its container's file system."""
        try:
            stream, _ = self.lab.api.get_archive(host.container, str(CAPTURE_DIR))
        except docker.errors.NotFound:
            return  # no capture yet (or capture turned off for this lab)
        archive = io.BytesIO(b"".join(stream))
        found = []
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                data = b""
                if with_data:
                    extracted = tar.extractfile(member)
                    data = extracted.read() if extracted else b""  # an empty file reads as no frames
                found.append((CaptureFile(member.name.rpartition("/")[2], member.size, float(member.mtime)), data))
        found.sort(key=lambda item: (item[0].modified, item[0].name))
        yield from found



def outside_addresses(frames: Iterable[Frame], lab: ipaddress.IPv4Network) -> Counter[str]:
    """Addresses outside the lab (and outside each host's loopback) that captured IP packets carry.

    The seal, shown from the packets: in a sealed lab this is empty, however hard a host tried
    to reach out (a connect to an outside address fails inside the host, before any packet).
    """
    seen: Counter[str] = Counter()
    for frame in frames:
        where = network_payload(frame.linktype, frame.data)
        if where is None:
            continue  # ARP and other link-layer frames carry no IP address
        version, off = where
        data = bytes(frame.data[off:off + 40])
        if version == 4 and len(data) >= 20:
            pair = (ipaddress.IPv4Address(data[12:16]), ipaddress.IPv4Address(data[16:20]))
            # Multicast (an interface joining IGMP groups as it comes up) and the limited broadcast
            # stay on the lab's own bridge: no router forwards them.
            outside: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
                a for a in pair if a not in lab and not (a.is_loopback or a.is_multicast or a.is_link_local
                                                         or a == ipaddress.IPv4Address("255.255.255.255"))]
        elif version == 6 and len(data) >= 40:
            pair6 = (ipaddress.IPv6Address(data[8:24]), ipaddress.IPv6Address(data[24:40]))
            # Link-local, multicast and the unspecified source of duplicate address detection:
            # the neighbour discovery of an interface coming up, which never leaves the bridge.
            outside = [a for a in pair6 if not (a.is_loopback or a.is_link_local or a.is_multicast
                                                or a.is_unspecified)]
        else:
            continue
        seen.update(str(a) for a in outside)
    return seen
