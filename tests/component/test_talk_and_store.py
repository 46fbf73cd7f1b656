"""The scenario tools on real servers on 127.0.0.1: `talk` (raw dialogues) and `store` (mailbox view)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services import storecli, talk
from services.mailstore import deliver, mailbox_dir
from services.smtp.mx import start_mx
from tests.labconfig import lab_config, password
from tests.support import BackgroundLoop

BETTY = "betty@stevenchoy.example"
CONFIG = lab_config("mail", addresses={"mail": "127.0.0.1"}, subnet="127.0.0.0/8", nameserver="127.0.0.1")
MESSAGE = "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\nFrom: andy@ouhk.example\n\n.dot first\nline two\n"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    background = BackgroundLoop()
    listeners = background.run(start_mx(CONFIG, mail_root=tmp_path, host="127.0.0.1", smtp_port=0, pop3_port=0,
                                        imap_port=0))
    yield listeners.port("smtp"), listeners.port("pop3"), listeners.port("imap")
    background.close([listeners.close])


def test_smtp_by_hand_one_reply_per_line_and_a_message_block(servers: tuple[int, int, int], tmp_path: Path) -> None:
    smtp, _, _ = servers
    log = talk.talk("127.0.0.1", smtp, "smtp", [
        "EHLO andy", "MAIL FROM: andy@ouhk.example", "RCPT TO: betty@stevenchoy.example", "DATA",
        "Subject: by hand\n\nfirst line\n.", "QUIT",
    ], 5.0)
    replies = [str(e["reply"]) for e in log]
    assert replies[0].startswith("220 ")
    assert replies[1].startswith("250-") and replies[1].rstrip().splitlines()[-1].startswith("250 ")
    assert [r[:3] for r in replies[2:]] == ["250", "250", "354", "250", "221"]
    stored = storecli.messages(tmp_path, "betty@stevenchoy.example")
    assert [m["headers"]["Subject"] for m in stored] == ["by hand"]
    assert "Received" in [name for name, _ in stored[0]["all_headers"]]


def test_pop3_multiline_answers_end_at_the_dot_and_a_drop_keeps_the_mail(servers: tuple[int, int, int],
                                                                         tmp_path: Path) -> None:
    _, pop3, _ = servers
    deliver(mailbox_dir(tmp_path, "betty@stevenchoy.example"), MESSAGE.encode())
    log = talk.talk("127.0.0.1", pop3, "pop3",
                    ["USER betty", f"PASS {password(BETTY)}", "LIST", "RETR 1", "LIST 1", "DELE 1"], 5.0)  # no QUIT
    replies = {e["sent"]: str(e["reply"]) for e in log}
    assert replies["LIST"].startswith("+OK") and replies["LIST"].endswith("\r\n.\r\n")
    assert replies["LIST 1"] == "+OK 1 87\r\n"  # with an argument: one line
    assert replies["RETR 1"].endswith("..dot first\r\nline two\r\n.\r\n")  # dot-stuffed on the wire
    assert replies["DELE 1"].startswith("+OK")
    stored = storecli.messages(tmp_path, "betty@stevenchoy.example")
    assert len(stored) == 1 and stored[0]["headers"]["Subject"] == "Grüße"  # no QUIT: nothing deleted


def test_imap_replies_end_at_the_tagged_line_and_literals_are_read_whole(servers: tuple[int, int, int],
                                                                         tmp_path: Path) -> None:
    """Activity 3's lines: a message line that looks like a tagged reply ("a3 OK") inside the
    literal does not end the FETCH's reply; expect is about the tagged status."""
    _, _, imap = servers
    deliver(mailbox_dir(tmp_path, BETTY), b"Subject: tricky\n\na3 OK not the end\n")
    log = talk.talk("127.0.0.1", imap, "imap", [
        talk.Line(None, "OK"), talk.Line(f"a1 LOGIN betty {password(BETTY)}", "OK"),
        talk.Line("a2 SELECT INBOX", "OK", r"^\* 1 EXISTS$"), talk.Line("a3 FETCH 1 BODY[]", "OK", "a3 OK not the end"),
        talk.Line("a4 LOGOUT", "OK")], 5.0)
    replies = [str(e["reply"]) for e in log]
    assert [talk.status_line(r, "imap").split(" ")[0] for r in replies] == ["OK"] * 5
    assert replies[3].startswith("* 1 FETCH (BODY[] {") and replies[3].splitlines()[-1].startswith("a3 OK")
    assert "* BYE" in replies[4] and log[-1]["closed"] is False
    assert talk.status_line(replies[1], "imap").startswith("OK")
    assert talk.reply_fits(replies[3], "OK", "a3 OK not the end", "imap")
    assert not talk.reply_fits(replies[3], "NO", None, "imap")
    # The greeting has no tag: its status line is what follows "*".
    assert talk.status_line(replies[0], "imap").startswith("OK [CAPABILITY")


def test_an_imap_dialogue_stops_at_a_no(servers: tuple[int, int, int]) -> None:
    _, _, imap = servers
    log = talk.talk("127.0.0.1", imap, "imap", [talk.Line("a1 LOGIN betty wrong", "OK"), talk.Line("a2 LOGOUT")], 5.0)
    assert [e["sent"] for e in log] == [None, "a1 LOGIN betty wrong"]
    assert talk.status_line(str(log[1]["reply"]), "imap").startswith("NO [AUTHENTICATIONFAILED]")


def test_a_refused_connection_is_reported_not_raised() -> None:
    log = talk.talk("127.0.0.1", 1, "smtp", ["QUIT"], 2.0)
    assert len(log) == 1 and "cannot connect" in str(log[0]["error"])


def test_store_of_an_empty_or_missing_mailbox(tmp_path: Path) -> None:
    assert storecli.messages(tmp_path, "nobody@stevenchoy.example") == []


def test_store_shows_a_bounce_s_delivery_status_fields(tmp_path: Path) -> None:
    from services.smtp.bounce import build_bounce
    from services.smtp.spool import RecipientState, Status

    failed = RecipientState("nobody@stevenchoy.example", status=Status.BOUNCED, attempts=1,
                            dsn_status="5.1.1", remote_mta="mail.stevenchoy.example",
                            diagnostic="550 5.1.1 <nobody@stevenchoy.example>... User unknown")
    bounce = build_bounce(original=MESSAGE.encode(), sender="andy@ouhk.example", failed=[failed],
                          reporting_mta="smtp.ouhk.example", queue_id="Q1", arrival=1.0e9, now=1.0e9 + 5)
    deliver(mailbox_dir(tmp_path, "andy@ouhk.example"), bounce)
    (stored,) = storecli.messages(tmp_path, "andy@ouhk.example")
    (fields,) = stored["delivery_status"]
    assert fields["Final-Recipient"] == "rfc822; nobody@stevenchoy.example" and fields["Status"] == "5.1.1"


def test_a_dialogue_stops_at_the_first_reply_that_is_not_the_expected_one(servers: tuple[int, int, int],
                                                                         tmp_path: Path) -> None:
    # The author expected betty to be refused; she is accepted. The old talk typed on (DATA, the
    # message, ".") and delivered a message from a step reported FAILED.
    smtp, _, _ = servers
    log = talk.talk("127.0.0.1", smtp, "smtp", [
        talk.Line(None, "220"), talk.Line("MAIL FROM: andy@ouhk.example", "250"),
        talk.Line("RCPT TO: betty@stevenchoy.example", "550"), talk.Line("DATA", "354"),
        talk.Line("Subject: never\n\nnot to be sent\n.", "250"), talk.Line("QUIT", "221"),
    ], 5.0)
    assert [e["sent"] for e in log] == [None, "MAIL FROM: andy@ouhk.example", "RCPT TO: betty@stevenchoy.example",
                                        "QUIT"]
    assert str(log[-1]["reply"]).startswith("221")  # QUIT: the open transaction is abandoned
    assert storecli.messages(tmp_path, BETTY) == []


def test_a_pop3_dialogue_that_fails_closes_without_quit_so_no_dele_takes_effect(servers: tuple[int, int, int],
                                                                             tmp_path: Path) -> None:
    _, pop3, _ = servers
    deliver(mailbox_dir(tmp_path, BETTY), MESSAGE.encode())
    log = talk.talk("127.0.0.1", pop3, "pop3", [
        talk.Line(None, "+OK"), talk.Line("USER betty", "+OK"), talk.Line(f"PASS {password(BETTY)}", "+OK"),
        talk.Line("DELE 1", "+OK"), talk.Line("STAT", "+OK 5 "), talk.Line("QUIT", "+OK"),
    ], 5.0)
    assert [e["sent"] for e in log][-1] == "STAT"  # stopped there: no QUIT to commit the DELE
    assert len(storecli.messages(tmp_path, BETTY)) == 1


def test_a_greeting_that_is_not_the_expected_one_types_nothing(servers: tuple[int, int, int]) -> None:
    smtp, _, _ = servers
    log = talk.talk("127.0.0.1", smtp, "smtp", [talk.Line(None, "554"), talk.Line("MAIL FROM: <>", "250")], 5.0)
    assert [e["sent"] for e in log] == [None, "QUIT"]


def test_the_patterns_of_talk_and_of_the_judge_are_one_rule() -> None:
    assert talk.reply_fits("250-first\r\n250 2.1.5 Recipient ok\r\n", "250", "^250 2\\.1\\.5")
    assert not talk.reply_fits("250 ok\r\n", "250 2.1.5", None)
    assert not talk.reply_fits("+OK\r\n", None, "octets")
