"""Reading back the lab's always-on capture (services.capture records it inside every host).

The files come out through the Engine API's archive download, never a bind mount or the host's
view of the bridges, so this works when the engine runs in a VM (design decision 6), and it
works on a stopped or killed host too: its files stay in its container until `labctl down`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import docker.errors

from labctl.lab import HostStatus, Lab
from services.capture import CAPTURE_DIR

PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")


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
        return [HostCapture(h, tuple(f for f, _ in self._files(h, with_data=False))) for h in self._hosts(host)]

    def export(self, out: BinaryIO, *, host: str | None = None, since: float | None = None) -> int:
        """Write every host's capture (or one host's) as one pcapng; returns the packet count.

        Each host is its own interface in the file, named after the host, so Wireshark shows
        where each packet was seen; packets are in timestamp order across hosts.
        """
        from labctl.traffic.pcap import write_merged_pcapng  # the decoding side, only when exporting

        sources = {h.name: [data for _, data in self._files(h, with_data=True)] for h in self._hosts(host)}
        return write_merged_pcapng(sources, out, since=since)

    def pcap_bytes(self, *, host: str | None = None, since: float | None = None) -> bytes:
        buf = io.BytesIO()
        self.export(buf, host=host, since=since)
        return buf.getvalue()

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
                    data = extracted.read() if extracted else b""
                    if data[:4] not in PCAP_MAGICS:
                        continue  # a file still empty (tcpdump not yet flushed its header) or foreign
                found.append((CaptureFile(member.name.rpartition("/")[2], member.size, float(member.mtime)), data))
        found.sort(key=lambda item: (item[0].modified, item[0].name))
        yield from found


def parse_since(text: str, now: float) -> float:
    """``--since``: an age (``90s``, ``10m``, ``2h``), a clock time today (``14:05``, ``14:05:30``),
    an ISO date-time (``2026-11-29T14:05``) or epoch seconds; returns epoch seconds."""
    import datetime as dt
    import re

    value = text.strip()
    age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)", value)
    if age:
        return now - float(age.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
    if re.fullmatch(r"\d+(?:\.\d+)?", value) and float(value) > 1e9:
        return float(value)
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
            today = dt.datetime.fromtimestamp(now).date()
            hours, _, rest = value.partition(":")
            clock = dt.time.fromisoformat(f"{int(hours):02d}:{rest}")
            return dt.datetime.combine(today, clock).timestamp()
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        pass
    raise ValueError(f"--since {text!r}: give an age (90s, 10m, 2h), a time today (14:05), "
                     "an ISO date-time (2026-11-29T14:05) or epoch seconds")
