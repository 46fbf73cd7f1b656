"""``python3 -m services queue [--json] [--flush]``: look into the MTA's queue, like ``mailq``.

Without options it prints every queued message with its recipients: state, attempts, when the
next try is due and the last error. ``--json`` prints the same as one JSON document (labctl
reads it). ``--flush`` makes every pending recipient due now and signals the running MTA
(SIGUSR1 to PID 1 of the container) so it tries at once instead of at its next wake-up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from services.smtp.spool import DEFAULT_SPOOL, QueueEntry, Spool

DESCRIPTION = "Show the sender MTA's queue, or flush it."
MTA_PID = 1  # the MTA is the container's main process (`python3 -m services mta`)
FLUSH_SIGNAL = signal.SIGUSR1  # the MTA main calls DeliveryWorker.flush() on it


def relative(seconds: float) -> str:
    """``-5`` -> "5s ago", ``90`` -> "in 1m30s": short enough for a queue listing."""
    s = round(abs(seconds))
    if s == 0:
        return "now"
    if s >= 3600:
        text = f"{s // 3600}h{s % 3600 // 60:02d}m"
    elif s >= 60:
        text = f"{s // 60}m{s % 60:02d}s"
    else:
        text = f"{s}s"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def to_json(entries: list[QueueEntry], now: float) -> dict[str, Any]:
    return {
        "now": now,
        "entries": [
            {
                "id": e.id,
                "sender": e.sender,  # "" is the null sender <> of a bounce
                "queued_at": e.queued_at,
                "size": e.size,
                "recipients": [
                    {
                        "address": r.address,
                        "status": str(r.status),
                        "attempts": r.attempts,
                        "next_attempt": r.next_attempt if r.pending else None,
                        "last_attempt": r.last_attempt,
                        "last_error": r.last_error,
                        "dsn_status": r.dsn_status,
                        "remote_mta": r.remote_mta,
                        "diagnostic": r.diagnostic,
                        "attempt_times": list(r.attempt_times),
                        "tried": list(r.tried),
                    }
                    for r in e.recipients
                ],
            }
            for e in entries
        ],
    }


def render(entries: list[QueueEntry], now: float) -> str:
    if not entries:
        return "Mail queue is empty\n"
    lines = [f"{'Queue ID':<12}  {'Size':>7}  {'Queued':<9}  Sender"]
    for e in entries:
        lines.append(f"{e.id:<12}  {e.size:>7}  {relative(e.queued_at - now):<9}  <{e.sender}>")
        for r in e.recipients:
            when = f", next try {relative(max(r.next_attempt - now, 0))}" if r.pending else ""
            lines.append(f"    <{r.address}>  {r.status}, {r.attempts} attempt(s){when}")
            if len(r.tried) > 1:  # a host before the last failed too (the primary MX, say)
                lines += [f"        tried: {t}" for t in r.tried]
            elif r.last_error:
                lines.append(f"        last error: {r.last_error}")
        lines.append("")
    pending = sum(1 for e in entries for r in e.recipients if r.pending)
    lines.append(f"-- {len(entries)} message(s), {pending} recipient(s) pending")
    return "\n".join(lines) + "\n"


def _is_mta(pid: int) -> bool:
    """Signal only our MTA: SIGUSR1 to another PID 1 (systemd on a host) means something else."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"services" in argv and b"mta" in argv


def signal_mta(pid: int = MTA_PID) -> bool:
    if not _is_mta(pid):
        return False
    try:
        os.kill(pid, FLUSH_SIGNAL)
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m services queue", description=DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="print the queue as JSON")
    parser.add_argument("--flush", action="store_true", help="try every pending recipient now")
    parser.add_argument("--spool", type=Path, default=DEFAULT_SPOOL, help=f"spool directory (default {DEFAULT_SPOOL})")
    args = parser.parse_args(argv)
    if not args.spool.is_dir():
        print(f"queue: no spool at {args.spool}; is this the MTA host?", file=sys.stderr)
        return 1
    # recover=False: the running MTA owns start-up recovery; we must not touch its tmp files.
    spool = Spool(args.spool, recover=False)
    now = time.time()
    if args.flush:
        count = spool.flush(now)
        signalled = signal_mta()
        note = "the MTA was told to retry now" if signalled else "no running MTA found to signal"
        print(f"queue: {count} recipient(s) made due now; {note}", file=sys.stderr)
    entries = spool.entries()
    if args.json:
        print(json.dumps(to_json(entries, now), indent=2))
    elif not args.flush or entries:
        sys.stdout.write(render(entries, now))
    return 0
