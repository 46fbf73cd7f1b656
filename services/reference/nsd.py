"""The ``nsd-dns`` role: NSD serving the lab's zones in place of our DNS server.

labctl renders the same zone files for it as for ours (labctl/zonefiles.py, under
/etc/maillab/zones); this writes nsd.conf naming each of them and runs ``nsd -d``. NSD keeps its
defaults (one server process, as ours is one asyncio process) apart from response rate limiting.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from services import config, runtime
from services.reference import supervise

NSD_CONF = Path("/etc/nsd/nsd.conf")
RUN_DIR = Path("/run/nsd")
ZONE_SUFFIX = ".zone"


def nsd_conf(zone_files: Sequence[str], zones_dir: Path = config.ZONES_DIR, run_dir: Path = RUN_DIR) -> str:
    """nsd.conf for the zone files (``stevenchoy.example.zone`` serves ``stevenchoy.example``)."""
    lines = [
        "# written by maillab (services/reference/nsd.py)",
        "server:",
        "  ip-address: 0.0.0.0",
        "  port: 53",
        "  do-ip6: no",
        "  verbosity: 1",
        '  logfile: ""',  # with -d NSD logs to stderr: the container's log
        '  database: ""',  # zones are read from the zone files; no nsd.db to keep in sync
        # Response rate limiting is an anti-abuse default (200 answers/s per client /24, the rest
        # dropped or truncated). In a lab every query comes from a handful of hosts, so it would
        # throttle a benchmark's single client, which our server (no RRL) does not; it is off.
        "  rrl-ratelimit: 0",
        "  rrl-whitelist-ratelimit: 0",
        f"  zonesdir: {json.dumps(str(zones_dir))}",
        f"  zonelistfile: {json.dumps(str(run_dir / 'zone.list'))}",
        f"  xfrdfile: {json.dumps(str(run_dir / 'xfrd.state'))}",
        f"  pidfile: {json.dumps(str(run_dir / 'nsd.pid'))}",
        "remote-control:",
        "  control-enable: no",
    ]
    for fname in sorted(zone_files):
        if not fname.endswith(ZONE_SUFFIX):
            continue
        lines += ["zone:", f"  name: {json.dumps(fname[: -len(ZONE_SUFFIX)])}", f"  zonefile: {json.dumps(fname)}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="python3 -m services nsd-dns", description=__doc__.splitlines()[0]).parse_args(argv)
    cfg = runtime.start_role("nsd-dns")
    if cfg is None:
        return 1
    zones = [p.name for p in config.ZONES_DIR.glob(f"*{ZONE_SUFFIX}")] if config.ZONES_DIR.is_dir() else []
    if not zones:
        runtime.log.error("no zone files in %s; start this host with `labctl up`", config.ZONES_DIR)
        return 1
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    NSD_CONF.write_text(nsd_conf(zones))
    supervise.remove_stale([RUN_DIR / "nsd.pid"])
    return supervise.run([["nsd", "-d", "-c", str(NSD_CONF)]])
