"""Capture and traffic on a real lab: the always-on capture, decoded dialogues, the six steps.

Everything goes through labctl as a student runs it: `capture status`, `send`, `fetch`,
`traffic --json`, `trace`, `capture export` (read back by tshark).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from labctl.capture import Capture, CaptureTail
from labctl.scenario.facts import CAPTURE_LAG
from labctl.traffic.decode import TrafficDecoder
from tests.lab.conftest import RunningLab, labctl, unique_lab
from tests.lab.waiting import eventually
from tests.seal import outside_addresses
from tests.unit.decoding import read_frames

# Fifty looks, each a `labctl fetch` (about a second on a loaded machine) and a pause.
FETCH_TIMEOUT = 60.0


def _printed(lines: list[str], text: str) -> str:
    """The follow's output so far, once it holds ``text`` (the reader thread appends to ``lines``)."""
    out = "".join(lines)
    assert text in out, out[-3000:]
    return out


def _send_and_fetch(lab_name: str, subject: str) -> str:
    sent = labctl("send", "--lab", lab_name, "--from", "andy", "--to", "betty@stevenchoy.example",
                  "--subject", subject, "--body", "This is the first line of testing message.")
    message_id = re.search(r"Message-ID: (<[^>]+>)", sent.stdout)
    assert message_id, sent.stdout
    def fetched() -> bool:  # the relay is asynchronous: fetch until the message is there
        out = labctl("fetch", "--lab", lab_name, "betty").stdout
        assert "fetched 0 " not in out and "no new" not in out, out
        return True
    eventually(fetched, FETCH_TIMEOUT, f"betty fetching {message_id.group(1)}")
    return message_id.group(1)


def test_every_host_records_from_the_start(running_lab: RunningLab) -> None:
    status = json.loads(labctl("capture", "status", "--lab", running_lab.lab.name, "--json").stdout)
    assert {h["host"] for h in status} == {"ns", "smtp", "mail", "andy", "betty"}
    for host in status:
        assert host["recording"] and host["files"], host
        assert host["directory"] == "/var/lib/maillab/capture"
    # A running host lists its files itself (no download of the ring); they are the files the
    # archive holds, each as large at least a moment later (files only grow until they rotate).
    listed = {h.host.name: h.files for h in Capture(running_lab.lab).status()}
    archived = Capture(running_lab.lab).sources()
    for name, files in listed.items():
        assert len(archived[name]) == len(files) and all(
            f.size <= len(data) for f, data in zip(files, archived[name], strict=True)), (name, files)
    # Captured since before the services answered: the readiness probe's SMTP session is there.
    everything = json.loads(labctl("traffic", "--lab", running_lab.lab.name, "--json", "--all").stdout)
    assert any(c["protocol"] == "smtp" and c["client"]["name"] == "ns.lab.example" for c in everything)
    shown = json.loads(labctl("traffic", "--lab", running_lab.lab.name, "--json").stdout)
    assert not any(c["client"]["name"] == "ns.lab.example" for c in shown)  # the probe is lab machinery


def test_dialogues_and_the_six_steps_from_the_live_capture(running_lab: RunningLab, tmp_path: Path) -> None:
    lab = running_lab.lab
    subject = f"Traffic {time.time_ns()}"
    message_id = _send_and_fetch(lab.name, subject)
    addr = {h.name: h.address for h in lab.status()}

    expected = [("submission", addr["andy"]), ("mx query", addr["smtp"]), ("mx answer", addr["smtp"]),
                ("relay", addr["smtp"]), ("retrieval", addr["betty"])]
    # The capture files lag the wire by up to a second or so (facts.CAPTURE_LAG): look again.
    def six_steps() -> list[dict[str, Any]]:
        convs = json.loads(labctl("traffic", "--lab", lab.name, "--json").stdout)
        seen = []
        for conv in convs:
            c = conv["client"]["ip"]
            for event in conv["events"]:
                if conv["protocol"] != "dns":
                    continue
                if event["kind"] == "query" and event["text"] == "MX? stevenchoy.example":
                    seen.append(("mx query", c, event["time"]))
                if event["kind"] == "answer" and "MX 10 mail.stevenchoy.example" in event["text"]:
                    seen.append(("mx answer", c, event["time"]))
            for m in conv["messages"]:
                if m["message_id"] == message_id:
                    kind = "retrieval" if conv["protocol"] == "pop3" else "submission" if c == addr["andy"] else "relay"
                    seen.append((kind, c, m["time"]))
        seen.sort(key=lambda x: x[2])
        assert [(k, c) for k, c, _ in seen] == expected
        return list(convs)
    convs = eventually(six_steps, CAPTURE_LAG, "the article's steps in the traffic, in order", interval=0.5)
    pop3 = [c for c in convs if c["protocol"] == "pop3" and c["client"]["ip"] == addr["betty"]]
    assert any("PASS betty-secret" in e["text"] for c in pop3 for e in c["events"])  # the lesson
    hidden = json.loads(labctl("traffic", "--lab", lab.name, "--json", "--hide-secrets", "--proto", "pop3").stdout)
    assert not any("betty-secret" in e["text"] for c in hidden for e in c["events"])

    svg = tmp_path / "trace.svg"
    trace = labctl("trace", "--lab", lab.name, message_id, "-o", str(svg))
    assert "6 of 6 steps seen on the wire" in trace.stdout
    assert svg.read_text().startswith("<svg") or "<svg" in svg.read_text()[:200]
    mermaid = labctl("trace", "--lab", lab.name, "--subject", subject, "--mermaid").stdout
    assert mermaid.startswith("sequenceDiagram")


def test_the_exported_capture_reads_back_in_tshark(running_lab: RunningLab, tmp_path: Path) -> None:
    lab = running_lab.lab
    _send_and_fetch(lab.name, f"Export {time.time_ns()}")
    merged = tmp_path / "lab.pcapng"
    out = labctl("capture", "export", "--lab", lab.name, "-o", str(merged))
    count = int(re.search(r"(\d+) packets written", out.stderr).group(1))  # type: ignore[union-attr]
    assert count == len(list(read_frames(merged.read_bytes())))
    tshark = shutil.which("tshark")
    assert tshark, "tshark is installed by tools/ensure-host"
    listed = subprocess.run([tshark, "-r", str(merged), "-T", "fields", "-e", "frame.interface_name"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(listed) == count
    assert set(listed) == {"ns", "smtp", "mail", "andy", "betty"}  # each packet keeps the host it was seen on
    one = tmp_path / "mail.pcapng"
    labctl("capture", "export", "--lab", lab.name, "--host", "mail", "--since", "10m", "-o", str(one))
    assert {f.interface for f in read_frames(one.read_bytes())} == {"mail"}


def test_the_capture_shows_the_seal(running_lab: RunningLab, tmp_path: Path) -> None:
    """No packet of the lab carries an address outside it, even when a host tries to reach out."""
    lab = running_lab.lab
    tried = lab.exec("andy", ["python3", "-c",
                              "import socket\ntry:\n socket.create_connection(('198.51.100.1', 25), timeout=2)\n"
                              "except OSError as e:\n print(e.strerror)"])
    assert "unreachable" in tried.output.lower()  # refused inside andy: no route, no packet
    lab.exec("andy", ["dig", "+time=1", "+tries=1", "MX", "gmail.com"])  # asked of the lab DNS: REFUSED
    merged = tmp_path / "all.pcapng"
    labctl("capture", "export", "--lab", lab.name, "-o", str(merged))
    frames = list(read_frames(merged.read_bytes()))
    assert frames
    subnet = ipaddress.IPv4Network(f"{lab.find('ns').address}/24", strict=False)
    assert outside_addresses(frames, subnet) == {}
    def refused() -> list[str]:  # the capture files lag the wire: look again
        convs = json.loads(labctl("traffic", "--lab", lab.name, "--json", "--proto", "dns", "--host", "andy").stdout)
        answers = [e["text"] for c in convs for e in c["events"]]
        assert any("REFUSED" in text for text in answers), answers
        return answers
    eventually(refused, CAPTURE_LAG, "the lab DNS refusing andy's query for gmail.com", interval=0.5)


@dataclass
class Followed:
    lines: list[str] = field(default_factory=list)  # stdout, as the follow prints it
    err: str = ""
    returncode: int | None = None


@contextlib.contextmanager
def _following(lab: str, *options: str) -> Iterator[Followed]:
    """`labctl traffic --follow` running while the block runs; Ctrl-C (SIGINT) ends it after."""
    follower = subprocess.Popen([sys.executable, "-m", "labctl", "traffic", "--lab", lab, "--follow", *options],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "200"})
    assert follower.stdout is not None
    followed = Followed()
    reader = threading.Thread(target=lambda: followed.lines.extend(iter(follower.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        yield followed
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=30)  # stdout is the reader's; stderr holds a line or two
        reader.join(timeout=10)
        followed.err = follower.stderr.read() if follower.stderr else ""
        followed.returncode = follower.returncode


def test_follow_prints_a_dialogue_as_it_happens(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    with _following(lab.name, "--proto", "smtp", "--host", "andy") as followed:
        lines = followed.lines
        time.sleep(2)  # its first look: what was there before (the follow says nothing when it has taken one)
        sent = labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
                      "--subject", f"Follow {time.time_ns()}", "--body", "watch this")
        queue_id = re.search(r"250 2\.0\.0 (\w+) Message accepted", sent.stdout)
        assert queue_id, sent.stdout
        # A few looks later (the capture lags the wire; a busy machine makes each look slower).
        eventually(lambda: _printed(lines, queue_id.group(1)), 4 * CAPTURE_LAG,
                   "the follow printing the new dialogue", interval=0.5)
        time.sleep(2)  # more looks at the same dialogue: nothing of it may be printed again
    out, err = "".join(lines), followed.err
    assert followed.returncode == 0, err
    assert "following the lab's capture" in err
    assert f"250 2.0.0 {queue_id.group(1)} Message accepted for delivery" in out, out[-3000:]
    accepted = re.findall(r"S: 250 2\.0\.0 (\w+) Message accepted", out)
    assert accepted and len(accepted) == len(set(accepted))  # every event printed once, however many looks


def _follow_blocks(out: str, of: str) -> list[str]:
    """The lines a follow printed for the connection whose lines include ``of`` (in every block of it)."""
    blocks: dict[str, list[str]] = {}
    header = ""
    for line in out.splitlines():
        if " -> " in line and not line.startswith(("C:", "S:", "-")):
            header = line.split("  ")[0]  # "andy (10.89.0.10:59254) -> smtp.ouhk.example (10.89.0.25:25)"
        elif line:
            blocks.setdefault(header, []).append(line)
    return next((lines for lines in blocks.values() if of in lines), [])


# The article's Activity 1 as a student types it at a telnet prompt: a line, a pause, the next line.
ACTIVITY_1 = r"""
import socket, sys, time
s = socket.create_connection(("smtp.ouhk.example", 25))
f = s.makefile("rb")
print(f.readline().decode().rstrip(), flush=True)
for line in ["HELO andy", "MAIL FROM: andy@ouhk.example", "RCPT TO: betty@stevenchoy.example", "DATA",
             "This is the first line of testing message.", "This is the second line of testing message.",
             ".", "QUIT"]:
    time.sleep(float(sys.argv[1]))
    s.sendall(line.encode() + b"\r\n")
    if line not in ("This is the first line of testing message.", "This is the second line of testing message."):
        print(f.readline().decode().rstrip(), flush=True)
"""


def test_follow_prints_activity_1_typed_by_hand_line_by_line(running_lab: RunningLab) -> None:
    # Defect 11: the greeting in one look, HELO in the next, a look inside DATA: the follow
    # crashed (KeyError) or printed a 0-line message. Each line typed must come out once, whole.
    lab = running_lab.lab
    with _following(lab.name, "--proto", "smtp", "--host", "andy") as followed:
        lines = followed.lines
        time.sleep(2)  # its first look (the follow says nothing when it has taken one)
        typed = lab.exec("andy", ["python3", "-c", ACTIVITY_1, "1.3"])  # slower than a look (1 s)
        assert typed.exit_code == 0, typed.output + typed.stderr.decode()
        queue_id = re.search(r"250 2\.0\.0 (\w+) Message accepted", typed.output)
        assert queue_id, typed.output
        qid = queue_id.group(1)
        eventually(lambda: _printed(lines, "221"), 4 * CAPTURE_LAG, "the follow printing the QUIT's 221",
                   interval=0.5)
        time.sleep(2)  # more looks: nothing of the dialogue may be printed again
    out, err = "".join(lines), followed.err
    assert followed.returncode == 0, err
    assert "Traceback" not in err, err
    ours = "\n".join(_follow_blocks(out, of="C: HELO andy"))
    for expected in ("S: 220 ", "C: HELO andy", "C: MAIL FROM: andy@ouhk.example", "S: 250 2.1.0",
                     "C: RCPT TO: betty@stevenchoy.example", "S: 250 2.1.5", "C: DATA", "S: 354 ",
                     f"S: 250 2.0.0 {qid} Message accepted for delivery", "C: QUIT", "S: 221 "):
        assert ours.count(expected) == 1, (expected, out[-3000:])
    messages = re.findall(r"<message, (\d+) lines?[^>]*>", ours)
    assert messages == ["2"], out[-3000:]  # never a 0-line message first, never twice


FrameKey = tuple[str, int, bytes]


def _look(tail: CaptureTail, seen: set[FrameKey]) -> tuple[dict[str, list[bytes]], int]:
    """One look of the tail; every packet it gives must be new. Returns the pieces and their octets."""
    pieces = tail.poll()
    moved = 0
    for host, files in pieces.items():
        for p in files:
            moved += len(p)
            for f in read_frames(p):
                key = (host, f.ts_ns, bytes(f.data))
                if key in seen:  # never, not even once: ends a wait at once (tests.lab.waiting)
                    pytest.fail(f"a packet of {host} given twice")
                seen.add(key)
    return pieces, moved


def test_a_follow_look_moves_only_what_the_capture_gained(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    tail = CaptureTail(lab)
    seen: set[FrameKey] = set()
    first, _ = _look(tail, seen)
    assert set(first) == {"ns", "smtp", "mail", "andy", "betty"} and all(first.values())
    decoder = TrafficDecoder()
    decoder.feed_captures(first)
    subject = f"Tail {time.time_ns()}"
    labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
           "--subject", subject, "--body", "only the new packets")
    moved = 0

    def decoded() -> bool:
        nonlocal moved
        pieces, octets = _look(tail, seen)
        moved += octets
        decoder.feed_captures(pieces)
        return any(m.subject == subject for c in decoder.conversations() for m in c.messages)
    eventually(decoded, 4 * CAPTURE_LAG, f"the message {subject!r} in what the looks moved", interval=0.5)
    assert 0 < moved < 1_000_000  # the new session's packets, not the rings again


def test_a_follow_reads_a_stopped_host_once_and_its_new_run_after_a_start(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    tail = CaptureTail(lab)
    seen: set[FrameKey] = set()
    _look(tail, seen)
    lab.stop("betty")
    try:
        _look(tail, seen)  # through the archive: what betty wrote until she stopped
        again, _ = _look(tail, seen)
        assert again["betty"] == []  # a stopped host's files do not change: not read again
    finally:
        lab.start("betty")
    # the recorder's new run, with its first packets
    eventually(lambda: _look(tail, seen)[0]["betty"], 4 * CAPTURE_LAG, "betty's new capture run in a look",
               interval=0.5)


def test_follow_ends_saying_so_when_its_lab_is_removed(image: str) -> None:
    name = unique_lab("fol")
    labctl("up", "--lab", name)
    follower = subprocess.Popen([sys.executable, "-m", "labctl", "traffic", "--lab", name, "--follow"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert follower.stderr is not None
    try:
        first = follower.stderr.readline()  # "following the lab's capture": about to take its first look
    finally:
        labctl("down", "--lab", name)
    _, rest = follower.communicate(timeout=30)
    err = first + rest
    assert follower.returncode == 1
    assert f"lab {name!r} is not up" in err and "Traceback" not in err
