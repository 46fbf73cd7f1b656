"""`labctl fault reply|clear|list` by hand on a running lab: the MX greylists, the MTA's queue keeps
the message and its retry delivers it; no server restarts; hosts without our SMTP server are refused."""

from __future__ import annotations

from typing import Any

from labctl import mail
from tests.lab.conftest import RunningLab, labctl, parse_json
from tests.lab.test_mail_path import DELIVERY_TIMEOUT, dialogue, unique, wait_for_mail
from tests.lab.waiting import eventually

BETTY = "betty@stevenchoy.example"


def started(running_lab: RunningLab, host: str) -> str:
    """When the host's first process (its server) started: the same after a fault, or it restarted."""
    return running_lab.lab.exec(host, ["ps", "-o", "lstart=", "-p", "1"]).output.strip()


def test_greylisting_by_hand_then_the_retry_delivers(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    before = started(running_lab, "mail")
    said = labctl("fault", "reply", "--lab", lab.name, "mail", "rcpt", "450", "--status", "4.7.1",
                  "--text", "Greylisted, try again later", "--times", "1").stdout
    assert said.startswith("mail answers rcpt: 450 4.7.1 Greylisted, try again later for the first 1 try (rule ")
    listed = labctl("fault", "list", "--lab", lab.name).stdout
    assert "mail" in listed and "rcpt: 450 4.7.1 Greylisted" in listed
    subject = unique("greylisted")
    labctl("send", "--lab", lab.name, "--from", "andy", "--to", BETTY, "--subject", subject, "--body", "again")

    def greylisted() -> dict[str, Any]:
        entries = parse_json(mail.queue(lab, as_json=True))["entries"]
        found = [r for e in entries for r in e["recipients"] if r["address"] == BETTY and r["attempts"] >= 1]
        assert found and "450 4.7.1 Greylisted" in found[0]["last_error"], entries
        return dict(found[0])

    assert eventually(greylisted, DELIVERY_TIMEOUT, "the MX's 450 in the MTA's queue")["status"] == "pending"
    labctl("queue", "--lab", lab.name, "--flush")
    wait_for_mail(lab, "betty", subject)
    assert started(running_lab, "mail") == before  # loaded on SIGHUP: no restart
    assert labctl("fault", "clear", "--lab", lab.name, "mail").stdout.startswith(
        "mail answers as itself again (1 reply fault(s) cleared)")
    assert labctl("fault", "list", "--lab", lab.name).stdout.strip() == "no reply faults in force"


def test_421_at_connect_for_a_while_on_the_mta(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    labctl("fault", "reply", "--lab", lab.name, "smtp", "connect", "421", "--status", "4.3.2",
           "--text", "Shutting down", "--for", "30")
    try:
        ((_, greeting),) = dialogue(lab, "andy", "smtp.ouhk.example", 25, [])
        assert greeting == "421 4.3.2 Shutting down\r\n"
    finally:
        labctl("fault", "clear", "--lab", lab.name, "smtp")
    ((_, greeting),) = dialogue(lab, "andy", "smtp.ouhk.example", 25, [])
    assert greeting.startswith("220 smtp.ouhk.example ESMTP")


def test_a_host_without_our_smtp_server_is_refused(running_lab: RunningLab) -> None:
    refused = labctl("fault", "reply", "--lab", running_lab.name, "ns", "rcpt", "450", check=False)
    assert refused.returncode == 1
    assert "ns is a dns host with no SMTP server: reply faults need our SMTP server" in refused.stderr
    assert "hosts that run it: smtp, mail" in refused.stderr
    bad = labctl("fault", "reply", "--lab", running_lab.name, "mail", "connect", "450", check=False)
    assert bad.returncode == 1 and "at connect a server answers 421 (and closes) or 554" in bad.stderr
