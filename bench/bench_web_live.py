"""Benchmark: `labctl web` live: from a packet captured to its exchange on the event stream, and
the server's CPU while it follows a lab idle and under load.

A lab (``--lab`` if it is up, else a fresh one) is followed by ``labctl web``; a client of the
page's own event stream (/api/events) notes when each exchange arrives. The latency of an arrival
is its time minus the capture time of the newest packet it holds (``end``: the lab's clock; the
lab's hosts share this machine's kernel clock); the page draws it in the next frame. Then the
server's CPU (user + system, from /proc) over ``--idle`` seconds of a quiet lab, and while
``--messages`` messages are relayed (bench/mailload.py's sender, 4 clients). The engine's own CPU
for the follower's look each second (an exec per running host) is not in it.

    python bench/bench_web_live.py [--lab NAME] [--messages 200] [--idle 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import fresh_lab, run_once  # noqa: E402
from labctl import engine  # noqa: E402
from labctl.lab import Lab  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def listen(port: int, token: str, since: int, arrivals: list[tuple[float, dict[str, Any]]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", f"/api/events?token={token}&since={since}", headers={"Host": f"127.0.0.1:{port}"})
    answer = conn.getresponse()
    kind = ""
    while True:
        line = answer.readline()
        if not line:
            return
        if line.startswith(b"event: "):
            kind = line[7:].strip().decode()
        elif line.startswith(b"data: ") and kind == "exchange":
            arrivals.append((time.time(), json.loads(line[6:])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", help="a lab that is up (default: a fresh one, bench-web, removed afterwards)")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--idle", type=float, default=30.0)
    args = ap.parse_args()
    client = engine.connect()
    lab = Lab(client, args.lab) if args.lab else fresh_lab(client, "bench-web")
    web = subprocess.Popen([sys.executable, "-m", "labctl", "web", "--lab", lab.name], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert web.stdout is not None
        url = web.stdout.readline().strip()
        port, token = int(url.split(":")[2].split("/")[0]), url.rsplit("=", 1)[1]
        time.sleep(5)  # the first look reads the whole capture; then the lab is quiet
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/api/exchanges", headers={"Host": f"127.0.0.1:{port}", "X-Maillab-Token": token})
        since = json.loads(conn.getresponse().read())["last_event"]
        arrivals: list[tuple[float, dict[str, Any]]] = []
        threading.Thread(target=listen, args=(port, token, since, arrivals), daemon=True).start()

        before, t = cpu_seconds(web.pid), time.monotonic()
        time.sleep(args.idle)
        idle = (cpu_seconds(web.pid) - before) / (time.monotonic() - t)

        before, t = cpu_seconds(web.pid), time.monotonic()
        run_once(lab, "smtp.ouhk.example", f"web{int(time.time())}", args.messages, 4, 0.0, 4096)
        time.sleep(3)  # the last exchanges settle
        loaded = (cpu_seconds(web.pid) - before) / (time.monotonic() - t)
        lags = sorted(at - x["end"] for at, x in arrivals)
    finally:
        web.terminate()
        web.wait()
        if not args.lab:
            lab.down()
    if not lags:
        print("no exchange arrived on the stream")
        return 1
    p95 = lags[min(len(lags) - 1, int(len(lags) * 0.95))]
    print(f"packet captured -> exchange on the stream: median {statistics.median(lags):.2f} s, p95 {p95:.2f} s "
          f"({len(lags)} arrivals; the follower looks once a second)")
    print(f"labctl web CPU: idle lab {idle * 100:.1f}% of a core ({args.idle:.0f} s); "
          f"relaying {args.messages} messages of 4 kB: {loaded * 100:.1f}% of a core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
