"""The ``mua`` and ``client`` roles: hosts where a student (or labctl) runs the mail client.

Nothing listens here; the host only has to stay up, with its resolver pointed at the lab DNS,
until `labctl down`. A ``client`` host is the same machine outside the MTA's own clients (no
relaying without AUTH, services.config.LabConfig.relay_clients): "someone on the Internet".
"""

from __future__ import annotations

from services import runtime


def main(argv: list[str], role: str = "mua") -> int:
    cfg = runtime.start_role(role)
    if cfg is None:
        return 1
    what = "mail user agent" if role == "mua" else "outside client"
    return runtime.wait_for_signal(lambda: runtime.log.info("%s host %s ready", what, cfg.this.fqdn))


def main_client(argv: list[str]) -> int:
    return main(argv, "client")
