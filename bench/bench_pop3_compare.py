"""Benchmark: POP3 retrieval, our POP3 server vs Dovecot, from a mailbox of 1,000 messages.

Two labs up side by side: compose/lab.yml (our MX serves POP3) and that lab with
overlay compose/reference/mx.yml
(Postfix delivers, Dovecot serves POP3). In each, andy's host fills betty's mailbox over SMTP with
the same N messages (waiting until every one is in the Maildir); then a poplib client on betty's
host logs in, STATs and RETRs every message, and QUITs without DELE (nothing changes between
rounds). One session on each side first warms up (Dovecot builds its index on first access, our
server reads the directory), then the timed sessions alternate between the two labs.

Reported: RETR messages/s and MB/s (the bytes of the RETR answers on the wire, at least STAT's
octets), the median over the rounds. Target (issue 6): ours within 2x of Dovecot.

    python bench/bench_pop3_compare.py [--messages 1000] [--size 10240] [--rounds 5] [--prefix bench]
        [--before-image maillab:<hash>]

``--before-image`` adds a third lab on another lab image (the code before a change), in the same
interleaved rounds: a before/after in one run. Each round's figures are printed, then the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import run_once  # noqa: E402
from labctl import engine, topology  # noqa: E402
from labctl.image import ImageBuilder  # noqa: E402
from labctl.lab import Lab  # noqa: E402

REFERENCE = topology.DEFAULT_TOPOLOGY.parent / "reference" / "mx.yml"  # an overlay
MX = "mail.stevenchoy.example"

# Runs on betty's host: one POP3 session that RETRs every message; prints its timings as JSON. A raw
# socket read in large chunks, not poplib: poplib reads line by line in Python and would measure
# itself (about 1,300 messages/s of 10 kB on this machine, whichever server it talks to).
CLIENT = r"""
import json, socket, sys, time
host, user, password = sys.argv[1:4]
t0 = time.perf_counter()
s = socket.create_connection((host, 110), timeout=120)
f = s.makefile("rb")
def command(line):
    if line:
        s.sendall(line.encode() + b"\r\n")
    reply = f.readline()
    if not reply.startswith(b"+OK"):
        sys.exit(f"{line!r}: {reply!r}")
    return reply
command("")
command("USER " + user)
command("PASS " + password)
count, octets = (int(x) for x in command("STAT").split()[1:3])
t1 = time.perf_counter()
wire = 0
for i in range(1, count + 1):
    s.sendall(b"RETR %d\r\n" % i)
    head, tail = b"", b""
    # One request at a time, so the answer ends with the first CRLF.CRLF at the end of what has
    # come (dot-stuffing keeps that sequence out of the message itself).
    while tail != b"\r\n.\r\n":
        chunk = s.recv(1 << 16)
        if not chunk:
            sys.exit(f"RETR {i}: connection closed")
        if len(head) < 3:
            head += chunk[:3]
            if not head.startswith(b"+OK"[:len(head)]):
                sys.exit(f"RETR {i}: {chunk[:80]!r}")
        wire += len(chunk)
        tail = (tail + chunk)[-5:]
t2 = time.perf_counter()
s.sendall(b"QUIT\r\n")
f.readline()
print(json.dumps({"count": count, "stat_octets": octets, "retr_octets": wire, "login_s": t1 - t0, "retr_s": t2 - t1}))
"""


def session(lab: Lab) -> dict[str, Any]:
    ran = lab.exec("betty", ["python3", "-c", CLIENT, MX, "betty", "betty-secret"])
    if ran.exit_code != 0:
        raise SystemExit(f"{lab.name}: the POP3 client failed: {ran.stderr.decode()}")
    result: dict[str, Any] = json.loads(ran.output)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=10240, help="body size of each message, bytes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix", default="bench", help="lab name prefix (labs are PREFIX-pop3-SIDE)")
    parser.add_argument("--before-image", help="also time a lab on this lab image (the code before a change)")
    args = parser.parse_args()

    client = engine.connect()
    images = ImageBuilder(client).images({"lab", "reference"})
    SIDES = ("ours", "dovecot") + (("before",) if args.before_image else ())
    labs = {side: Lab(client, f"{args.prefix}-pop3-{side}") for side in SIDES}
    topos = {"ours": topology.load(), "dovecot": topology.load_overlay(topology.load(), REFERENCE),
             "before": topology.load()}
    side_images = {side: images for side in SIDES}
    if args.before_image:
        side_images["before"] = {**images, "lab": args.before_image}
    sessions: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    fills = {}
    try:
        for side in SIDES:
            labs[side].down()
            labs[side].up(topos[side], side_images[side])
            fills[side] = run_once(labs[side], MX, f"fill-{side}", args.messages, 8, 0.0, args.size)
            session(labs[side])  # the warm-up
        for r in range(args.rounds):
            for side in SIDES:  # interleaved: ours, reference(, before), ours, ...
                sessions[side].append(session(labs[side]))
            print(f"round {r + 1}: " + "  ".join(
                f"{side} login {sessions[side][-1]['login_s'] * 1000:.1f} ms, "
                f"RETR {sessions[side][-1]['count'] / sessions[side][-1]['retr_s']:.0f} msg/s" for side in SIDES),
                flush=True)
        version = labs["dovecot"].exec("mail", ["dovecot", "--version"]).output.split()[0]
    finally:
        for side in SIDES:
            labs[side].down()

    def rates(side: str) -> tuple[float, float, dict[str, Any]]:
        ss = sessions[side]
        per_s = statistics.median(s["count"] / s["retr_s"] for s in ss)
        mb_s = statistics.median(s["retr_octets"] / s["retr_s"] / 1e6 for s in ss)
        return per_s, mb_s, ss[0]

    (a_n, a_mb, a), (b_n, b_mb, b) = rates("ours"), rates("dovecot")
    print(f"images {images['lab']} (ours), {images['reference']} (Dovecot {version}, stock settings)")
    print(f"mailbox: {args.messages} messages of a {args.size} B body, filled over SMTP "
          f"(ours: sent {fills['ours']['sent']}, stored {fills['ours']['delivered']}; "
          f"Dovecot's: sent {fills['dovecot']['sent']}, stored {fills['dovecot']['delivered']})")
    print(f"  STAT: ours {a['count']} messages, {a['stat_octets']} octets; "
          f"Dovecot {b['count']} messages, {b['stat_octets']} octets")
    print(f"RETR of every message, one session, median of {args.rounds} (after one warm-up session):")
    print(f"  messages/s:  ours {a_n:7.0f}   Dovecot {b_n:7.0f}   ours/Dovecot {a_n / b_n:.2f}x")
    print(f"  MB/s (wire): ours {a_mb:7.1f}   Dovecot {b_mb:7.1f}   ours/Dovecot {a_mb / b_mb:.2f}x")
    login_a = statistics.median(s["login_s"] for s in sessions["ours"]) * 1000
    login_b = statistics.median(s["login_s"] for s in sessions["dovecot"]) * 1000
    print(f"  connect + USER/PASS + STAT: ours {login_a:.1f} ms   Dovecot {login_b:.1f} ms   "
          f"ours/Dovecot {login_a / login_b:.2f}x (lower is better)")
    for side in SIDES:
        logins = [s["login_s"] * 1000 for s in sessions[side]]
        retrs = [s["count"] / s["retr_s"] for s in sessions[side]]
        print(f"  spread, {side}: login {min(logins):.1f}-{max(logins):.1f} ms "
              f"(median {statistics.median(logins):.1f}), "
              f"RETR {min(retrs):.0f}-{max(retrs):.0f} msg/s")
    ratios = [a["login_s"] / b["login_s"] for a, b in zip(sessions["ours"], sessions["dovecot"], strict=True)]
    print(f"  login ours/Dovecot per round: {min(ratios):.2f}x-{max(ratios):.2f}x")
    if "before" in SIDES:
        before = [a["login_s"] / b["login_s"] for a, b in zip(sessions["ours"], sessions["before"], strict=True)]
        print(f"  login ours/before per round: {min(before):.2f}x-{max(before):.2f}x "
              f"(before {args.before_image})")
    print("target: ours within 2x of Dovecot (ratio >= 0.50x)")
    complete = all(s["count"] == args.messages and s["retr_octets"] >= s["stat_octets"]
                   for side in SIDES for s in sessions[side])
    return 0 if complete and all(f["sent"] == f["delivered"] for f in fills.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
