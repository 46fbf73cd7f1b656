"""IMAP in the rest of the lab, on the real engine: `labctl fetch --imap` and `labctl mailbox --imap`
on betty's host against the MX, the Activity 3 and POP3-versus-IMAP scenarios, and the Activity 3
exercise played by a student typing into `nc -C` (and not playing it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labctl.backend.docker_engine import DockerEngine
from tests.lab.conftest import RunningLab, labctl
from tests.lab.test_exercises import EXERCISES, Exercise, shortened, typed
from tests.lab.test_scenarios import leftovers, run
from tests.lab.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
BETTY = "betty@stevenchoy.example"


def on_server(lab: str) -> list[dict[str, Any]]:
    """betty's mailbox as the MX keeps it (services store: no IMAP, nothing in the capture)."""
    found: list[dict[str, Any]] = json.loads(labctl("mailbox", "--lab", lab, "betty", "--server", "--json").stdout)
    return found


def imap_by_hand(*commands: str) -> str:
    return typed("a1 LOGIN betty betty-secret", "a2 SELECT INBOX", *commands, "a9 LOGOUT") \
        + " | nc -C -q 2 mail.stevenchoy.example 143"


def test_fetch_imap_keeps_the_mail_on_the_server_seen(running_lab: RunningLab) -> None:
    lab = running_lab.name
    labctl("send", "--lab", lab, "--from", "andy", "--to", BETTY, "--subject", "Kept by IMAP", "--body", "stay")
    eventually(lambda: [m for m in on_server(lab) if m["headers"].get("Subject") == "Kept by IMAP"], 60,
               "the message in betty's mailbox on the MX")
    before = len(on_server(lab))

    first = labctl("fetch", "--lab", lab, "betty", "--imap").stdout
    assert f"fetched {before} new message" in first and "by IMAP from mail.stevenchoy.example:143" in first, first
    again = labctl("fetch", "--lab", lab, "betty", "--imap").stdout
    assert "fetched 0 new messages" in again and f"{before} on the server, kept there" in again, again
    kept = on_server(lab)
    assert len(kept) == before and all(m["flags"] == ["\\Seen"] for m in kept), kept

    listing = labctl("mailbox", "--lab", lab, "betty", "--imap").stdout
    assert listing.startswith("folders: INBOX") and "INBOX on the server:" in listing, listing
    row = next(line for line in listing.splitlines() if "Kept by IMAP" in line)
    assert "\\Seen" in row
    doc = json.loads(labctl("mailbox", "--lab", lab, "betty", "--imap", "--json").stdout)
    assert [m["flags"] for m in doc["messages"]] == [["\\Seen"]] * before

    read = labctl("mailbox", "--lab", lab, "betty", str(before), "--imap", "--peek")
    assert "stay" in read.stdout and "BODY.PEEK[]" in read.stderr, read

    # IMAP left it there: a POP3 fetch afterwards still finds every message.
    pop3 = labctl("fetch", "--lab", lab, "betty").stdout
    assert f"fetched {before} new message" in pop3 and f"({before} on the server, kept there)" in pop3, pop3
    local = json.loads(labctl("mailbox", "--lab", lab, "betty", "--json").stdout)
    assert len([m for m in local if m["subject"] == "Kept by IMAP"]) == 2  # one copy per protocol's fetch

    gone = labctl("fetch", "--lab", lab, "betty", "--imap", "--delete").stdout
    assert f"{before} deleted there, 0 left" in gone, gone
    assert on_server(lab) == []


def test_fetch_imap_errors_name_the_way_out(running_lab: RunningLab) -> None:
    nofolder = labctl("fetch", "--lab", running_lab.name, "betty", "--imap", "--folder", "Nowhere", check=False)
    assert nofolder.returncode == 1
    assert "cannot open the folder 'Nowhere'" in nofolder.stderr
    assert "`labctl mailbox betty --imap`" in nofolder.stderr, nofolder.stderr  # the advice, as labctl spells it


def test_the_imap_scenarios_pass(client: DockerEngine, image: str, tmp_path: Path) -> None:
    paths = [ROOT / "scenarios" / "activity-3-imap.yml", ROOT / "scenarios" / "pop3-vs-imap.yml"]
    proc, results = run(*map(str, paths), "--report", str(tmp_path))
    assert [r["status"] for r in results] == ["passed", "passed"], \
        f"{[r['message'] for r in results]}\n{proc.stderr[-3000:]}"
    activity, lesson = results
    details = [s["detail"] for s in activity["steps"]]
    assert details[-1].startswith("betty's IMAP session ended: fetched 1, 0 expunged; LOGIN crossed the wire in clear")
    assert any(s["detail"].endswith("betty's POP3 session ended: RETR 1, DELE 1") for s in lesson["steps"])
    assert all(leftovers(client, r["lab"]) == [] for r in results)


def test_activity_3_typed_by_hand_passes(client: DockerEngine, image: str) -> None:
    ex = Exercise(EXERCISES / "activity-3-by-hand.yml")
    try:
        ex.task_given()
        typed_out = ex.student("betty", imap_by_hand("a3 FETCH 1 BODY[]"))
        assert "a3 OK" in typed_out and "Subject: First message" in typed_out, typed_out
        code, result, stderr = ex.result()
        assert code == 0, f"{result['message']}\n{stderr[-3000:]}"
        assert result["steps"][4]["detail"].endswith("betty's IMAP session ended: fetched 1, 0 expunged")
        assert [s["status"] for s in result["steps"][4:]] == ["passed"] * 3
    finally:
        ex.down()


def test_activity_3_without_the_fetch_fails_saying_what_was_seen(client: DockerEngine, image: str,
                                                                 tmp_path: Path) -> None:
    ex = Exercise(shortened(EXERCISES / "activity-3-by-hand.yml", tmp_path, 15))
    try:
        ex.task_given()
        ex.student("betty", imap_by_hand())  # logged in and out, read nothing
        code, result, stderr = ex.result()
        assert code == 1 and result["status"] == "failed", stderr
        step = result["steps"][4]
        assert step["status"] == "failed", step
        assert step["expected"] == ("a finished IMAP session of betty that fetched 1 message(s) and expunged 0 "
                                    "message(s) within the task's time limit (15 s)"), step
        assert step["seen"] == "betty's IMAP sessions: ended: fetched none, 0 expunged", step
    finally:
        ex.down()
