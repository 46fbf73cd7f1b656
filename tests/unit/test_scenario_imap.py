"""IMAP in scenarios: the `imap:` dialogue step, `fetch: {imap: true}`, the `imap_session` and
`cleartext: {proto: imap}` facts read from decoded traffic, and a mailbox's `seen:` from the store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labctl.errors import SourceError
from labctl.scenario import judge, parse
from labctl.scenario import model as m
from labctl.scenario.facts import check_fact
from labctl.scenario.observe import message_from_json, talk_from_json
from labctl.scenario.steps import StepFailed
from services import storecli
from services.mailstore import deliver, mailbox_dir
from tests.unit.decoding import only_conversation
from tests.unit.packets import BETTY, MAIL, NAMES, Tcp, pcap

HEAD = "name: t\ndescription: d\ngoal: g\n"
ADDRESSES = {"mail": MAIL, "betty": BETTY}
MESSAGE = b"From: andy@ouhk.example\r\nSubject: Lunch\r\nMessage-ID: <lunch.1@ouhk.example>\r\n\r\nHi Betty,\r\n"


def load(text: str) -> m.Scenario:
    return parse.load(Path("s.yml"), text)


# -- the file ---------------------------------------------------------------------------------------


def test_imap_steps_facts_and_seen_parse() -> None:
    sc = load(HEAD + """steps:
  - fetch: {user: betty, imap: true}
  - imap:
      from: betty
      server: mail
      dialogue:
        - expect: OK
        - {send: a1 LOGIN betty betty-secret, expect: OK}
        - {send: 'a3 FETCH 1 BODY[]', expect: OK, match: 'Subject: Lunch'}
  - expect:
      mailbox: {user: betty, seen: true}
      traffic:
        - imap_session: {user: betty@stevenchoy.example, fetched: 1, expunged: 0}
        - cleartext: {proto: imap, command: LOGIN}
""")
    fetch, talk, expect = (s.action for s in sc.steps)
    assert fetch == m.Fetch("betty", False, True) and sc.steps[0].title == "betty fetches by IMAP (keep on the server)"
    assert isinstance(talk, m.Dialogue) and (talk.proto, talk.server, talk.port) == ("imap", "mail.stevenchoy.example",
                                                                                    143)
    assert sc.steps[1].title == "IMAP by hand from betty to mail.stevenchoy.example:143"
    assert isinstance(expect, m.Expect)
    mailbox, traffic = expect.checks
    assert isinstance(mailbox, m.MailboxExpect) and mailbox.seen is True
    assert isinstance(traffic, m.TrafficExpect)
    assert traffic.facts == (m.ImapSession("betty", 1, 0), m.Cleartext("imap", "LOGIN"))


@pytest.mark.parametrize(("text", "line", "message"), [
    (HEAD + "steps:\n  - imap:\n      from: betty\n      server: mail\n      dialogue:\n        - {send: a1 NOOP, "
            "expect: '+OK'}\n", 9, "expect '+OK' is not the start of a IMAP reply, like OK, NO or BAD"),
    (HEAD + "steps:\n  - expect:\n      mailbox: {user: betty, where: client, seen: true}\n", 6,
     "seen: is a flag the server keeps"),
    (HEAD + "steps:\n  - expect:\n      traffic: [{imap_session: {user: betty, retr: 1}}]\n", 6,
     "unknown key 'retr' in imap_session; valid keys: user, fetched, expunged"),
    (HEAD + "steps:\n  - fetch: {user: betty, imap: yes please}\n", 5, "imap must be true or false"),
])
def test_imap_mistakes_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SourceError) as failed:
        load(text)
    assert f"s.yml:{line}:" in str(failed.value) and message in str(failed.value), str(failed.value)


# -- facts from the capture ---------------------------------------------------------------------------


def _session(port: int, *, expunge: bool = False, logout: bool = True) -> Tcp:
    """Activity 3 as typed (and, with ``expunge``, a4 STORE +FLAGS \\Deleted and a5 EXPUNGE too)."""
    t = Tcp(BETTY, port, MAIL, 143).handshake()
    t.s(b"* OK [CAPABILITY IMAP4rev1] mail.stevenchoy.example IMAP4rev1 server ready\r\n")
    t.c(b"a1 LOGIN betty betty-secret\r\n").s(b"a1 OK Logged in\r\n")
    t.c(b"a2 SELECT INBOX\r\n").s(b"* 2 EXISTS\r\na2 OK [READ-WRITE] SELECT completed\r\n")
    t.c(b"a3 FETCH 1 BODY[]\r\n")
    t.s(b"* 1 FETCH (FLAGS (\\Seen) BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE + b")\r\na3 OK FETCH completed\r\n")
    if expunge:
        t.c(b"a4 STORE 1 +FLAGS (\\Deleted)\r\n").s(b"* 1 FETCH (FLAGS (\\Seen \\Deleted))\r\na4 OK STORE\r\n")
        t.c(b"a5 EXPUNGE\r\n").s(b"* 1 EXPUNGE\r\na5 OK EXPUNGE completed\r\n")
    if logout:
        t.c(b"a9 LOGOUT\r\n").s(b"* BYE logging out\r\na9 OK LOGOUT completed\r\n").close()
    return t


def test_an_imap_session_is_counted_from_its_fetch_and_expunge_responses() -> None:
    kept = [only_conversation(pcap(_session(40200).packets), NAMES)]
    assert check_fact(m.ImapSession("betty", 1, 0), kept, ADDRESSES) == \
        "betty's IMAP session ended: fetched 1, 0 expunged"
    assert check_fact(m.ImapSession("betty"), kept, ADDRESSES).startswith("betty's IMAP session ended")
    assert check_fact(m.Cleartext("imap", "LOGIN"), kept, ADDRESSES) == \
        "LOGIN crossed the wire in clear: 'a1 LOGIN betty betty-secret   (a password in clear text)'"
    with pytest.raises(StepFailed) as failed:
        check_fact(m.ImapSession("betty", 1, 1), kept, ADDRESSES)
    assert failed.value.expected == "a finished IMAP session of betty that fetched 1 message(s) and expunged 1 " \
                                    "message(s)"
    assert failed.value.seen == "betty's IMAP sessions: ended: fetched 1, 0 expunged"

    removed = [only_conversation(pcap(_session(40201, expunge=True).packets), NAMES)]
    assert check_fact(m.ImapSession("betty", 1, 1), removed, ADDRESSES).endswith("fetched 1, 1 expunged")


def test_an_open_session_or_another_user_is_not_it() -> None:
    still_open = [only_conversation(pcap(_session(40202, logout=False).packets), NAMES)]
    with pytest.raises(StepFailed) as failed:
        check_fact(m.ImapSession("betty", 1), still_open, ADDRESSES)
    assert failed.value.seen == "betty's IMAP sessions: still open: fetched 1, 0 expunged"
    with pytest.raises(StepFailed) as nobody:
        check_fact(m.ImapSession("andy"), still_open, ADDRESSES)
    assert nobody.value.seen == "no IMAP session of andy"


# -- judging an IMAP dialogue and the \Seen of a stored message --------------------------------------


def test_an_imap_reply_is_judged_by_its_tagged_status() -> None:
    step = m.Dialogue("imap", "betty", "mail.stevenchoy.example", 143, tuple(
        m.Exchange(10 + i, send, expect, re.compile(match, re.MULTILINE) if match else None)
        for i, (send, expect, match) in enumerate([(None, "OK", None), ("a1 LOGIN betty x", "OK", None)])))
    log = talk_from_json([{"sent": None, "reply": "* OK [CAPABILITY IMAP4rev1] ready\r\n"},
                          {"sent": "a1 LOGIN betty x",
                           "reply": "a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"}])
    assert judge.dialogue(step, log) == judge.Verdict(
        False, "'OK' after 'a1 LOGIN betty x' (line 11)", "'NO [AUTHENTICATIONFAILED] Authentication failed'")
    fine = talk_from_json([log[0].__dict__, {"sent": "a1 LOGIN betty x",
                                             "reply": "* CAPABILITY IMAP4rev1\r\na1 OK Logged in\r\n"}])
    assert judge.dialogue(step, fine).ok


def test_seen_is_read_from_the_stored_file_names(tmp_path: Path) -> None:
    box = mailbox_dir(tmp_path, "betty@stevenchoy.example")
    deliver(box, b"Subject: still new\n\nx\n")
    deliver(box, b"Subject: was read\n\ny\n")
    [second] = [p for p in (box / "new").iterdir() if b"Subject: was read" in p.read_bytes()]
    (box / "cur").mkdir(exist_ok=True)
    second.rename(box / "cur" / f"{second.name}:2,S")  # as the IMAP server marks it after a BODY[]
    found = [message_from_json(doc) for doc in storecli.messages(tmp_path, "betty@stevenchoy.example")]
    assert [(x.subject, x.flags, x.seen) for x in found] == [("still new", (), False), ("was read", ("\\Seen",), True)]

    want = m.MailboxExpect("betty@stevenchoy.example", "server", "was read", seen=True)
    assert judge.mailbox(want, found).ok
    unread = m.MailboxExpect("betty@stevenchoy.example", "server", "still new", seen=True)
    verdict = judge.mailbox(unread, found)
    assert not verdict.ok and verdict.expected == "message 'still new' flagged \\Seen on the server"
    assert verdict.seen == "its flags: none"


def test_wait_read_parses_and_waits_for_the_seen_flag(tmp_path: Path) -> None:
    sc = load(HEAD + "steps:\n  - wait:\n      read: {to: betty, subject: was read, count: 1}\n      timeout: 5\n")
    [step] = sc.steps
    assert isinstance(step.action, m.Wait) and step.action.timeout == 5
    cond = step.action.until
    assert cond == m.Read("betty@stevenchoy.example", "was read", m.Count(1, 1))
    assert step.title == "wait until betty@stevenchoy.example has read a message 'was read' (exactly 1) (at most 5 s)"

    box = mailbox_dir(tmp_path, "betty@stevenchoy.example")
    deliver(box, b"Subject: was read\n\ny\n")
    assert isinstance(cond, m.Read)
    unread = judge.read(cond, [message_from_json(d) for d in storecli.messages(tmp_path, cond.to)])
    assert not unread.ok
    assert unread.seen == "0 of the 1 matching message(s) in betty@stevenchoy.example's mailbox flagged \\Seen"
    [new] = (box / "new").iterdir()
    (box / "cur").mkdir(exist_ok=True)
    new.rename(box / "cur" / f"{new.name}:2,S")
    done = judge.read(cond, [message_from_json(d) for d in storecli.messages(tmp_path, cond.to)])
    assert done.ok and done.expected == ("exactly 1 message(s) with 'was read' of betty@stevenchoy.example read "
                                         "(flagged \\Seen on the server)")
