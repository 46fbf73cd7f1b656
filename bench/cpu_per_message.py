"""Where a relayed message's CPU goes: each process's CPU time per message under a relay load.

Brings a lab up, sends a warm-up load, then N messages from C concurrent clients on andy's host to
the target (the MTA by default, or the MX for the one-hop baseline), and reads every process's
utime and stime from /proc before and after (the engine's host view: the lab's servers, their
capture, dockerd, containerd's shims). Prints the busiest processes with their milliseconds of
CPU per message, and the whole machine's user/system/idle split over the run.

Run it on the machine the engine runs on (it reads the engine's processes from /proc), as root.
``--perf FILE`` also records ``perf record -a -g`` over the measured load, for ``perf report``.

    python bench/cpu_per_message.py [--target smtp.ouhk.example] [--messages 2000] [--clients 8] [--perf FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import fresh_lab, run_once  # noqa: E402
from labctl import engine  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (utime, stime, command line) of every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(name)] = (int(fields[11]), int(fields[12]), cmd or stat[stat.index("(") + 1:stat.rindex(")")])
    return out


def machine() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smtp.ouhk.example")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--perf", help="also run perf record -a -g into this file")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    client = engine.connect()
    lab = fresh_lab(client, "bench-cpu")
    perf = None
    try:
        run_once(lab, args.target, "warm", 200, args.clients, 0.0)
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-F", "499", "-a", "-g", "-o", args.perf],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before, cpu0, t0 = processes(), machine(), time.time()
        result = run_once(lab, args.target, "measure", args.messages, args.clients, 0.0)
        after, cpu1, t1 = processes(), machine(), time.time()
    finally:
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        lab.down()

    n = args.messages
    print(f"{n} messages from {args.clients} clients to {args.target}: {result['per_s']:.0f} msg/s "
          f"(sent {result['sent']}, delivered {result['delivered']}), {t1 - t0:.1f} s")
    user, nice, system, idle, iowait, irq, softirq = (b - a for a, b in zip(cpu0, cpu1, strict=True))
    total = user + nice + system + idle + iowait + irq + softirq
    share = {k: f"{100 * v / total:.0f} %" for k, v in
             {"user": user, "system": system, "softirq": softirq, "iowait": iowait, "idle": idle}.items()}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in share.items()))
    # A process that ended during the load (the sender on andy) is missing here: its CPU is in
    # the machine's figures only.
    rows = []
    for pid, (u1, s1, cmd) in after.items():
        u0, s0, _ = before.get(pid, (0, 0, cmd))
        if (u1 - u0) + (s1 - s0) > 0:
            rows.append(((u1 - u0) / HZ, (s1 - s0) / HZ, pid, cmd))
    rows.sort(key=lambda r: -(r[0] + r[1]))
    print(f"{'process':60s} {'user s':>7s} {'sys s':>7s} {'ms/msg':>7s}")
    for u, s, pid, cmd in rows[:args.top]:
        print(f"{f'{pid} {cmd}'[:60]:60s} {u:7.2f} {s:7.2f} {1000 * (u + s) / n:7.3f}")
    return 0 if result["sent"] == result["delivered"] else 1


if __name__ == "__main__":
    sys.exit(main())
