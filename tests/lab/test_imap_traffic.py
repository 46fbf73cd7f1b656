"""IMAP on the wire of a real lab: the decoded dialogue, its clear-text password, trace's step 6.

betty fetches with curl's IMAP client (a real client, not ours); `labctl traffic` shows the IMAP
dialogue with the password (curl's AUTHENTICATE PLAIN) unless --hide-secrets, and `labctl trace` finds step 6 in the
IMAP FETCH of the message as it does in a POP3 RETR.
"""

from __future__ import annotations

import json
import re

from tests.lab.conftest import RunningLab, labctl
from tests.lab.waiting import eventually

SUBJECT = "IMAP on the wire"


def test_an_imap_fetch_is_decoded_and_is_step_6(running_lab: RunningLab) -> None:
    name = running_lab.name
    sent = labctl("send", "--lab", name, "--from", "andy", "--to", "betty@stevenchoy.example",
                  "--subject", SUBJECT, "--body", "Read me over IMAP.")
    found = re.search(r"Message-ID: (<[^>]+>)", sent.stdout)
    assert found, sent.stdout
    message_id = found.group(1)
    betty = running_lab.host("betty")

    def fetched() -> bool:  # the relay is asynchronous: look until the message is in the INBOX
        out = betty.run("curl -sS --user betty:betty-secret 'imap://mail.stevenchoy.example/INBOX;UID=1'")
        assert out.rc == 0 and SUBJECT in out.stdout, out.stdout + out.stderr
        return True

    eventually(fetched, 60.0, "betty fetching the message over IMAP")

    def decoded() -> list[dict[str, object]]:
        convs = json.loads(labctl("traffic", "--lab", name, "--proto", "imap", "--json").stdout)
        with_message = [c for c in convs if any(m["message_id"] == message_id for m in c["messages"])]
        assert with_message, convs
        return with_message

    conv = eventually(decoded, 30.0, "the IMAP session in the capture")[0]
    assert conv["server"]["port"] == 143 and conv["decodable"]
    logins = [e for e in conv["events"] if e["kind"] == "auth"]
    assert logins and "betty-secret" in logins[0]["text"] and logins[0]["info"]["password"] == "betty-secret"
    assert [m["command"] for m in conv["messages"]][0].startswith(("FETCH", "UID FETCH"))

    hidden = labctl("traffic", "--lab", name, "--proto", "imap", "--hide-secrets").stdout
    # curl logs in with AUTHENTICATE PLAIN and its response on the line (SASL-IR, RFC 4959)
    assert "AUTHENTICATE PLAIN" in hidden and "********" in hidden and "betty-secret" not in hidden

    trace = labctl("trace", "--lab", name, message_id).stdout
    assert "6 of 6 steps seen on the wire" in trace, trace
    step6 = next(line for line in trace.splitlines() if line.startswith("6."))
    assert "FETCH" in step6, trace
    assert "IMAP from port 143" in trace, trace
