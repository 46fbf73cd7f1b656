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

``--tls``: no lab, no tshark. The same SMTP submission (``--messages`` of ``--size-kb``) is made
twice as a capture, in clear and under STARTTLS (a real TLS 1.3 session, Python's ssl on memory
BIOs, as tests/unit/tlswire.py makes them for the tests; 1448-octet segments), and the decode of
each timed, best of ``--repeat``, the TLS one with its key log. Target (issue 12): under 1.3x.

    python bench/bench_traffic.py [--messages 60] [--size-kb 300] [--repeat 3] [--pcap FILE] [--keep FILE]
    python bench/bench_traffic.py --tls [--messages 60] [--size-kb 300] [--repeat 3]
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


def tls_captures(messages: int, size_kb: int) -> tuple[bytes, bytes, str]:
    """(the clear capture, the TLS capture, its key log): the same dialogue, the same messages."""
    import base64
    import os

    from tests.unit import tlswire
    from tests.unit.packets import ANDY, SMTP, Tcp, pcap

    script: list[tlswire.Step] = [("s", b"220 smtp.ouhk.example ESMTP\r\n"), ("c", b"EHLO andy\r\n"),
                                  ("s", b"250-smtp.ouhk.example\r\n250 STARTTLS\r\n"), ("c", b"STARTTLS\r\n"),
                                  ("s", b"220 2.0.0 go ahead\r\n"), ("tls", b""), ("c", b"EHLO andy\r\n"),
                                  ("s", b"250 smtp.ouhk.example\r\n")]
    for i in range(messages):
        blob = base64.encodebytes(os.urandom(size_kb * 1024 * 3 // 4)).replace(b"\n", b"\r\n")
        msg = (f"From: andy@ouhk.example\r\nSubject: bench {i}\r\nMessage-ID: <bench.{i}@ouhk.example>\r\n\r\n"
               ).encode() + blob
        script += [("c", b"MAIL FROM:<andy@ouhk.example>\r\n"), ("s", b"250 2.1.0 ok\r\n"),
                   ("c", b"RCPT TO:<betty@stevenchoy.example>\r\n"), ("s", b"250 2.1.5 ok\r\n"),
                   ("c", b"DATA\r\n"), ("s", b"354 go ahead\r\n"), ("c", msg + b".\r\n"),
                   ("s", b"250 2.0.0 queued\r\n")]
    script += [("c", b"QUIT\r\n"), ("s", b"221 2.0.0 bye\r\n")]
    played = tlswire.session(script)
    # In clear: the same dialogue without STARTTLS (after which the decoder would read TLS).
    clear_chunks = [(who == "c", data) for who, data in script
                    if who != "tls" and data not in (b"STARTTLS\r\n", b"220 2.0.0 go ahead\r\n")]

    def capture(chunks: list[tuple[bool, bytes]]) -> bytes:
        t = Tcp(ANDY, 40000, SMTP, 587, step=0.0001).handshake()
        for from_client, data in chunks:
            for j in range(0, len(data), 1448):
                t.segment(from_client, data[j:j + 1448])
        return pcap(t.close().packets)

    return capture(clear_chunks), capture(played.chunks), played.keylog


def decode_once(capture: bytes, keylog: str | None) -> tuple[float, int]:
    started = time.perf_counter()
    decoder = TrafficDecoder()
    if keylog:
        decoder.add_keys(keylog)
    decoder.feed_capture(capture)
    decoder.tcp.finish()
    convs = decoder.conversations()
    return time.perf_counter() - started, sum(len(c.messages) for c in convs)


def tls_case(messages: int, size_kb: int, repeat: int) -> int:
    clear, sealed, keylog = tls_captures(messages, size_kb)
    runs_clear = [decode_once(clear, None) for _ in range(repeat)]
    runs_tls = [decode_once(sealed, keylog) for _ in range(repeat)]
    t_clear, t_tls = min(r[0] for r in runs_clear), min(r[0] for r in runs_tls)
    assert runs_clear[0][1] == runs_tls[0][1] == messages, (runs_clear[0], runs_tls[0])
    print(f"clear capture: {len(clear) / 1e6:.1f} MB, decoded in {t_clear:.3f} s "
          f"({len(clear) / 1e6 / t_clear:.0f} MB/s)")
    print(f"TLS 1.3 capture (STARTTLS, TLS_AES_256_GCM_SHA384, key log): {len(sealed) / 1e6:.1f} MB, decoded and "
          f"decrypted in {t_tls:.3f} s ({len(sealed) / 1e6 / t_tls:.0f} MB/s); {messages} messages in each")
    ratio = t_tls / t_clear
    print(f"ratio (TLS vs clear): {ratio:.2f}x; best of {repeat} runs each; target: under 1.3x")
    return 0 if ratio < 1.3 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--size-kb", type=int, default=300, help="base64 body size of each message")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pcap", type=Path, help="reuse this capture instead of making one")
    parser.add_argument("--keep", type=Path, default=Path("/tmp/maillab-bench-traffic.pcapng"),
                        help="where the capture made here is written")
    parser.add_argument("--tls", action="store_true", help="the TLS case: decode of a TLS capture vs the same "
                        "traffic in clear (synthetic, no lab)")
    args = parser.parse_args()
    if args.tls:
        return tls_case(args.messages, args.size_kb, args.repeat)
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
