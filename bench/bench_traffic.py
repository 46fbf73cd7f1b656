"""Benchmark: decoding a large lab capture into dialogues, against tshark on the same file in the same run.

The capture is lab mail traffic, made here: a fresh lab, tcpdump on the MTA and the MX hosts
(inside their network namespaces, as the capture sidecars do), andy submits N messages with
sizeable base64 bodies (an attachment's shape), the MTA relays them to the MX, betty retrieves
them all by POP3. The two hosts' pcaps are copied out through the Engine API and merged into
one pcapng (labctl.traffic.pcap.write_merged_pcapng), kept for reruns (``--pcap FILE``).

Measured, best of ``--repeat`` runs each, on that one file:

- ours: read the file, reassemble every TCP stream, decode every SMTP/POP3/DNS dialogue
  (labctl.traffic.decode.TrafficDecoder, then .conversations()), in this Python process;
- tshark, following every TCP stream: ``tshark -r FILE -q -z follow,tcp,ascii,0 ... -z follow,tcp,ascii,K``
  in one pass (the stream count K is found beforehand and not timed);
- tshark, dissecting SMTP/POP3/DNS with reassembly (``-Y "smtp || pop || dns" -T fields ...``).

MB/s is the file's size over the time taken. Target (issue 4): faster than tshark.

    python bench/bench_traffic.py [--messages 60] [--size-kb 300] [--repeat 3] [--pcap FILE] [--keep FILE]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mailload import fresh_lab  # noqa: E402
from labctl import engine  # noqa: E402
from labctl.traffic.decode import TrafficDecoder  # noqa: E402
from labctl.traffic.pcap import write_merged_pcapng  # noqa: E402

CAPTURE = "/tmp/bench-traffic.pcap"
CAPTURED_HOSTS = ("smtp", "mail")

# Runs on andy: N messages with base64 bodies of the given size, one SMTP session.
SENDER = r"""
import base64, os, smtplib, sys
count, size = int(sys.argv[1]), int(sys.argv[2]) * 1024
s = smtplib.SMTP("smtp.ouhk.example", 25, local_hostname="andy.ouhk.example", timeout=120)
for i in range(count):
    blob = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n").decode()
    msg = (f"From: andy@ouhk.example\r\nTo: betty@stevenchoy.example\r\nSubject: bench {i}\r\n"
           f"Message-ID: <bench.{i}@ouhk.example>\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{blob}")
    s.sendmail("andy@ouhk.example", ["betty@stevenchoy.example"], msg)
s.quit()
print("sent", count)
"""

# Runs on betty: wait until all N messages are in the mailbox, then RETR every one.
FETCHER = r"""
import poplib, sys, time
count = int(sys.argv[1])
deadline = time.time() + 300
while True:
    p = poplib.POP3("mail.stevenchoy.example", 110, timeout=60)
    p.user("betty@stevenchoy.example"); p.pass_("betty-secret")
    n, _ = p.stat()
    if n >= count or time.time() > deadline:
        break
    p.quit(); time.sleep(1)
for i in range(1, n + 1):
    p.retr(i)
p.quit()
print("retrieved", n)
"""


def make_capture(messages: int, size_kb: int, out: Path) -> None:
    client = engine.connect()
    lab = fresh_lab(client, "bench-traffic")
    try:
        for host in CAPTURED_HOSTS:
            ex = client.api.exec_create(lab.find(host).container,
                                        ["tcpdump", "-i", "eth0", "-s", "0", "-U", "-w", CAPTURE])
            client.api.exec_start(ex["Id"], detach=True)
        time.sleep(1.0)  # tcpdump opens the interface before anything is sent
        started = time.monotonic()
        print(lab.exec("andy", ["python3", "-c", SENDER, str(messages), str(size_kb)]).output.strip())
        print(lab.exec("betty", ["python3", "-c", FETCHER, str(messages)]).output.strip())
        print(f"traffic made in {time.monotonic() - started:.1f} s")
        sources: dict[str, list[bytes]] = {}
        for host in CAPTURED_HOSTS:
            lab.exec(host, ["pkill", "-INT", "tcpdump"])
        time.sleep(1.0)
        for host in CAPTURED_HOSTS:
            stream, _ = client.api.get_archive(lab.find(host).container, CAPTURE)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                assert member is not None
                sources[host] = [member.read()]
        with out.open("wb") as f:
            write_merged_pcapng(sources, f)
    finally:
        lab.down()


def ours(path: Path) -> tuple[float, int, int, int]:
    started = time.perf_counter()
    decoder = TrafficDecoder()
    frames = decoder.feed_capture(path.read_bytes())
    decoder.tcp.finish()
    convs = decoder.conversations()
    elapsed = time.perf_counter() - started
    return elapsed, frames, len(convs), sum(len(c.messages) for c in convs)


def tshark_follow(tshark: str, path: Path) -> tuple[float, int]:
    streams = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "tcp.stream", "-Y", "tcp"],
                             capture_output=True, text=True, check=True).stdout.split()
    count = len({s for s in streams if s})
    args = [tshark, "-r", str(path), "-q"]
    for k in range(count):
        args += ["-z", f"follow,tcp,ascii,{k}"]
    started = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started, count


def tshark_dissect(tshark: str, path: Path) -> float:
    args = [tshark, "-r", str(path), "-Y", "smtp || pop || dns", "-T", "fields", "-e", "frame.time_epoch",
            "-e", "smtp.req.command", "-e", "smtp.req.parameter", "-e", "smtp.response.code",
            "-e", "pop.request.command", "-e", "pop.response.indicator", "-e", "dns.qry.name", "-e", "imf.message_id"]
    started = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--size-kb", type=int, default=300, help="base64 body size of each message")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pcap", type=Path, help="reuse this capture instead of making one")
    parser.add_argument("--keep", type=Path, default=Path("/tmp/maillab-bench-traffic.pcapng"),
                        help="where the capture made here is written")
    args = parser.parse_args()
    tshark = shutil.which("tshark")
    if tshark is None:
        sys.exit("tshark is needed as the baseline: run tools/ensure-host (apt-get install tshark)")
    path = args.pcap
    if path is None:
        path = args.keep
        make_capture(args.messages, args.size_kb, path)
    size_mb = path.stat().st_size / 1e6
    print(f"capture: {path} ({size_mb:.1f} MB)")

    ours_runs = [ours(path) for _ in range(args.repeat)]
    t_ours = min(r[0] for r in ours_runs)
    _, frames, convs, messages = ours_runs[0]
    follow_runs = [tshark_follow(tshark, path) for _ in range(args.repeat)]
    t_follow, streams = min(r[0] for r in follow_runs), follow_runs[0][1]
    t_dissect = min(tshark_dissect(tshark, path) for _ in range(args.repeat))

    print(f"ours (labctl.traffic, reassembly + SMTP/POP3/DNS dialogues): {t_ours:.2f} s, {size_mb / t_ours:.1f} MB/s; "
          f"{frames} packets, {convs} conversations, {messages} messages")
    print(f"tshark -z follow,tcp,ascii (all {streams} TCP streams, one pass): {t_follow:.2f} s, "
          f"{size_mb / t_follow:.1f} MB/s")
    print(f"tshark SMTP/POP3/DNS dissection (-Y ... -T fields): {t_dissect:.2f} s, {size_mb / t_dissect:.1f} MB/s")
    print(f"ratio (ours vs tshark follow): {t_follow / t_ours:.1f}x faster; "
          f"(ours vs tshark dissection): {t_dissect / t_ours:.1f}x faster")
    print(f"best of {args.repeat} runs each; target: faster than tshark")
    return 0 if t_ours < min(t_follow, t_dissect) else 1


if __name__ == "__main__":
    sys.exit(main())
