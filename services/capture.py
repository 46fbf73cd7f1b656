"""Always-on packet capture inside each lab host's own network namespace.

Design decision 6 asks for capture that works wherever the engine runs (a VM included): the
packets are recorded inside each host's namespace and read back through the Engine API. The
recorder runs inside the host itself, as a child of the role, rather than in a sidecar container
joined to the host's namespace: a sidecar loses the namespace whenever its host stops and must be
re-attached by hand after every restart, and costs one more container per host on `up`. Started
by the role, capture comes back with every start of the host, and `-i any` follows interfaces
that come and go (a host disconnected from the lab and reconnected).

Files are a bounded ring: each start of the recorder writes its own run of at most
:data:`FILES_PER_RUN` files of :data:`FILE_MB` MB, and older runs are pruned at start so the whole
directory stays under :data:`BUDGET_BYTES`. tcpdump writes packet-buffered (``-U``), so a killed
host loses no packet it had captured.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("services.capture")

CAPTURE_DIR = Path("/var/lib/maillab/capture")
FILE_MB = 8  # tcpdump -C counts millions of bytes
FILES_PER_RUN = 8
BUDGET_BYTES = 2 * FILE_MB * FILES_PER_RUN * 1_000_000  # this run's ring plus what is left of earlier runs
READY_TIMEOUT = 3.0  # seconds to wait for tcpdump to say it listens
RESTART_DELAY = 1.0  # seconds between restarts of a recorder that died (say, a student killed it)


def tcpdump_command(directory: Path, run: str) -> list[str]:
    return [
        # Not --immediate-mode: it makes libpcap use a ring of fixed slots sized by the snap length
        # (256 KiB each), so the default buffer held about eight packets and a busy machine lost
        # whole stretches of a session. Without it, packets reach the file in blocks, up to about a
        # second late; readers that need them (traffic --follow, scenario facts) look again.
        "tcpdump", "-i", "any", "-n", "-U", "-s", "0",
        "-Z", "root",  # write the files as root: the directory is root's, and no other user exists to matter
        "-C", str(FILE_MB), "-W", str(FILES_PER_RUN),
        "-w", str(directory / f"{run}.pcap"),
    ]


def prune(directory: Path, budget: int) -> list[Path]:
    """Delete the oldest capture files until the directory holds at most ``budget`` bytes."""
    files = sorted((p for p in directory.iterdir() if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name))
    total = sum(p.stat().st_size for p in files)
    removed = []
    for path in files:
        if total <= budget:
            break
        total -= path.stat().st_size
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class Recorder:
    """tcpdump for this host, restarted if it dies, until the role exits."""

    def __init__(self, directory: Path = CAPTURE_DIR) -> None:
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None
        self._listening = threading.Event()

    def start(self) -> bool:
        """Start recording; True once tcpdump listens (so the role's first packets are captured)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            prune(self.directory, BUDGET_BYTES - FILE_MB * FILES_PER_RUN * 1_000_000)
        except OSError as exc:
            log.warning("capture disabled: cannot use %s: %s", self.directory, exc)
            return False
        threading.Thread(target=self._supervise, name="capture", daemon=True).start()
        if not self._listening.wait(READY_TIMEOUT):
            log.warning("capture: tcpdump did not start listening within %.0f s", READY_TIMEOUT)
            return False
        return True

    def _supervise(self) -> None:
        while True:
            run = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
            try:
                proc = subprocess.Popen(tcpdump_command(self.directory, run), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as exc:
                log.warning("capture disabled: cannot run tcpdump: %s", exc)
                self._listening.set()
                return
            self._process = proc
            assert proc.stderr is not None
            tail: list[str] = []
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").strip()
                if "listening on" in line:  # "tcpdump: listening on any, link-type ..."
                    log.info("capture: %s", line)
                    self._listening.set()
                else:
                    tail = (tail + [line])[-3:]
            status = proc.wait()
            log.warning("capture: tcpdump exited with status %s (%s); restarting", status, "; ".join(tail))
            time.sleep(RESTART_DELAY)
