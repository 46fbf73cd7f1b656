"""Benchmark: how long `labctl web` takes to answer, from the command typed to its first JSON.

Each round starts ``python -m labctl web --lab LAB`` afresh, waits for the URL it prints, and times
until ``GET /api/topology`` has answered; the floor is the same with a bare
``http.server.ThreadingHTTPServer`` in a fresh interpreter (nothing of labctl imported). No other
HTTP server library is installed with labctl (pyproject), so the standard library's is the one to
beat: the issue asks for under a second. Median and worst of ``--rounds``. The lab need not be up:
the server answers before its follower has read the lab.

    python bench/bench_web.py [--rounds 7] [--lab maillab]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLOOR = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"http://127.0.0.1:{s.server_address[1]}/?token=x", flush=True)
s.serve_forever()
"""


def once(cmd: list[str], path: str) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        base, _, token = url.partition("/?token=")
        with urllib.request.urlopen(f"{base}{path}?token={token}", timeout=10) as answer:
            answer.read()
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--lab", default="maillab")
    args = ap.parse_args()
    runs = {
        "labctl web": ([sys.executable, "-m", "labctl", "web", "--lab", args.lab], "/api/topology"),
        "bare ThreadingHTTPServer": ([sys.executable, "-c", FLOOR], "/"),
    }
    for name, (cmd, path) in runs.items():
        once(cmd, path)  # warm the page cache
        times = sorted(once(cmd, path) for _ in range(args.rounds))
        print(f"{name:28} median {statistics.median(times) * 1000:6.0f} ms   worst {times[-1] * 1000:6.0f} ms"
              f"   ({args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
