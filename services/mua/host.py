"""The ``mua`` role: a host where a student (or labctl) runs the mail client.

Nothing listens here; the host only has to stay up, with its resolver pointed at the lab DNS,
until `labctl down`.
"""

from __future__ import annotations

from services import runtime


def main(argv: list[str]) -> int:
    cfg = runtime.start_role("mua")
    if cfg is None:
        return 1
    runtime.log.info("mail user agent host %s ready", cfg.this.fqdn)
    return runtime.serve(runtime.forever)
