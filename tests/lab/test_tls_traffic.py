"""TLS on the wire of a real lab (`labctl up --tls`): the dialogue inside it, decrypted with the hosts' key logs.

andy submits with `labctl send --starttls` (587, STARTTLS, AUTH inside TLS); `labctl traffic` shows
the clear part, the TLS note ("STARTTLS, then TLS 1.3, ..., certificate CN=smtp.ouhk.example") and
the decrypted dialogue, each line marked decrypted; `--no-decrypt` shows records only; `capture
export --with-keys` writes a pcapng that tshark decrypts with no settings, to the same commands;
and betty's fetch (STARTTLS by default in a TLS lab) closes the six steps of `labctl trace`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.backend.docker_engine import DockerEngine
from tests.lab.conftest import RunningLab, labctl, unique_lab
from tests.lab.test_traffic_decode import _following, _printed
from tests.lab.waiting import eventually

CAPTURE_LAG = 30.0  # seconds: capture files lag the wire a little, and the relay is asynchronous


@pytest.fixture(scope="module")
def tls_lab(client: DockerEngine, image: str) -> Iterator[RunningLab]:
    name = unique_lab("tlsd")
    proc = labctl("up", "--lab", name, "--tls")
    try:
        yield RunningLab(name, client, proc.stdout + proc.stderr)
    finally:
        labctl("down", "--lab", name, check=False)


def _send(lab: str, subject: str) -> str:
    sent = labctl("send", "--lab", lab, "--from", "andy", "--to", "betty@stevenchoy.example", "--starttls",
                  "--subject", subject, "--body", "Inside TLS.")
    found = re.search(r"Message-ID: (<[^>]+>)", sent.stdout)
    assert found, sent.stdout
    return found.group(1)


def _submission(lab: str, message_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any]:
        convs = json.loads(labctl("traffic", "--lab", lab, "--proto", "smtp", "--json").stdout)
        mine = [c for c in convs if c["server"]["port"] == 587
                and any(m["message_id"] == message_id for m in c["messages"])]
        assert mine, [(c["server"], c.get("tls")) for c in convs]
        return dict(mine[0])
    return eventually(found, CAPTURE_LAG, "the submission under TLS in the capture", interval=0.5)


def _alert(event: dict[str, Any]) -> bool:
    """A TLS alert record: shown opened or not (the end of a session, or why a handshake failed)."""
    return bool(event["kind"] == "record" and event["text"].startswith("<TLS record: alert"))


def test_a_starttls_submission_is_decrypted(tls_lab: RunningLab, tmp_path: Path) -> None:
    lab = tls_lab.name
    message_id = _send(lab, f"Under TLS {time.time_ns()}")
    conv = _submission(lab, message_id)
    tls = conv["tls"]
    assert tls["started"] == "starttls" and tls["decrypted"] and tls["version"] in ("TLS 1.3", "TLS 1.2"), tls
    assert tls["certificate"] == "CN=smtp.ouhk.example" and tls["problem"] is None, tls
    events = conv["events"]
    starttls = next(i for i, e in enumerate(events) if e["text"].upper() == "STARTTLS")
    assert not any(e.get("decrypted") for e in events[:starttls + 1])
    inside = [e for e in events if e.get("decrypted")]
    assert inside[0]["text"].upper().startswith("EHLO")  # the client speaks first after STARTTLS (RFC 3207 §4.2)
    auth = [e for e in inside if e["kind"] == "auth"]
    assert auth and auth[0]["clear_text_secret"] and "andy-secret" in json.dumps(auth)
    # Every record opened; only the end of the session (a close_notify alert) is shown as a record.
    assert not any(e["kind"] == "record" and not _alert(e) for e in events), events

    text = labctl("traffic", "--lab", lab, "--proto", "smtp", "--hide-secrets").stdout
    assert f"STARTTLS, then {tls['version']}, {tls['cipher']}" in text and "CN=smtp.ouhk.example" in text
    assert "andy-secret" not in text and "********" in text
    outsider = labctl("traffic", "--lab", lab, "--proto", "smtp", "--no-decrypt").stdout
    assert "<TLS record: handshake (ClientHello)" in outsider and "<TLS record: application data" in outsider
    assert "AUTH" not in outsider and "andy-secret" not in outsider

    exported = tmp_path / "lab.pcapng"
    out = labctl("capture", "export", "--lab", lab, "--with-keys", "-o", str(exported))
    assert "TLS secrets in a Decryption Secrets Block" in out.stderr, out.stderr
    tshark = shutil.which("tshark")
    assert tshark, "tshark is installed by tools/ensure-host"
    # Each packet was captured on andy and on smtp: andy's copies only, one line per command.
    port = conv["client"]["port"]
    ran = subprocess.run([tshark, "-n", "-r", str(exported), "-T", "fields", "-e", "smtp.req.command", "-Y",
                          f'tcp.srcport == {port} && smtp.req && frame.interface_name == "andy"'],
                         capture_output=True, text=True, check=True)
    theirs = [c.upper() for c in ran.stdout.split()]
    # tshark names a command by its first four characters ("STAR" for STARTTLS).
    ours = [e["text"][:4].upper() for e in events if e["direction"] == "C" and e["kind"] in ("command", "auth")]
    assert "AUTH" in theirs and theirs == ours, (theirs, ours)


def test_an_implicit_tls_submission_on_465_is_decrypted(tls_lab: RunningLab) -> None:
    lab = tls_lab.name
    sent = labctl("send", "--lab", lab, "--from", "andy", "--to", "betty@stevenchoy.example", "--tls",
                  "--subject", f"On 465 {time.time_ns()}", "--body", "Implicit TLS.")
    found = re.search(r"Message-ID: (<[^>]+>)", sent.stdout)
    assert found, sent.stdout

    def on_465() -> dict[str, Any]:
        convs = json.loads(labctl("traffic", "--lab", lab, "--proto", "smtp", "--json").stdout)
        mine = [c for c in convs if c["server"]["port"] == 465
                and any(m["message_id"] == found.group(1) for m in c["messages"])]
        assert mine, [(c["server"], c.get("tls")) for c in convs]
        return dict(mine[0])

    conv = eventually(on_465, CAPTURE_LAG, "the submission on 465 in the capture", interval=0.5)
    assert conv["tls"]["started"] == "implicit" and conv["tls"]["decrypted"], conv["tls"]
    dialogue = [e for e in conv["events"] if e["direction"] != "-" and e["kind"] != "close" and not _alert(e)]
    assert dialogue and all(e.get("decrypted") for e in dialogue), dialogue
    assert dialogue[0]["text"].startswith("220 ")  # the greeting, inside TLS


def test_follow_prints_the_decrypted_dialogue(tls_lab: RunningLab) -> None:
    lab = tls_lab.name
    with _following(lab, "--proto", "smtp", "--host", "andy") as followed:
        time.sleep(2)  # its first look: what was there before
        sent = labctl("send", "--lab", lab, "--from", "andy", "--to", "betty@stevenchoy.example", "--starttls",
                      "--subject", f"Followed under TLS {time.time_ns()}", "--body", "watch this")
        queue_id = re.search(r"250 2\.0\.0 (\w+) Message accepted", sent.stdout)
        assert queue_id, sent.stdout
        eventually(lambda: _printed(followed.lines, queue_id.group(1)), 4 * CAPTURE_LAG,
                   "the follow printing the dialogue inside TLS", interval=0.5)
    out = "".join(followed.lines)
    assert followed.returncode == 0, followed.err
    assert "STARTTLS, then TLS" in out and "(decrypted with the lab's key log)" in out, out[-3000:]
    assert "decrypted from TLS" in out and "<TLS record: application" not in out, out[-3000:]
    accepted = re.findall(r"S: 250 2\.0\.0 (\w+) Message accepted", out)
    assert accepted and len(accepted) == len(set(accepted))  # every event printed once


def test_trace_six_steps_through_tls(tls_lab: RunningLab) -> None:
    lab = tls_lab.name
    subject = f"Trace under TLS {time.time_ns()}"
    message_id = _send(lab, subject)

    def fetched() -> bool:  # the relay is asynchronous; fetch uses STARTTLS by default in a TLS lab
        out = labctl("fetch", "--lab", lab, "betty").stdout
        assert "fetched 0 " not in out and "no new" not in out, out
        return True

    eventually(fetched, 60.0, f"betty fetching {message_id}")

    def six() -> str:
        trace = labctl("trace", "--lab", lab, message_id, check=False).stdout
        assert "6 of 6 steps seen on the wire" in trace, trace
        return trace

    trace = eventually(six, CAPTURE_LAG, "the six steps through TLS", interval=1.0)
    assert "SMTP to port 587, under TLS" in trace, trace
    convs = json.loads(labctl("traffic", "--lab", lab, "--proto", "pop3", "--json").stdout)
    retrieved = [c for c in convs if any(m["message_id"] == message_id for m in c["messages"])]
    assert retrieved and retrieved[0]["tls"]["decrypted"], retrieved
    assert all(e.get("decrypted") for e in retrieved[0]["events"] if e["text"].startswith("RETR"))


SCENARIO = """\
name: AUTH inside TLS
description: andy submits on 587 after STARTTLS; the capture holds his AUTH only as ciphertext.
goal: See that TLS hides the password an outsider would read in the clear-text lab.
topology:
  tls: true
steps:
  - name: andy submits with AUTH after STARTTLS
    send: {from: andy, to: betty@stevenchoy.example, subject: Under TLS, body: hello, submission: true}
  - name: the AUTH crossed encrypted, and the lab's key log reads it
    expect:
      traffic:
        - encrypted: {proto: smtp, command: AUTH}
"""


def test_a_scenario_sees_auth_cross_encrypted(image: str, tmp_path: Path) -> None:
    """The scenario fact reads inside TLS with the hosts' key logs, as `labctl traffic` does, and the
    report's capture carries them (tshark reads the AUTH in it with no settings)."""
    path = tmp_path / "auth-under-tls.yml"
    path.write_text(SCENARIO)
    proc = labctl("run", "--json", str(path), "--report", str(tmp_path / "report"), check=False)
    (result,) = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["status"] == "passed", f"{result['message']}\n{proc.stderr[-3000:]}"
    assert "crossed the wire encrypted" in json.dumps(result["steps"]), result["steps"]
    saved = tmp_path / "report" / path.stem / "capture.pcapng"
    tshark = shutil.which("tshark")
    assert tshark, "tshark is installed by tools/ensure-host"
    ran = subprocess.run([tshark, "-n", "-r", str(saved), "-Y", "smtp.req.command == \"AUTH\"", "-T", "fields",
                          "-e", "smtp.req.command"], capture_output=True, text=True, check=True)
    assert "AUTH" in ran.stdout.split(), ran.stdout
