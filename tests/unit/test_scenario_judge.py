"""Judging scenario conditions and expectations against views of the lab: no Docker, no exec.

The views are read from what the lab's tools really print (``services store --json``, the queue
tool's ``--json``, ``services talk``), built here by the same functions the tools call.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace

import pytest

from labctl.scenario import judge
from labctl.scenario import model as m
from labctl.scenario.observe import (
    MessageView,
    QueuedMessage,
    message_from_json,
    queue_from_json,
    talk_from_json,
)
from services import storecli
from services.mua import view
from services.smtp.bounce import build_bounce
from services.smtp.queuecli import to_json
from services.smtp.spool import QueueEntry, RecipientState, Status

T0 = 1_700_000_000.0


def stored(raw: bytes) -> MessageView:
    """A message as ``services store --json`` shows it, read back as the runner reads it."""
    msg = view.parse(raw)
    return message_from_json({**view.message_json(msg), "delivery_status": storecli.delivery_status(msg)})


def message(subject: str, *, sender: str = "Andy <andy@ouhk.example>", body: str = "Hello Betty",
            received: tuple[str, ...] = ()) -> MessageView:
    trace = "".join(f"Received: {r}\r\n" for r in received)
    return stored(f"{trace}From: {sender}\r\nTo: betty@stevenchoy.example\r\nSubject: {subject}\r\n"
                  f"Return-Path: <andy@ouhk.example>\r\n\r\n{body}\r\n".encode())


WITH_ATTACHMENT = stored(
    b"From: andy@ouhk.example\r\nSubject: Photos\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b"--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=cat.png\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n--b--\r\n")

ORIGINAL = b"From: andy@ouhk.example\r\nTo: nobody@stevenchoy.example\r\nSubject: Lunch?\r\n\r\nhi\r\n"


def bounce_about(address: str, status: str = "5.1.1") -> MessageView:
    failed = RecipientState(address, Status.BOUNCED, attempts=1, last_error="no such user", dsn_status=status,
                            remote_mta="mail.stevenchoy.example", diagnostic=f"550 {status} No such user")
    return stored(build_bounce(original=ORIGINAL, sender="andy@ouhk.example", failed=[failed],
                               reporting_mta="smtp.ouhk.example", queue_id="Q1", arrival=T0, now=T0 + 5))


def queue(*recipients: RecipientState) -> list[QueuedMessage]:
    entries = [QueueEntry("Q1", "andy@ouhk.example", T0, 100, recipients)] if recipients else []
    return queue_from_json(to_json(entries, T0))


PENDING = RecipientState("betty@stevenchoy.example", Status.PENDING, attempts=2,
                         last_error="mail.stevenchoy.example[10.0.0.10]: connection refused")


# -- conditions ---------------------------------------------------------------------------------


def test_delivered_counts_messages_with_the_subject_and_not_bounces() -> None:
    box = [message("Lunch?"), message("Other"), bounce_about("betty@stevenchoy.example")]
    verdict = judge.delivered(m.Delivered("betty@stevenchoy.example", "Lunch", m.Count(1)), box)
    assert verdict.ok
    assert verdict.expected == "at least 1 message(s) with 'Lunch' delivered to betty@stevenchoy.example"
    assert verdict.seen.startswith("betty@stevenchoy.example's mailbox holds 3 message(s): 'Lunch?', 'Other', ")
    assert not judge.delivered(m.Delivered("betty@stevenchoy.example", "Lunch", m.Count(2)), box).ok
    assert not judge.delivered(m.Delivered("betty@stevenchoy.example", "Delivery"), box).ok  # the bounce's


def test_an_empty_mailbox_is_said_so_and_a_long_one_is_cut() -> None:
    assert judge.delivered(m.Delivered("b@x"), []).seen == "b@x's mailbox holds no messages"
    many = judge.summary([message(f"m{i}") for i in range(8)])
    assert many == "8 message(s): 'm0', 'm1', 'm2', 'm3', 'm4', 'm5', ..."


def test_queued_wants_a_pending_recipient_after_enough_attempts() -> None:
    entries = queue(PENDING)
    verdict = judge.queued(m.Queued("smtp", "Betty@stevenchoy.example", m.Count(2)), entries)
    assert verdict.ok
    assert verdict.seen == ("betty@stevenchoy.example pending after 2 attempt(s), "
                            "last error: mail.stevenchoy.example[10.0.0.10]: connection refused")
    assert not judge.queued(m.Queued("smtp", "betty@stevenchoy.example", m.Count(3)), entries).ok
    missing = judge.queued(m.Queued("smtp", "carol@stevenchoy.example"), entries)
    assert (missing.ok, missing.seen) == (False, "carol@stevenchoy.example is not in smtp's queue "
                                                 "(1 message(s) queued)")
    assert missing.expected == "carol@stevenchoy.example pending in smtp's queue after at least 1 attempt(s)"


def test_bounced_matches_the_failed_recipient_and_status_of_the_report() -> None:
    box = [message("Lunch?"), bounce_about("nobody@stevenchoy.example")]
    assert judge.bounced(m.Bounced("andy@ouhk.example"), box).ok
    assert judge.bounced(m.Bounced("andy@ouhk.example", "Nobody@stevenchoy.example", "5.1.1"), box).ok
    wrong = judge.bounced(m.Bounced("andy@ouhk.example", "nobody@stevenchoy.example", "5.7.1"), box)
    assert not wrong.ok
    assert wrong.expected == "a bounce to andy@ouhk.example about nobody@stevenchoy.example with 5.7.1"
    assert wrong.seen.endswith("; bounce reports: rfc822; nobody@stevenchoy.example 5.1.1")
    assert not judge.bounced(m.Bounced("andy@ouhk.example", "other@stevenchoy.example"), box).ok
    assert not judge.bounced(m.Bounced("andy@ouhk.example"), [message("Lunch?")]).ok


def test_queue_empty_lists_what_is_left() -> None:
    assert judge.queue_empty(m.QueueEmpty("smtp"), queue()) == judge.Verdict(True, "smtp's queue empty",
                                                                               "smtp's queue holds nothing")
    left = judge.queue_empty(m.QueueEmpty("smtp"), queue(PENDING))
    assert (left.ok, left.seen) == (False, "smtp's queue holds Q1 to betty@stevenchoy.example")


def test_seconds_are_only_waited() -> None:
    assert judge.describe(m.Seconds(2)) == "time to pass"


# -- expectations -------------------------------------------------------------------------------

BETTY = "betty@stevenchoy.example"


def test_mailbox_count_is_exact_and_no_count_wants_one() -> None:
    box = [message("Lunch?"), message("Lunch again")]
    assert judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Lunch", count=m.Count(2, 2)), box).seen == (
        "2 matching message(s) in betty@stevenchoy.example's mailbox")
    three = judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Lunch", count=m.Count(3, 3)), box)
    assert (three.ok, three.expected) == (False, "exactly 3 messages with subject containing 'Lunch' in "
                                                 "betty@stevenchoy.example's mailbox")
    assert three.seen == "2; the mailbox holds 2 message(s): 'Lunch?', 'Lunch again'"
    none = judge.mailbox(m.MailboxExpect(BETTY, "client", sender="carol"), box)
    assert (none.ok, none.expected) == (False, "at least 1 messages from carol in "
                                               "betty@stevenchoy.example's local mailbox")
    assert judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Dinner", count=m.Count(0, 0)), box).ok


def test_mailbox_headers_body_and_attachments_of_each_match() -> None:
    box = [message("Lunch?"), WITH_ATTACHMENT]
    rp = m.MailboxExpect(BETTY, "server", subject="Lunch", headers=(("Return-Path", re.compile("<andy@")),))
    assert judge.mailbox(rp, box).ok
    wrong = m.MailboxExpect(BETTY, "server", subject="Lunch", headers=(("Return-Path", re.compile("<>")),))
    assert judge.mailbox(wrong, box) == judge.Verdict(
        False, "a Return-Path header matching /<>/ in message 'Lunch?'", "Return-Path: ['<andy@ouhk.example>']")
    absent = m.MailboxExpect(BETTY, "server", subject="Lunch", headers=(("X-Spam", re.compile(".")),))
    assert judge.mailbox(absent, box).seen == "no X-Spam header"
    body = judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Lunch", body=re.compile("Goodbye")), box)
    assert (body.expected, body.seen) == ("text matching /Goodbye/ in message 'Lunch?'", "'Hello Betty\\n'")
    cat, dog_png = m.AttachmentExpect("cat.png"), m.AttachmentExpect("dog.png")
    assert judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Photos", attachments=(cat,)), box).ok
    dog = judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Photos", attachments=(cat, dog_png)), box)
    assert (dog.ok, dog.expected, dog.seen) == (False, "attachment dog.png in message 'Photos'",
                                                "attachments: cat.png")


def test_the_received_chain_is_read_oldest_hop_first() -> None:
    hops = ("from mail.stevenchoy.example by mx.stevenchoy.example; Tue, 14 Nov 2023",
            "from andy.ouhk.example by SMTP.ouhk.example. (maillab) with ESMTP; Tue, 14 Nov 2023")
    x = message("Lunch?", received=hops)  # newest first, as prepended
    assert judge.received_chain(x, ("smtp.ouhk.example", "mx.stevenchoy.example"), "it").ok
    backwards = judge.received_chain(x, ("mx.stevenchoy.example", "smtp.ouhk.example"), "it")
    assert backwards.expected == "a Received chain through mx.stevenchoy.example -> smtp.ouhk.example in it"
    assert (backwards.ok, backwards.seen) == (False, "hops (oldest first): smtp.ouhk.example -> mx.stevenchoy.example")
    assert judge.received_chain(message("x"), ("smtp.ouhk.example",), "it").seen == "hops (oldest first): none"


def test_queue_expectations() -> None:
    assert judge.queue(m.QueueExpect("smtp", empty=True), queue()).ok
    assert judge.queue(m.QueueExpect("smtp", empty=True), queue(PENDING)) == judge.Verdict(
        False, "smtp's queue empty", "Q1 to betty@stevenchoy.example")
    assert judge.queue(m.QueueExpect("smtp", empty=False), queue()).seen == "an empty queue"
    found = judge.queue(m.QueueExpect("smtp", to=BETTY, status="pending", attempts=m.Count(2),
                                      error=re.compile("refused")), queue(PENDING))
    assert found.ok and found.seen.startswith("pending after 2 attempt(s), last error: mail.stevenchoy")
    wanted = judge.queue(m.QueueExpect("smtp", to=BETTY, status="bounced", attempts=m.Count(3)), queue(PENDING))
    assert (wanted.ok, wanted.expected) == (False, f"{BETTY} in smtp's queue with status bounced, "
                                                   "at least 3 attempt(s)")
    gone = judge.queue(m.QueueExpect("smtp", to="carol@x"), queue(PENDING))
    assert (gone.ok, gone.seen) == (False, "carol@x not in smtp's queue")


# -- raw dialogues ------------------------------------------------------------------------------


def dialogue(*exchanges: tuple[str | None, str | None, str | None]) -> m.Dialogue:
    return m.Dialogue("smtp", "andy", "smtp.ouhk.example", 25, tuple(
        m.Exchange(10 + i, send, expect, re.compile(match, re.MULTILINE) if match else None)
        for i, (send, expect, match) in enumerate(exchanges)))


LOG = talk_from_json([{"sent": None, "reply": "220 smtp.ouhk.example ESMTP\r\n"},
                      {"sent": "EHLO andy",
                       "reply": "250-smtp.ouhk.example\r\n250-SIZE 10240000\r\n250 PIPELINING\r\n"},
                      {"sent": "MAIL FROM:<x@y>", "reply": "550 5.7.1 Relaying denied\r\n"}])


def test_each_reply_is_judged_by_its_prefix_and_pattern() -> None:
    ok = dialogue((None, "220", None), ("EHLO andy", "250", "^250 PIPELINING"), ("MAIL FROM:<x@y>", "550 5.7.1", None))
    assert judge.dialogue(ok, LOG) == judge.Verdict(True, "3 replies as expected", "3 replies as expected")
    wrong = dialogue((None, "220", None), ("EHLO andy", "250", None), ("MAIL FROM:<x@y>", "250", None))
    assert judge.dialogue(wrong, LOG) == judge.Verdict(False, "'250' after 'MAIL FROM:<x@y>' (line 12)",
                                                       "'550 5.7.1 Relaying denied'")
    unmatched = dialogue((None, None, None), ("EHLO andy", None, "STARTTLS"))
    assert judge.dialogue(unmatched, LOG).expected == "a reply matching /STARTTLS/ after 'EHLO andy' (line 11)"


def test_a_dialogue_without_the_greeting_skips_it() -> None:
    assert judge.dialogue(dialogue(("EHLO andy", "250", None)), LOG).ok


def test_a_missing_reply_says_why() -> None:
    refused = talk_from_json([{"sent": None, "reply": "", "error": "cannot connect to smtp:25: Connection refused"}])
    assert judge.dialogue(dialogue((None, "220", None)), refused) == judge.Verdict(
        False, "a reply as the greeting (line 10)", "cannot connect to smtp:25: Connection refused")
    short = dialogue((None, "220", None), ("EHLO andy", "250", None), ("MAIL FROM:<x@y>", "550", None),
                     ("RCPT TO:<z@y>", "250", None))
    assert judge.dialogue(short, LOG) == judge.Verdict(False, "a reply after 'RCPT TO:<z@y>' (line 13)",
                                                       "the server closed the connection")


@pytest.mark.parametrize("doc", [{}, {"all_headers": [], "parts": []}])
def test_a_message_without_fields_reads_as_empty(doc: dict[str, object]) -> None:
    x = message_from_json(doc)
    assert (x.subject, x.text, x.attachments, x.is_bounce) == ("", "", [], False)


# -- exact counts, retry gaps, attachment sizes and hashes (issue 14) --------------------------------


def test_an_exact_attempt_count_and_a_range() -> None:
    entries = queue(PENDING)  # two attempts
    assert judge.queued(m.Queued("smtp", BETTY, m.Count(2, 2)), entries).ok
    assert not judge.queued(m.Queued("smtp", BETTY, m.Count(1, 1)), entries).ok  # "1" is no longer "at least 1"
    assert judge.queue(m.QueueExpect("smtp", to=BETTY, attempts=m.Count(1, 3)), entries).ok
    exact = judge.queue(m.QueueExpect("smtp", to=BETTY, attempts=m.Count(3, 3)), entries)
    assert (exact.ok, exact.expected) == (False, f"{BETTY} in smtp's queue with exactly 3 attempt(s)")


def test_the_retry_gap_is_read_from_the_queue_record() -> None:
    retried = replace(PENDING, attempts=3, attempt_times=(T0 + 1, T0 + 3.5, T0 + 9.5))
    second = m.QueueExpect("smtp", to=BETTY, retry_gap=m.RetryGap(2, m.Count(2, 3)))
    assert judge.queue(second, queue(retried)).ok
    third = judge.queue(m.QueueExpect("smtp", to=BETTY, retry_gap=m.RetryGap(3, m.Count(2, 3))), queue(retried))
    assert (third.ok, third.expected) == (False, f"{BETTY} in smtp's queue with 2 to 3 s from attempt 2 to attempt 3")
    assert third.seen.endswith("gaps between attempts: 2.5 s, 6.0 s")
    assert not judge.queue(m.QueueExpect("smtp", to=BETTY, retry_gap=m.RetryGap(4, m.Count(0))), queue(retried)).ok


def test_an_attachment_by_size_and_sha256() -> None:
    data = base64.b64decode("iVBORw0K")
    digest = hashlib.sha256(data).hexdigest()
    box = [WITH_ATTACHMENT]
    fits = m.AttachmentExpect("cat.png", len(data), digest)
    assert judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Photos", attachments=(fits,)), box).ok
    wrong = m.AttachmentExpect("cat.png", 1234)
    verdict = judge.mailbox(m.MailboxExpect(BETTY, "server", subject="Photos", attachments=(wrong,)), box)
    assert (verdict.ok, verdict.expected, verdict.seen) == (
        False, "attachment cat.png (1234 bytes) in message 'Photos'",
        f"attachments: cat.png (6 bytes, sha256 {digest})")
