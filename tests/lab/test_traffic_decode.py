"""The traffic decoder on a real lab's packets: tcpdump inside each host, send, fetch, decode, trace.

tcpdump is started here with `docker exec` in each host's network namespace (what the capture
sidecars do), so this checks the decoding half on real traffic whatever captures the packets.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import docker

from labctl.lab import Lab
from labctl.traffic import journey
from labctl.traffic.cli import names_from_hosts
from labctl.traffic.decode import decode_captures
from labctl.traffic.pcap import read_frames, write_merged_pcapng
from tests.lab.conftest import RunningLab, labctl

CAPTURE = "/tmp/test-traffic.pcap"


def _capture(client: docker.DockerClient, lab: Lab) -> None:
    """Start tcpdump on every host, writing to CAPTURE, and wait until each has opened its file."""
    hosts = lab.status()
    for h in hosts:
        ex = client.api.exec_create(h.container, ["tcpdump", "-i", "eth0", "-s", "0", "-U", "-w", CAPTURE])
        client.api.exec_start(ex["Id"], detach=True)
    for h in hosts:  # tcpdump has opened the interface once its file exists
        for _ in range(50):
            if lab.exec(h.name, ["test", "-s", CAPTURE]).exit_code == 0:
                break
            time.sleep(0.1)


def _collect(client: docker.DockerClient, lab: Lab) -> dict[str, bytes]:
    out = {}
    for h in lab.status():
        lab.exec(h.name, ["pkill", "-INT", "tcpdump"])
    time.sleep(0.5)  # tcpdump flushes and exits on SIGINT
    for h in lab.status():
        stream, _ = client.api.get_archive(h.container, CAPTURE)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            assert member is not None
            out[h.name] = member.read()
    return out


def test_dialogues_and_the_six_steps_from_real_packets(running_lab: RunningLab, tmp_path: Path) -> None:
    lab = running_lab.lab
    _capture(running_lab.client, lab)
    subject = f"Traffic {time.time_ns()}"
    sent = labctl("send", "--lab", lab.name, "--from", "andy", "--to", "betty@stevenchoy.example",
                  "--subject", subject, "--body", "This is the first line of testing message.")
    message_id = re.search(r"Message-ID: (<[^>]+>)", sent.stdout)
    assert message_id, sent.stdout
    for _ in range(50):  # the relay is asynchronous: fetch until the message is there
        fetched = labctl("fetch", "--lab", lab.name, "betty")
        if "fetched 0 " not in fetched.stdout and "no new" not in fetched.stdout:
            break
        time.sleep(0.2)
    captures = _collect(running_lab.client, lab)

    names = names_from_hosts((h.name, h.fqdn, h.role, h.address) for h in lab.status())
    convs, decoder = decode_captures(captures, names)
    assert decoder.problems == []
    j = journey.trace(convs, message_id=message_id.group(1))
    assert j.complete, journey.timeline(j)
    assert [(s.source, s.target) for s in j.steps] == [
        ("andy", "smtp.ouhk.example"), ("smtp.ouhk.example", "ns.lab.example"),
        ("ns.lab.example", "smtp.ouhk.example"), ("smtp.ouhk.example", "mail.stevenchoy.example"),
        ("mail.stevenchoy.example", "smtp.ouhk.example"), ("mail.stevenchoy.example", "betty")]

    # One merged pcapng: tshark reads the same packets; labctl traffic --json and trace read it back.
    merged = tmp_path / "lab.pcapng"
    with merged.open("wb") as f:
        count = write_merged_pcapng({h: [data] for h, data in captures.items()}, f)
    assert count == sum(len(list(read_frames(data))) for data in captures.values())
    tshark = shutil.which("tshark")
    assert tshark, "tshark is installed by tools/ensure-host"
    listed = subprocess.run([tshark, "-r", str(merged), "-T", "fields", "-e", "frame.number"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(listed) == count

    convs_json = json.loads(labctl("traffic", "--pcap", str(merged), "--json", "--no-names").stdout)
    addr = {h.name: h.address for h in lab.status()}
    seen = []
    for conv in convs_json:
        c = conv["client"]["ip"]
        for event in conv["events"]:
            if conv["protocol"] != "dns":
                continue
            if event["kind"] == "query" and event["text"] == "MX? stevenchoy.example":
                seen.append(("mx query", c, event["time"]))
            if event["kind"] == "answer" and "MX 10 mail.stevenchoy.example" in event["text"]:
                seen.append(("mx answer", c, event["time"]))
        for m in conv["messages"]:
            if m["message_id"] == message_id.group(1):
                kind = "retrieval" if conv["protocol"] == "pop3" else "submission" if c == addr["andy"] else "relay"
                seen.append((kind, c, m["time"]))
    seen.sort(key=lambda x: x[2])
    assert [(k, c) for k, c, _ in seen] == [
        ("submission", addr["andy"]), ("mx query", addr["smtp"]), ("mx answer", addr["smtp"]),
        ("relay", addr["smtp"]), ("retrieval", addr["betty"])]

    trace = labctl("trace", message_id.group(1), "--pcap", str(merged), "-o", str(tmp_path / "t.svg"))
    assert "6 of 6 steps seen on the wire" in trace.stdout
