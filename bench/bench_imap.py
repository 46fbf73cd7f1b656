"""Benchmark: IMAP, our server vs Dovecot, on the same mailboxes, in the same run.

Two labs up side by side: compose/lab.yml (our MX serves IMAP on 143) and that lab with overlay
compose/reference/mx.yml (Dovecot serves IMAP on 143). In each, the same script on the MX host
fills betty's Maildir as our MX delivers (services.mailstore.deliver: ``new/``, the sizes in the
names): INBOX with ``--messages`` messages of ``--size`` bytes, and a folder ``Big`` with
``--big`` small ones. Then, from betty's host over the lab network, each round times on each side:

- FETCH: LOGIN, SELECT INBOX, then one ``FETCH 1:* BODY[]``: messages/s and MB/s of the answer;
- SELECT: in a session of its own, ``SELECT Big`` until its tagged OK;
- cold SELECT: in another session, the first SELECT of a folder ``Cold<n>`` of its own each round,
  a copy of Big's ``--big`` messages in ``new/`` made at the fill (as the first look at Big is);
- login: connect to the greeting, and LOGIN to its tagged OK;
- IDLE: on the MX host itself (one clock), a client IDLEs on a folder ``Idle`` while a message
  is delivered into its ``new/`` (tmp, then rename, as a delivery agent does); the delay until its ``* n EXISTS``.

One warm-up round on each side first (Dovecot builds its index at first access, our server lists
the folders, and BODY[] sets \\Seen once; its SELECT is printed as the cold one), then the timed
rounds alternate between the sides; each round's figures are printed, then the medians.
``--before-image`` adds a third lab on another lab image (the code before a change), in the same
interleaved rounds: a before/after in one run.
Targets: FETCH throughput at least Dovecot's (issue 13); SELECT, warm and cold, at most Dovecot's
(issue 17; issue 13 asked within 2x).

    python bench/bench_imap.py [--messages 1000] [--size 10240] [--big 10000] [--rounds 5]
        [--prefix bench] [--before-image maillab:<hash>]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl import engine, topology  # noqa: E402
from labctl.image import ImageBuilder  # noqa: E402
from labctl.lab import Lab  # noqa: E402

REFERENCE = topology.DEFAULT_TOPOLOGY.parent / "reference" / "mx.yml"  # an overlay
MX = "mail.stevenchoy.example"
MAILDIR = "/var/mail/maillab/stevenchoy.example/betty"

# Runs on the MX host: the mailboxes, written as our MX writes them; owned as the mail root is
# (root for ours, vmail for Dovecot, which reads as that user).
FILL = r"""
import os, shutil, sys
from pathlib import Path
from services.mailstore import deliver_batch, ensure_maildir
maildir = Path(sys.argv[1])
messages, size, big, colds = (int(a) for a in sys.argv[2:6])
def message(folder, i, body_size):
    line = b"the quick brown fox jumps over the lazy dog, again and again %07d\n" % i
    body = (line * (body_size // len(line) + 1))[:body_size - 1] + b"\n"  # ends a line, as SMTP mail does
    head = (b"From: andy@ouhk.example\nTo: betty@stevenchoy.example\nSubject: %s %d\n"
            b"Message-ID: <%s.%d@andy.ouhk.example>\nDate: Thu, 03 Dec 2026 12:00:00 +0000\n\n")
    return head % (folder, i, folder, i) + body
for start in range(0, messages, 500):
    deliver_batch([(maildir, message(b"inbox", i, size)) for i in range(start, min(start + 500, messages))])
for name in (".Big", ".Idle"):
    ensure_maildir(maildir / name)
    (maildir / name / "maildirfolder").touch()
folder = maildir / ".Big"
for start in range(0, big, 500):
    deliver_batch([(folder, message(b"big", i, 200)) for i in range(start, min(start + 500, big))])
for n in range(colds):  # a folder a round for the cold SELECT: Big's messages, copied (not synced)
    cold = maildir / f".Cold{n}"
    ensure_maildir(cold)
    (cold / "maildirfolder").touch()
    for name in os.listdir(folder / "new"):
        shutil.copyfile(folder / "new" / name, cold / "new" / name)
owner = os.stat(maildir.parent.parent)
for root, dirs, files in os.walk(maildir.parent.parent):
    for name in (root, *(os.path.join(root, n) for n in dirs + files)):
        os.chown(name, owner.st_uid, owner.st_gid)
print(len(os.listdir(maildir / "new")), len(os.listdir(folder / "new")))
"""

# Runs on betty's host: one round of the client-side timings, as JSON. The socket read through
# one large C buffer (readline, read of a literal's count), not imaplib, which reads line by line
# in Python and would measure itself.
CLIENT = r"""
import json, re, socket, sys, time
host, user, password, cold = sys.argv[1:5]
LITERAL = re.compile(rb"\{(\d+)\}\r\n$")

class Conn:
    def __init__(self):
        t0 = time.perf_counter()
        self.s = socket.create_connection((host, 143), timeout=300)
        self.f = self.s.makefile("rb", buffering=1 << 20)
        self.f.readline()
        self.greeting_s = time.perf_counter() - t0
        self.n = 0
    def command(self, text):
        # Reads to the tagged answer; literals skipped by their counts. Returns (seconds, octets, lines).
        self.n += 1
        tag = b"t%d " % self.n
        t0 = time.perf_counter()
        self.s.sendall(tag + text.encode() + b"\r\n")
        octets, lines = 0, 0
        while True:
            line = self.f.readline()
            if not line:
                sys.exit(f"{text!r}: connection closed")
            octets += len(line)
            m = LITERAL.search(line)
            if m:
                need = int(m.group(1))
                if len(self.f.read(need)) != need:
                    sys.exit(f"{text!r}: connection closed in a literal")
                octets += need
                continue  # the rest of the response follows the literal
            lines += 1
            if line.startswith(tag):
                if not line.startswith(tag + b"OK"):
                    sys.exit(f"{text!r}: {line!r}")
                return time.perf_counter() - t0, octets, lines

out = {}
c = Conn()
out["greeting_s"] = c.greeting_s
out["login_s"] = c.command(f"LOGIN {user} {password}")[0]
c.command("SELECT INBOX")
out["fetch_s"], out["fetch_octets"], out["fetch_lines"] = c.command("FETCH 1:* BODY[]")
c.command("LOGOUT")
# SELECT in a session of its own, as a client opening the folder: not in the wake of the 10 MB
# just sent (the capture of both hosts is still writing it out then, on the same two cores).
c = Conn()
c.command(f"LOGIN {user} {password}")
out["select_big_s"], _, out["select_lines"] = c.command("SELECT Big")
c.command("LOGOUT")
c = Conn()
c.command(f"LOGIN {user} {password}")
out["select_cold_s"] = c.command(f"SELECT {cold}")[0]
c.command("LOGOUT")
print(json.dumps(out))
"""

# Runs on the MX host: IDLE on the folder Idle, deliver one message into its new/, time until its EXISTS.
IDLE = r"""
import json, os, random, socket, sys, time
maildir, user, password, tag = sys.argv[1:5]
s = socket.create_connection(("127.0.0.1", 143), timeout=30)
f = s.makefile("rb")
f.readline()
def command(text):
    s.sendall(text.encode() + b"\r\n")
    while True:
        line = f.readline()
        if line.split(b" ", 1)[0] == text.split(" ", 1)[0].encode():
            return line
login = command(f"a LOGIN {user} {password}")
command("b SELECT Idle")
s.sendall(b"c IDLE\r\n")
assert f.readline().startswith(b"+"), "no IDLE continuation"
# The server's first look is done: what comes next is news. A random moment, so that a server
# that looks at the folder every so often is caught anywhere in its period, not always at one phase.
time.sleep(0.5 + random.random() / 2)
name = f"{time.time():.0f}.M{time.time_ns() // 1000 % 1000000}P{os.getpid()}Q{tag}.{socket.gethostname()}"
tmp = os.path.join(maildir, "tmp", name)
with open(tmp, "wb") as out:
    out.write(b"Subject: idle %s\n\nhello\n" % tag.encode())
    out.flush()
    os.fsync(out.fileno())
owner = os.stat(maildir)
os.chown(tmp, owner.st_uid, owner.st_gid)
t0 = time.perf_counter()
os.rename(tmp, os.path.join(maildir, "new", name))
while True:
    line = f.readline()
    if not line:
        sys.exit("closed while idling")
    if line.endswith(b" EXISTS\r\n"):
        delay = time.perf_counter() - t0
        break
s.sendall(b"DONE\r\n")
command("d LOGOUT")
print(json.dumps({"idle_s": delay}))
"""


def run(lab: Lab, host: str, script: str, *args: str) -> Any:
    ran = lab.exec(host, ["python3", "-c", script, *args])
    if ran.exit_code != 0:
        raise SystemExit(f"{lab.name} {host}: {ran.output} {ran.stderr.decode(errors='replace')}")
    return json.loads(ran.output) if ran.output.strip().startswith("{") else ran.output.split()


def one_round(lab: Lab, n: int) -> dict[str, Any]:
    result: dict[str, Any] = run(lab, "betty", CLIENT, MX, "betty", "betty-secret", f"Cold{n}")
    result.update(run(lab, "mail", IDLE, MAILDIR + "/.Idle", "betty", "betty-secret", f"r{n}"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=10240, help="body size of each INBOX message, bytes")
    parser.add_argument("--big", type=int, default=10000, help="messages in the folder that SELECT opens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix", default="bench", help="lab name prefix (labs are PREFIX-imap-SIDE)")
    parser.add_argument("--before-image", help="also time a lab on this lab image (the code before a change)")
    args = parser.parse_args()

    client = engine.connect()
    images = ImageBuilder(client).images({"lab", "reference"})
    sides = ("ours", "dovecot") + (("before",) if args.before_image else ())
    labs = {side: Lab(client, f"{args.prefix}-imap-{side}") for side in sides}
    topos = {"ours": topology.load(), "dovecot": topology.load_overlay(topology.load(), REFERENCE),
             "before": topology.load()}
    side_images = {side: images for side in sides}
    if args.before_image:
        side_images["before"] = {**images, "lab": args.before_image}
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    filled = {}
    first: dict[str, dict[str, Any]] = {}
    try:
        for side in sides:
            labs[side].down()
            labs[side].up(topos[side], side_images[side])
            filled[side] = run(labs[side], "mail", FILL, MAILDIR, str(args.messages), str(args.size), str(args.big),
                               str(args.rounds + 1))
            first[side] = one_round(labs[side], 0)  # the warm-up: the servers' first look at the mailboxes
            print(f"{side}: first SELECT Big (cold) {first[side]['select_big_s'] * 1000:.1f} ms", flush=True)
        for n in range(1, args.rounds + 1):
            for side in sides:  # interleaved: ours, Dovecot(, before), ours, ...
                rounds[side].append(one_round(labs[side], n))
            print(f"round {n}: " + "  ".join(
                f"{side} FETCH {args.messages / rounds[side][-1]['fetch_s']:.0f} msg/s, "
                f"SELECT {rounds[side][-1]['select_big_s'] * 1000:.2f} ms, "
                f"cold {rounds[side][-1]['select_cold_s'] * 1000:.1f} ms" for side in sides), flush=True)
        version = labs["dovecot"].exec("mail", ["dovecot", "--version"]).output.split()[0]
    finally:
        for side in sides:
            labs[side].down()

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[side])

    before = f", {args.before_image} (before)" if args.before_image else ""
    print(f"images {images['lab']} (ours), {images['reference']} (Dovecot {version}, stock settings){before}")
    print(f"mailboxes: INBOX {args.messages} messages of a {args.size} B body, Big {args.big} messages "
          f"(in new/: ours {filled['ours']}, Dovecot's {filled['dovecot']}); median of {args.rounds} rounds")
    fetch = {s: args.messages / median(s, "fetch_s") for s in sides}
    mbs = {s: statistics.median(r["fetch_octets"] / r["fetch_s"] / 1e6 for r in rounds[s]) for s in sides}
    print(f"  FETCH 1:* BODY[], messages/s: ours {fetch['ours']:7.0f}   Dovecot {fetch['dovecot']:7.0f}   "
          f"ours/Dovecot {fetch['ours'] / fetch['dovecot']:.2f}x  (MB/s: {mbs['ours']:.1f} / {mbs['dovecot']:.1f})")
    rows = (("SELECT Big, to the tagged OK", "select_big_s"), ("cold SELECT Cold<n> (its first)", "select_cold_s"),
            ("connect to the greeting", "greeting_s"),
            ("LOGIN to its tagged OK", "login_s"), ("IDLE: delivery to EXISTS", "idle_s"))
    for label, key in rows:
        a, b = median("ours", key) * 1000, median("dovecot", key) * 1000
        print(f"  {label + ', ms:':34} ours {a:7.2f}   Dovecot {b:7.2f}   ours/Dovecot {a / b:.2f}x (lower is better)")
    a, b = first["ours"]["select_big_s"] * 1000, first["dovecot"]["select_big_s"] * 1000
    print(f"  {'first SELECT Big (cold), ms:':34} ours {a:7.1f}   Dovecot {b:7.1f}   ours/Dovecot {a / b:.2f}x "
          "(the warm-up: ours moves new/ to cur/ and writes the uidlist, Dovecot also builds its index)")
    for side in sides:
        selects = [r["select_big_s"] * 1000 for r in rounds[side]]
        fetches = [args.messages / r["fetch_s"] for r in rounds[side]]
        colds = [r["select_cold_s"] * 1000 for r in rounds[side]]
        print(f"  spread, {side}: SELECT {min(selects):.2f}-{max(selects):.2f} ms, "
              f"cold {min(colds):.1f}-{max(colds):.1f} ms, "
              f"FETCH {min(fetches):.0f}-{max(fetches):.0f} msg/s")
    for label, key in (("SELECT", "select_big_s"), ("cold SELECT", "select_cold_s")):
        per_round = [o[key] / d[key] for o, d in zip(rounds["ours"], rounds["dovecot"], strict=True)]
        print(f"  {label} ours/Dovecot per round: {min(per_round):.2f}x-{max(per_round):.2f}x")
    if "before" in sides:
        c, warm = first["before"]["select_big_s"] * 1000, median("before", "select_big_s") * 1000
        colds_before = median("before", "select_cold_s") * 1000
        print(f"  before ({args.before_image}): FETCH {fetch['before']:.0f} msg/s "
              f"(ours/before {fetch['ours'] / fetch['before']:.2f}x), SELECT {warm:.2f} ms "
              f"(ours/before {median('ours', 'select_big_s') * 1000 / warm:.2f}x), "
              f"cold {colds_before:.1f} ms (ours/before {median('ours', 'select_cold_s') * 1000 / colds_before:.2f}x), "
              f"first SELECT Big {c:.1f} ms (ours/before {a / c:.2f}x)")
    print("targets: FETCH at least Dovecot's (>= 1.00x); SELECT, warm and cold, at most Dovecot's (<= 1.00x)")
    sizes_ok = all(r["fetch_octets"] > args.messages * args.size for s in sides for r in rounds[s])
    met = (fetch["ours"] >= fetch["dovecot"] and median("ours", "select_big_s") <= median("dovecot", "select_big_s")
           and median("ours", "select_cold_s") <= median("dovecot", "select_cold_s"))
    return 0 if sizes_ok and met else 1


if __name__ == "__main__":
    sys.exit(main())
