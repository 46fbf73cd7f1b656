"""The ``mua`` role: a host where a student (or labctl) runs the mail client.

Nothing listens here; the host only has to stay up, with its resolver pointed at the lab DNS,
until `labctl down`.
"""

from __future__ import annotations

from services import config, runtime


def main(argv: list[str]) -> int:
    runtime.setup_logging("mua")
    cfg = config.load()
    runtime.join_lab(cfg)
    runtime.log.info("mail user agent host %s ready", cfg.this.fqdn)
    return runtime.serve(runtime.forever)
