"""The MTA client's transaction core, fed replies by hand: no socket, no event loop.

Each script is what the transaction writes and what the server answers, in order, for the
lock-step client and the pipelining one (RFC 2920); the partial failures are the point: some
RCPT refused, DATA refused, a 421 midway, the connection lost.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from services.smtp.transaction import Transaction, mail_command
from services.smtp.wire import Reply, parse_reply_line
from services.textwire import stuff

BETTY, CAROL = "betty@stevenchoy.example", "carol@stevenchoy.example"
MESSAGE = b"Subject: lunch\r\n\r\n.a dot\r\n"
PIPELINING = {"PIPELINING": "", "SIZE": "10485760"}
LOCK_STEP = {"SIZE": "10485760"}

OK_SENDER = Reply(250, "2.1.0", "Sender ok")
OK_RCPT = Reply(250, "2.1.5", "Recipient ok")
UNKNOWN = Reply(550, "5.1.1", "User unknown")
GO_AHEAD = Reply(354, "", 'Enter mail, end with "." on a line by itself')
QUEUED = Reply(250, "2.0.0", "X1 Message accepted for delivery")
CLOSING = Reply(421, "4.4.2", "closing")
BUSY = Reply(451, "4.3.0", "Local error, try again later")


def run(txn: Transaction, replies: list[Reply]) -> list[bytes]:
    """Every write, the first one included, as the replies come in; the replies must all be read."""
    writes = [txn.start()]
    for reply in replies:
        assert not txn.done, f"the transaction ended before {reply}"
        data = txn.receive(reply)
        if data:
            writes.append(data)
    assert txn.done
    return writes


def mail(size: int = len(MESSAGE)) -> bytes:
    return f"MAIL FROM:<andy@ouhk.example> SIZE={size}\r\n".encode()


# -- lock-step ---------------------------------------------------------------------------------


def test_lock_step_one_command_per_reply() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, LOCK_STEP)
    writes = run(txn, [OK_SENDER, OK_RCPT, OK_RCPT, GO_AHEAD, QUEUED])
    assert writes == [mail(), f"RCPT TO:<{BETTY}>\r\n".encode(), f"RCPT TO:<{CAROL}>\r\n".encode(), b"DATA\r\n",
                      stuff(MESSAGE)]
    assert txn.result.replies == {BETTY: QUEUED, CAROL: QUEUED}
    assert txn.result.mail_code == 250 and txn.reusable


def test_lock_step_some_rcpt_refused() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, LOCK_STEP)
    run(txn, [OK_SENDER, UNKNOWN, OK_RCPT, GO_AHEAD, QUEUED])
    assert txn.result.replies == {BETTY: UNKNOWN, CAROL: QUEUED}


def test_lock_step_every_rcpt_refused_ends_with_rset() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY], MESSAGE, LOCK_STEP)
    writes = run(txn, [OK_SENDER, UNKNOWN, Reply(250, "2.0.0", "OK")])
    assert writes[-1] == b"RSET\r\n"
    assert txn.result.replies == {BETTY: UNKNOWN} and txn.reusable


def test_lock_step_sender_refused_answers_for_every_recipient() -> None:
    refused = Reply(553, "5.1.7", "bad sender")
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, LOCK_STEP)
    assert run(txn, [refused]) == [mail()]
    assert txn.result.replies == {BETTY: refused, CAROL: refused} and txn.result.mail_code == 553


def test_lock_step_data_refused() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY], MESSAGE, LOCK_STEP)
    run(txn, [OK_SENDER, OK_RCPT, BUSY])
    assert txn.result.replies == {BETTY: BUSY} and txn.reusable


def test_lock_step_421_midway_stops_and_drops_the_session() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, LOCK_STEP)
    run(txn, [OK_SENDER, CLOSING])
    assert txn.result.replies == {BETTY: CLOSING}  # carol got no answer: the relay tries her again
    assert not txn.reusable


# -- pipelined ---------------------------------------------------------------------------------


def test_pipelined_mail_rcpts_and_data_in_one_write() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, PIPELINING)
    writes = run(txn, [OK_SENDER, OK_RCPT, UNKNOWN, GO_AHEAD, QUEUED])
    assert writes == [mail() + f"RCPT TO:<{BETTY}>\r\nRCPT TO:<{CAROL}>\r\nDATA\r\n".encode(), stuff(MESSAGE)]
    assert txn.result.replies == {BETTY: QUEUED, CAROL: UNKNOWN} and txn.reusable


def test_pipelined_sender_refused_every_reply_still_read() -> None:
    refused = Reply(553, "5.1.7", "bad sender")
    need_mail = Reply(503, "5.5.1", "Need MAIL before RCPT")
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, PIPELINING)
    writes = run(txn, [refused, need_mail, need_mail, Reply(503, "5.5.1", "Need MAIL command")])
    assert len(writes) == 1  # no data
    assert txn.result.replies == {BETTY: refused, CAROL: refused}


def test_pipelined_354_with_nobody_accepted_gets_an_empty_message() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY], MESSAGE, PIPELINING)
    writes = run(txn, [OK_SENDER, UNKNOWN, GO_AHEAD, Reply(554, "5.5.1", "No valid recipients")])
    assert writes[-1] == b".\r\n"  # RFC 2920 §3.1
    assert txn.result.replies == {BETTY: UNKNOWN}


def test_pipelined_data_refused() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY], MESSAGE, PIPELINING)
    run(txn, [OK_SENDER, OK_RCPT, BUSY])
    assert txn.result.replies == {BETTY: BUSY}


def test_pipelined_421_midway_reads_on_but_drops_the_session() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, PIPELINING)
    run(txn, [OK_SENDER, OK_RCPT, CLOSING, GO_AHEAD, QUEUED])
    assert txn.result.replies == {BETTY: QUEUED, CAROL: CLOSING}
    assert not txn.reusable


def test_the_final_reply_is_awaited_with_the_data_timeout() -> None:
    txn = Transaction("andy@ouhk.example", [BETTY], MESSAGE, PIPELINING)
    txn.start()
    for reply in (OK_SENDER, OK_RCPT):
        txn.receive(reply)
        assert not txn.in_data
    assert txn.receive(GO_AHEAD) == stuff(MESSAGE) and txn.in_data


# -- the connection lost ---------------------------------------------------------------------


@pytest.mark.parametrize("extensions", [LOCK_STEP, PIPELINING], ids=["lock-step", "pipelined"])
def test_connection_lost_keeps_what_was_settled(extensions: dict[str, str]) -> None:
    txn = Transaction("andy@ouhk.example", [BETTY, CAROL], MESSAGE, extensions)
    txn.start()
    txn.receive(OK_SENDER)
    txn.receive(UNKNOWN)
    txn.broken("connection closed by the server")
    assert txn.done and not txn.reusable
    assert txn.result.replies == {BETTY: UNKNOWN}
    assert (txn.result.error, txn.result.error_status) == ("connection closed by the server", "4.4.2")


# -- MAIL's parameters -------------------------------------------------------------------------


def test_mail_carries_only_the_parameters_offered() -> None:
    assert mail_command("a@b", ["c@d"], 5, True, {}) == "MAIL FROM:<a@b>"
    assert mail_command("a@b", ["c@d"], 5, True, {"SIZE": "", "8BITMIME": ""}) == "MAIL FROM:<a@b> SIZE=5 BODY=8BITMIME"
    assert mail_command("a@b", ["ü@d"], 5, False, {"SMTPUTF8": ""}) == "MAIL FROM:<a@b> SMTPUTF8"


# -- any replies at all --------------------------------------------------------------------------

CODES = st.sampled_from([220, 221, 250, 251, 252, 334, 354, 421, 450, 451, 452, 500, 501, 503, 550, 552, 554])


@given(st.lists(CODES, min_size=1, max_size=12), st.booleans(), st.integers(1, 3))
def test_any_replies_end_the_transaction_with_a_reply_or_an_error_per_recipient(
    codes: list[int], pipelined: bool, count: int
) -> None:
    recipients = [f"u{i}@stevenchoy.example" for i in range(count)]
    txn = Transaction("andy@ouhk.example", recipients, MESSAGE, PIPELINING if pipelined else LOCK_STEP)
    txn.start()
    for code in codes:
        if txn.done:
            break
        txn.receive(Reply(code, "", "x"))
    if not txn.done:
        txn.broken("timed out")
    assert set(txn.result.replies) <= set(recipients)
    assert txn.result.error or txn.result.replies  # every transaction says something


def test_parsed_reply_lines_and_the_one_line_form() -> None:
    lines = ["5.1.1 <x@y>: no such user", "5.1.1 try another"]
    reply = Reply.parse(550, lines)
    assert reply == Reply(550, "5.1.1", "<x@y>: no such user\ntry another")
    assert reply.render() == "550-5.1.1 <x@y>: no such user\r\n550 5.1.1 try another"
    assert str(reply) == "550 5.1.1 <x@y>: no such user try another"
    assert [parse_reply_line(raw.encode()) is not None for raw in reply.render().split("\r\n")] == [True, True]
