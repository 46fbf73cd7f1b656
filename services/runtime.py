"""What every long-running service shares: logging, prompt shutdown, the lab resolver.

A Python process that is PID 1 in a container gets no default SIGTERM handler, so without
:func:`serve` `docker stop` would wait its whole timeout and then SIGKILL us. Here SIGTERM and
SIGINT cancel the main task, so `labctl down` takes well under a second.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

from services import capture, config, tls
from services.config import LabConfig
from services.logbuffer import CoalescingHandler

log = logging.getLogger("services")

RESOLV_CONF = Path("/etc/resolv.conf")
CAPTURE_ENV = "MAILLAB_CAPTURE"  # "off" turns the always-on capture off (labctl up --no-capture)


def setup_logging(role: str) -> None:
    logging.basicConfig(
        handlers=[CoalescingHandler(sys.stderr)],  # batched writes: dockerd's cost is per write
        level=logging.INFO,
        format=f"%(asctime)s {role} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # aiosmtpd logs every command line at INFO: at a few hundred messages a second that is most
    # of the MTA's CPU (and of dockerd's, which stores each line). Our handlers log one line per
    # message; the dialogue itself is on the wire, for the capture to show.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def start_role(role: str) -> LabConfig | None:
    """What every long-running role does first: log, read the lab config, join the lab.

    Returns None (after logging why) when the configuration cannot be read; the role then
    exits with status 1.
    """
    setup_logging(role)
    try:
        config.materialize_files()
        cfg = config.load()
    except config.ConfigError as exc:
        log.error("%s", exc)
        return None
    join_lab(cfg)
    if cfg.tls.enabled and not tls.trust_lab_ca():
        log.warning("TLS is on but %s is missing: this host's clients will not trust the lab's servers", config.TLS_CA)
    if os.environ.get(CAPTURE_ENV, "on") != "off":
        capture.Recorder().start()
    return cfg


def join_lab(cfg: LabConfig) -> None:
    """Make this container a lab host: sealed from the outside, resolving through the lab DNS."""
    drop_default_route()
    point_resolver_at_lab_dns(cfg)


def drop_default_route() -> None:
    """Remove the default route Docker gives a container even on an internal network.

    The bridge would drop forwarded packets anyway, but a lab host should not even try: with no
    route, a connect to any outside address fails at once with "Network is unreachable" and no
    packet leaves. Docker restores the route on every start, so every start of a role does this.
    """
    for family in ("-4", "-6"):
        if not _has_default_route(family):
            continue  # nothing to remove: no `ip` process to start (IPv6 on a lab network, usually)
        try:
            proc = subprocess.run(["ip", family, "route", "del", "default"], capture_output=True, text=True,
                                  timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not remove the default route: %s", exc)
            return
        err = proc.stderr.strip()
        if proc.returncode != 0 and "No such process" not in err and "No such file" not in err:
            log.warning("could not remove the %s default route (%s); the lab network still drops "
                        "outside traffic, but give the container NET_ADMIN to seal it", family, err)


def _has_default_route(family: str, proc: Path = Path("/proc/net")) -> bool:
    """Whether the kernel's routing table has a default route of ``family`` ("-4" or "-6") on a
    real interface (IPv6's reject routes on ``lo`` do not count); True when it cannot be read."""
    try:
        if family == "-4":
            rows = [line.split() for line in (proc / "route").read_text().splitlines()[1:]]
            return any(len(r) > 7 and r[1] == "00000000" and r[7] == "00000000" for r in rows)
        rows = [line.split() for line in (proc / "ipv6_route").read_text().splitlines()]
        return any(len(r) == 10 and r[0] == "0" * 32 and r[1] == "00" and r[9] != "lo" for r in rows)
    except OSError:
        return True


def point_resolver_at_lab_dns(cfg: LabConfig, path: Path = RESOLV_CONF) -> None:
    """Send every name lookup of this host to the lab DNS server.

    Docker gives containers on user-defined networks its own embedded resolver (127.0.0.11);
    the lab wants each lookup on the wire to the lab's name server, where the capture sees it.
    """
    own_domain = cfg.this.fqdn.partition(".")[2]
    search = f"search {own_domain}\n" if own_domain else ""
    try:
        path.write_text(f"# written by maillab\nnameserver {cfg.nameserver}\n{search}")
    except OSError as exc:  # read-only in unusual setups: say so, keep serving
        log.warning("could not point %s at the lab DNS: %s", path, exc)


# Threads for blocking work (fsync'd writes, smtplib sessions) across all of a role's clients.
# asyncio's default is min(32, CPUs + 4): 6 on a 2-core lab machine, fewer than the MTA's
# concurrent deliveries plus the sessions writing to its queue.
BLOCKING_THREADS = 32


async def _run_until_signalled(main: Callable[[], Awaitable[None]]) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="blocking"))
    task = asyncio.ensure_future(main())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("stopping on signal")


def serve(main: Callable[[], Awaitable[None]]) -> int:
    """Run ``main`` until it returns or SIGTERM/SIGINT arrives; return the exit status."""
    # asyncio is imported here, not at the top: a host that serves nothing (wait_for_signal)
    # starts without it, and `labctl up` starts five hosts at once on two cores.
    import asyncio

    asyncio.run(_run_until_signalled(main))
    return 0


async def forever() -> None:
    """The body of a server that, once listening, only needs to stay up until it is signalled."""
    import asyncio

    await asyncio.Event().wait()


class _Signalled(Exception):
    pass


def _raise_signalled(signum: int, frame: FrameType | None) -> None:
    raise _Signalled(signum)


def wait_for_signal(on_waiting: Callable[[], None] | None = None) -> int:
    """What a host that serves nothing does (a MUA host waits for `labctl exec`): nothing until
    SIGTERM or SIGINT, then exit 0 as :func:`serve` does; without an event loop, so without
    asyncio's import (about 30 ms of CPU per host at `labctl up`). ``on_waiting`` runs once a
    signal would stop it cleanly (the host's "ready" line)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_signalled)
    try:
        if on_waiting is not None:
            on_waiting()
        while True:
            signal.pause()
    except _Signalled:
        log.info("stopping on signal")
    return 0
