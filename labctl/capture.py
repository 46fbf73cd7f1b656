"""Reading back the lab's always-on capture (services.capture records it inside every host).

The files come out through the Engine API's archive download, never a bind mount or the host's
view of the bridges, so this works when the engine runs in a VM (design decision 6), and it
works on a stopped or killed host too: its files stay in its container until `labctl down`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from labctl.errors import LabctlError
from labctl.lab import HostStatus, Lab, parallel
from labctl.traffic.pcap import PCAP_HEADER_SIZE, pcap_records_end, write_merged_pcapng
from services.capture import CAPTURE_DIR
from services.tls import KEYLOG_DIR, KEYLOG_FILE


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
        return [self.lab.find(host)] if host else self.lab.hosts()

    def status(self, host: str | None = None) -> list[HostCapture]:
        return [HostCapture(h, tuple(self._listing(h))) for h in self._hosts(host)]

    def export(self, out: BinaryIO, *, host: str | None = None, since: float | None = None,
               keylog: str | None = None) -> int:
        """Write every host's capture (or one host's) as one pcapng; returns the packet count.

        Each host is its own interface in the file, named after the host, so Wireshark shows
        where each packet was seen; packets are in timestamp order across hosts. ``keylog`` (see
        :meth:`keylogs`) goes in a Decryption Secrets Block, so Wireshark decrypts the TLS.
        """
        return write_merged_pcapng(self.sources(host), out, since=since, keylog=keylog)

    def keylogs(self, host: str | None = None) -> str:
        """Every host's TLS key log (services.tls: the rotated keylog.1.txt, then keylog.txt), as
        one NSS key log text; each secret once (a session's client and server both log it)."""
        from labctl.traffic.tls import KeyLog  # cryptography is loaded only when TLS is read

        keys = KeyLog()
        rotated = KEYLOG_FILE.with_suffix(".1.txt").name
        for files in parallel(lambda h: self.lab.read_files(h, str(KEYLOG_DIR)), self._hosts(host)):
            for f in sorted(files, key=lambda f: (f.name != rotated, f.name)):
                keys.add_text(f.data.decode("utf-8", "replace"))
        return keys.text()

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
            ran = self.lab.exec_in(host, ["find", str(CAPTURE_DIR), "-maxdepth", "1", "-type", "f",
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
        found = [(CaptureFile(f.name, f.size, f.mtime), f.data)
                 for f in self.lab.read_files(host, str(CAPTURE_DIR), with_data=with_data)]
        found.sort(key=lambda item: (item[0].modified, item[0].name))
        yield from found



# Run by CaptureTail inside a running host (python3 is in the lab image): each capture file's
# octets from the offset labctl has read up to, or all of it when the file is new or was written
# again from the start (the recorder's ring reuses its file names). argv[2] maps a file name to
# [offset, head]: head is the hex of the file's first octets (its header and its first record's
# header) when labctl read them; the file is the same one while they still begin it. Out: per
# file a JSON line {"name", "from", "head", "length"}, then that many octets.
HEAD_OCTETS = 40  # what TAIL_SCRIPT compares: the pcap header and the first record's header
TAIL_SCRIPT = """
import json, os, sys
directory, known = sys.argv[1], json.loads(sys.argv[2])
out = sys.stdout.buffer
try:
    names = sorted(os.listdir(directory))
except FileNotFoundError:
    names = []
for name in names:
    try:
        f = open(os.path.join(directory, name), "rb")
    except OSError:
        continue
    with f:
        head = f.read(HEAD_OCTETS).hex()
        offset, before = known.get(name, (0, ""))
        if not head.startswith(before) or offset > os.fstat(f.fileno()).st_size:
            offset = 0
        f.seek(offset)
        data = f.read()
    out.write(json.dumps({"name": name, "from": offset, "head": head, "length": len(data)}).encode() + b"\\n")
    out.write(data)
""".replace("HEAD_OCTETS", str(HEAD_OCTETS))


def parse_tail(output: bytes) -> list[tuple[str, int, str, bytes]]:
    """TAIL_SCRIPT's output: (file name, offset the octets start at, head, octets) per file."""
    files = []
    pos = 0
    while pos < len(output):
        eol = output.index(b"\n", pos)
        meta = json.loads(output[pos:eol])
        start = eol + 1
        files.append((meta["name"], meta["from"], meta["head"], output[start:start + meta["length"]]))
        pos = start + meta["length"]
    return files


@dataclass
class _Tailed:
    offset: int  # octets of the file read so far (whole records only)
    head: str  # hex of its first octets then (see TAIL_SCRIPT)
    length: int = 0  # for a file that is no classic pcap: its length when it was last read whole


class TailState:
    """How far each capture file of one host has been read; pure, so testable without a lab.

    :meth:`take` turns what :data:`TAIL_SCRIPT` (or a whole file) gave into pieces, each a classic
    pcap of its own (the file's header, then the new whole records): a record cut off by the end
    of what was read comes whole in the next piece.
    """

    def __init__(self) -> None:
        self.files: dict[str, _Tailed] = {}

    def want(self) -> dict[str, list[int | str]]:
        """TAIL_SCRIPT's argument: from where to send each file."""
        return {name: [t.offset, t.head] for name, t in self.files.items()}

    def start(self, name: str, data: bytes) -> int:
        """Where to slice a whole file (an archive's copy) so that it gives only what is new."""
        t = self.files.get(name)
        same = t is not None and data[:HEAD_OCTETS].hex().startswith(t.head) and t.offset <= len(data)
        return t.offset if same and t is not None else 0

    def take(self, files: Iterable[tuple[str, int, str, bytes]]) -> list[bytes]:
        """The new records of (name, offset the octets start at, head, octets) per file present."""
        files = list(files)
        for gone in set(self.files) - {name for name, *_ in files}:
            del self.files[gone]  # pruned by the recorder
        pieces = [self._piece(*f) for f in files]
        return [p for p in pieces if p]

    def _piece(self, name: str, start: int, head: str, data: bytes) -> bytes:
        before = self.files.get(name)
        if start == 0:
            end = pcap_records_end(data)
            if end is None:  # no classic pcap: given whole whenever it changed
                self.files[name] = _Tailed(0, "", len(data))
                return data if before is None or before.length != len(data) else b""
            self.files[name] = _Tailed(end, head)
            return data[:end] if end > PCAP_HEADER_SIZE else b""
        header = bytes.fromhex(head)[:PCAP_HEADER_SIZE]
        end = pcap_records_end(header + data) or PCAP_HEADER_SIZE
        self.files[name] = _Tailed(start + end - PCAP_HEADER_SIZE, head)
        return header + data[:end - PCAP_HEADER_SIZE] if end > PCAP_HEADER_SIZE else b""


class CaptureTail:
    """What each host's capture gained since the last look: ``labctl traffic --follow``.

    The first :meth:`poll` gives every host's files; each later one only the records written
    since (:class:`TailState`), so one decoder fed piece after piece sees every packet once. A
    running host sends its new octets itself (:data:`TAIL_SCRIPT`): the archive download would
    move every byte of its ring (up to 64 MB) on every look. A host found stopped is read once
    through the archive (its files do not change until it starts again). A file that is not a
    classic pcap (the recorder writes classic pcap) is given whole again whenever it grew; the
    decoder drops the packets it already has.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._tails: dict[str, TailState] = {}
        self._state: dict[str, str] = {}  # host -> its container's state at the last look

    def poll(self) -> dict[str, list[bytes]]:
        """{host: [pcap bytes, ...]}: the records each host captured since the last call."""
        hosts = self.lab.hosts()  # a lab removed while followed ends the follow, saying so
        return dict(zip((h.name for h in hosts), parallel(self._host, hosts), strict=True))

    def _host(self, host: HostStatus) -> list[bytes]:
        tail = self._tails.setdefault(host.name, TailState())
        was, self._state[host.name] = self._state.get(host.name), host.state
        if host.state == "running":
            try:
                ran = self.lab.exec_in(host, ["python3", "-c", TAIL_SCRIPT, str(CAPTURE_DIR),
                                                        json.dumps(tail.want())])
            except LabctlError:
                ran = None
            if ran is None or ran.exit_code != 0:
                return []  # the host is going down: the next look reads it through the archive
            return tail.take(parse_tail(ran.stdout))
        if was == host.state:
            return []  # still stopped, and read since it stopped
        files = []
        for f, data in Capture(self.lab)._files(host, with_data=True):
            start = tail.start(f.name, data)
            files.append((f.name, start, data[:HEAD_OCTETS].hex(), data[start:]))
        return tail.take(files)
