"""The POP3 session core, driven by byte scripts: no sockets, no event loop, no clock."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.accounts import AccountAuthenticator
from services.config import Account, Domain
from services.pop3.core import (
    CAPABILITIES,
    DEFAULT_LIMITS,
    MAX_BAD_COMMANDS,
    MAX_LINE,
    Action,
    Close,
    Limits,
    Log,
    Send,
    Session,
    State,
    Wait,
    top_lines,
    uid_for_key,
)
from services.textwire import stuff_lines, wire_lines, wire_size

ADDRESS = "betty@stevenchoy.example"
PASSWORD = "s3cret pw"  # a space: PASS takes the rest of the line

# The two messages of the reference article's Activity 2: 180 and 200 octets with CRLF line ends,
# stored with LF (the Maildir convention).
ARTICLE_1 = b"Subject: one\n\n" + b"x" * 162 + b"\n"
ARTICLE_2 = b"Subject: two\n\n" + b"y" * 182 + b"\n"


class FakeStore:
    """Mailboxes in memory, with the one-session lock and injectable delete failures."""

    def __init__(self, messages: dict[str, bytes] | None = None) -> None:
        self.boxes: dict[str, dict[str, bytes]] = {ADDRESS: dict(messages or {})}
        self.locked: set[str] = set()
        self.failing_deletes: set[str] = set()
        self.open_error: OSError | None = None
        self.sizes: dict[str, int] = {}  # what the mailbox knows without reading (a Maildir's ,W=)
        self.reads: list[str] = []

    def open(self, address: str) -> FakeMailbox:
        if self.open_error is not None:
            raise self.open_error
        return FakeMailbox(self, address)


class FakeMailbox:
    def __init__(self, store: FakeStore, address: str) -> None:
        self.store = store
        self.address = address

    def try_lock(self) -> bool:
        if self.address in self.store.locked:
            return False
        self.store.locked.add(self.address)
        return True

    def unlock(self) -> None:
        self.store.locked.discard(self.address)

    def keys(self) -> list[str]:
        return list(self.store.boxes.setdefault(self.address, {}))

    def wire_size(self, key: str) -> int | None:
        return self.store.sizes.get(key)  # None: the core reads the message to count

    def read(self, key: str) -> bytes:
        self.store.reads.append(key)
        try:
            return self.store.boxes[self.address][key]
        except KeyError:
            raise FileNotFoundError(2, "no such message", key) from None

    def delete(self, key: str) -> None:
        if key in self.store.failing_deletes:
            raise PermissionError(13, "read-only", key)
        self.store.boxes[self.address].pop(key, None)


AUTH = AccountAuthenticator([Domain("stevenchoy.example", "mail", (Account("betty", "stevenchoy.example", PASSWORD),))])


def new_session(store: FakeStore, limits: Limits = DEFAULT_LIMITS) -> Session:
    session = Session("mail.stevenchoy.example", AUTH, store.open, limits)
    assert session.start() == [Send(b"+OK mail.stevenchoy.example POP3 server ready\r\n")]
    return session


def sent(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def say(session: Session, line: str | bytes) -> bytes:
    """One command line in, everything the session sends back out."""
    raw = line.encode() if isinstance(line, str) else line
    return sent(session.receive_data(raw + b"\r\n"))


def logged_in(store: FakeStore, limits: Limits = DEFAULT_LIMITS) -> Session:
    session = new_session(store, limits)
    assert say(session, "USER betty") == b"+OK User accepted\r\n"
    assert say(session, f"PASS {PASSWORD}").startswith(b"+OK Pass accepted")
    assert session.state is State.TRANSACTION
    return session


def article_store() -> FakeStore:
    return FakeStore({"k1": ARTICLE_1, "k2": ARTICLE_2})


# -- the article's dialogue, byte for byte ----------------------------------------------------


def test_activity_2_dialogue() -> None:
    store = article_store()
    s = new_session(store)
    assert say(s, "USER betty") == b"+OK User accepted\r\n"
    assert say(s, f"PASS {PASSWORD}") == b"+OK Pass accepted, 2 messages (380 octets)\r\n"
    assert say(s, "STAT") == b"+OK 2 380\r\n"
    assert say(s, "LIST") == b"+OK 2 messages (380 octets)\r\n1 180\r\n2 200\r\n.\r\n"
    retr = say(s, "RETR 1")
    assert retr == b"+OK 180 octets\r\nSubject: one\r\n\r\n" + b"x" * 162 + b"\r\n.\r\n"
    assert len(retr) - len(b"+OK 180 octets\r\n") - len(b".\r\n") == 180
    assert say(s, "DELE 1") == b"+OK message 1 deleted\r\n"
    actions = s.receive_data(b"QUIT\r\n")
    assert sent(actions) == b"+OK Bye-bye\r\n"
    assert actions[-1] == Close()
    assert s.state is State.CLOSED
    assert store.boxes[ADDRESS] == {"k2": ARTICLE_2}
    assert store.locked == set()


# -- AUTHORIZATION -----------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["betty", "BETTY", "betty@stevenchoy.example", "Betty@StevenChoy.Example"])
def test_bare_and_full_user_names_are_accepted(user: str) -> None:
    s = new_session(article_store())
    say(s, f"user {user}")
    assert say(s, f"pass {PASSWORD}").startswith(b"+OK Pass accepted")
    assert s.address == ADDRESS


def test_every_user_name_is_accepted_and_unknown_ones_fail_at_pass_like_wrong_passwords() -> None:
    s = new_session(article_store())
    assert say(s, "USER nobody") == b"+OK User accepted\r\n"
    unknown = s.receive_data(f"PASS {PASSWORD}\r\n".encode())
    assert say(s, "USER betty@ouhk.example") == b"+OK User accepted\r\n"
    wrong_domain = s.receive_data(f"PASS {PASSWORD}\r\n".encode())
    for actions in (unknown, wrong_domain):
        assert sent(actions) == b"-ERR [AUTH] invalid user name or password\r\n"
        assert any(isinstance(a, Wait) for a in actions)
    assert s.state is State.AUTHORIZATION


def test_wrong_password_is_delayed_more_each_time_then_the_session_closes() -> None:
    limits = Limits(auth_delay_first=1.0, auth_delay_max=8.0, max_auth_failures=5)
    s = new_session(article_store(), limits)
    delays = []
    for attempt in range(1, 6):
        say(s, "USER betty")
        actions = s.receive_data(b"PASS wrong\r\n")
        waits = [a for a in actions if isinstance(a, Wait)]
        assert len(waits) == 1
        # The wait comes before the reply: the client learns nothing until it is over.
        assert actions.index(waits[0]) < next(i for i, a in enumerate(actions) if isinstance(a, Send))
        delays.append(waits[0].seconds)
        if attempt < 5:
            assert sent(actions) == b"-ERR [AUTH] invalid user name or password\r\n"
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert sent(actions).startswith(b"-ERR [AUTH]") and b"closing" in sent(actions)
    assert actions[-1] == Close() and s.closed


def test_default_auth_delays_grow_and_are_capped() -> None:
    limits = Limits()
    delays = [limits.auth_delay(n) for n in range(1, 12)]
    assert delays[0] >= 1.0
    assert all(a <= b for a, b in zip(delays, delays[1:], strict=False))
    assert delays[1] > delays[0] and delays[-1] == limits.auth_delay_max
    assert limits.auth_delay(10_000) == limits.auth_delay_max


def test_pass_needs_a_fresh_user_and_a_failed_pass_forgets_it() -> None:
    s = new_session(article_store())
    assert say(s, f"PASS {PASSWORD}") == b"-ERR give USER first\r\n"
    say(s, "USER betty")
    say(s, "PASS wrong")
    assert say(s, f"PASS {PASSWORD}") == b"-ERR give USER first\r\n"
    say(s, "USER betty")
    assert say(s, f"PASS {PASSWORD}").startswith(b"+OK")


def test_password_keeps_its_spaces() -> None:
    s = new_session(article_store())
    say(s, "USER betty")
    assert say(s, "PASS s3cret  pw").startswith(b"-ERR [AUTH]")
    say(s, "USER betty")
    assert say(s, "PASS s3cret pw").startswith(b"+OK")


def test_second_session_on_a_locked_mailbox_gets_in_use_until_the_first_quits() -> None:
    store = article_store()
    first = logged_in(store)
    second = new_session(store)
    say(second, "USER betty")
    actions = second.receive_data(f"PASS {PASSWORD}\r\n".encode())
    assert sent(actions) == b"-ERR [IN-USE] mailbox is already in use by another session\r\n"
    assert not any(isinstance(a, Wait) for a in actions)  # the password was right: no penalty
    assert second.state is State.AUTHORIZATION and not second.closed
    say(first, "QUIT")
    say(second, "USER betty")
    assert say(second, f"PASS {PASSWORD}").startswith(b"+OK Pass accepted")


def test_a_dropped_session_releases_the_lock() -> None:
    store = article_store()
    first = logged_in(store)
    first.connection_lost()
    assert store.locked == set()
    logged_in(store)


def test_mailbox_that_cannot_be_opened_is_a_temporary_failure() -> None:
    store = article_store()
    store.open_error = OSError(5, "I/O error")
    s = new_session(store)
    say(s, "USER betty")
    assert say(s, f"PASS {PASSWORD}").startswith(b"-ERR [SYS/TEMP]")
    assert s.state is State.AUTHORIZATION and store.locked == set()


def test_quit_before_login() -> None:
    s = new_session(article_store())
    actions = s.receive_data(b"QUIT\r\n")
    assert sent(actions) == b"+OK Bye-bye\r\n" and actions[-1] == Close() and s.closed


def test_capa_in_both_states_lists_only_what_is_implemented() -> None:
    expected = (b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
                b"PIPELINING\r\nIMPLEMENTATION maillab\r\n.\r\n")
    s = new_session(article_store())
    assert say(s, "CAPA") == expected
    say(s, "USER betty")
    say(s, f"PASS {PASSWORD}")
    assert say(s, "CAPA") == expected
    assert "SASL" not in CAPABILITIES and "STLS" not in CAPABILITIES


# -- commands in the wrong state, unknown commands, bad arguments --------------------------------


@pytest.mark.parametrize("command", ["STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1",
                                     "UIDL", "UIDL 1"])
def test_transaction_commands_before_login_are_refused(command: str) -> None:
    s = new_session(article_store())
    verb = command.split()[0]
    assert say(s, command) == f"-ERR {verb} is not allowed before login\r\n".encode()
    assert s.state is State.AUTHORIZATION


@pytest.mark.parametrize("command", ["USER betty", f"PASS {PASSWORD}"])
def test_authorization_commands_after_login_are_refused(command: str) -> None:
    s = logged_in(article_store())
    verb = command.split()[0]
    assert say(s, command) == f"-ERR {verb} is not allowed after login\r\n".encode()
    assert s.state is State.TRANSACTION


@pytest.mark.parametrize("line", [b"HELO", b"APOP betty 0123", b"AUTH PLAIN", b"", b" STAT",
                                  b"\xff\xfe", b"ST\x00AT"])
def test_unknown_commands_get_err(line: bytes) -> None:
    s = logged_in(article_store())
    assert say(s, line) == b"-ERR unknown command\r\n"


@pytest.mark.parametrize(("line", "reply"), [
    ("STAT 1", b"-ERR STAT takes no arguments\r\n"),
    ("NOOP x", b"-ERR NOOP takes no arguments\r\n"),
    ("RSET 1", b"-ERR RSET takes no arguments\r\n"),
    ("QUIT now", b"-ERR QUIT takes no arguments\r\n"),
    ("CAPA x", b"-ERR CAPA takes no arguments\r\n"),
    ("RETR", b"-ERR RETR takes 1 argument\r\n"),
    ("DELE 1 2", b"-ERR DELE takes 1 argument\r\n"),
    ("LIST 1 2", b"-ERR LIST takes at most 1 argument\r\n"),
    ("UIDL 1 2", b"-ERR UIDL takes at most 1 argument\r\n"),
    ("TOP 1", b"-ERR TOP takes 2 arguments\r\n"),
    ("RETR one", b"-ERR invalid message number\r\n"),
    ("RETR -1", b"-ERR invalid message number\r\n"),
    ("RETR 1234567890", b"-ERR invalid message number\r\n"),
    ("TOP 1 -1", b"-ERR invalid line count\r\n"),
    ("TOP 1 x", b"-ERR invalid line count\r\n"),
    ("RETR 0", b"-ERR no such message, only 2 messages in maildrop\r\n"),
    ("RETR 3", b"-ERR no such message, only 2 messages in maildrop\r\n"),
    ("LIST 3", b"-ERR no such message, only 2 messages in maildrop\r\n"),
    ("TOP 3 0", b"-ERR no such message, only 2 messages in maildrop\r\n"),
    ("UIDL 3", b"-ERR no such message, only 2 messages in maildrop\r\n"),
    ("DELE 3", b"-ERR no such message, only 2 messages in maildrop\r\n"),
])
def test_argument_errors(line: str, reply: bytes) -> None:
    s = logged_in(article_store())
    assert say(s, line) == reply
    assert s.state is State.TRANSACTION


def test_commands_are_case_insensitive_and_bare_lf_is_accepted() -> None:
    s = new_session(article_store())
    assert sent(s.receive_data(b"user betty\n")) == b"+OK User accepted\r\n"
    assert sent(s.receive_data(f"Pass {PASSWORD}\n".encode())).startswith(b"+OK")
    assert sent(s.receive_data(b"sTaT\n")) == b"+OK 2 380\r\n"
    assert sent(s.receive_data(b"noop\r\n")) == b"+OK\r\n"


# -- TRANSACTION: numbering, DELE, RSET, QUIT -----------------------------------------------------


def test_dele_hides_the_message_everywhere_and_keeps_the_numbering() -> None:
    store = article_store()
    s = logged_in(store)
    assert say(s, "DELE 1") == b"+OK message 1 deleted\r\n"
    gone = b"-ERR message 1 already deleted\r\n"
    for command in ("RETR 1", "LIST 1", "TOP 1 0", "UIDL 1", "DELE 1"):
        assert say(s, command) == gone
    assert say(s, "STAT") == b"+OK 1 200\r\n"
    assert say(s, "LIST") == b"+OK 1 message (200 octets)\r\n2 200\r\n.\r\n"
    assert say(s, "UIDL") == b"+OK unique-id listing follows\r\n2 k2\r\n.\r\n"
    assert say(s, "LIST 2") == b"+OK 2 200\r\n"  # message 2 is still number 2
    assert store.boxes[ADDRESS].keys() == {"k1", "k2"}  # nothing removed before QUIT


def test_rset_restores_marked_messages() -> None:
    store = article_store()
    s = logged_in(store)
    say(s, "DELE 1")
    say(s, "DELE 2")
    assert say(s, "STAT") == b"+OK 0 0\r\n"
    assert say(s, "LIST") == b"+OK 0 messages (0 octets)\r\n.\r\n"
    assert say(s, "RSET") == b"+OK maildrop has 2 messages (380 octets)\r\n"
    assert say(s, "STAT") == b"+OK 2 380\r\n"
    assert say(s, "RETR 1").startswith(b"+OK 180 octets\r\n")
    say(s, "QUIT")
    assert store.boxes[ADDRESS].keys() == {"k1", "k2"}


def test_quit_removes_exactly_the_marked_messages() -> None:
    store = FakeStore({"a": b"A\n", "b": b"B\n", "c": b"C\n"})
    s = logged_in(store)
    say(s, "DELE 1")
    say(s, "DELE 3")
    actions = s.receive_data(b"QUIT\r\n")
    assert sent(actions) == b"+OK Bye-bye\r\n"
    assert store.boxes[ADDRESS] == {"b": b"B\n"}
    assert Log("QUIT -> +OK Bye-bye (UPDATE: 2 messages removed)") in actions


@pytest.mark.parametrize("end", ["connection_lost", "timed_out"])
def test_a_session_that_ends_without_quit_deletes_nothing(end: str) -> None:
    store = article_store()
    s = logged_in(store)
    say(s, "DELE 1")
    say(s, "DELE 2")
    actions = getattr(s, end)()
    assert sent(actions) == b""  # RFC 1939 §3: autologout sends no response either
    assert s.closed and store.locked == set()
    assert store.boxes[ADDRESS].keys() == {"k1", "k2"}
    assert any(isinstance(a, Log) for a in actions)
    assert s.receive_data(b"QUIT\r\n") == []


def test_failed_removal_in_update_is_reported_and_the_lock_released() -> None:
    store = article_store()
    store.failing_deletes.add("k1")
    s = logged_in(store)
    say(s, "DELE 1")
    say(s, "DELE 2")
    actions = s.receive_data(b"QUIT\r\n")
    assert sent(actions) == b"-ERR some deleted messages not removed\r\n"
    assert actions[-1] == Close()
    assert store.boxes[ADDRESS] == {"k1": ARTICLE_1} and store.locked == set()


def test_numbering_is_a_snapshot_taken_at_login() -> None:
    store = article_store()
    s = logged_in(store)
    store.boxes[ADDRESS]["k3"] = b"late\n"  # delivered by the MX during the session
    assert say(s, "STAT") == b"+OK 2 380\r\n"
    assert say(s, "RETR 3").startswith(b"-ERR no such message")
    say(s, "QUIT")
    s = logged_in(store)
    assert say(s, "LIST 3") == b"+OK 3 6\r\n"


def test_message_that_vanished_under_us_is_a_temporary_error() -> None:
    store = article_store()
    s = logged_in(store)
    del store.boxes[ADDRESS]["k1"]
    assert say(s, "RETR 1").startswith(b"-ERR [SYS/TEMP] cannot read message 1")
    assert say(s, "RETR 2").startswith(b"+OK 200 octets")


# -- message bodies: octets, dot-stuffing, TOP, UIDL ----------------------------------------------


DOTTY = b"Subject: dots\n\n.\n.leading\n..two\nplain\n"


def test_retr_dot_stuffs_and_counts_octets_before_stuffing() -> None:
    s = logged_in(FakeStore({"d": DOTTY}))
    unstuffed = b"Subject: dots\r\n\r\n.\r\n.leading\r\n..two\r\nplain\r\n"
    assert say(s, "LIST 1") == f"+OK 1 {len(unstuffed)}\r\n".encode()
    assert say(s, "RETR 1") == (f"+OK {len(unstuffed)} octets\r\n".encode()
                                + b"Subject: dots\r\n\r\n..\r\n..leading\r\n...two\r\nplain\r\n.\r\n")


@pytest.mark.parametrize("stored", [b"H: 1\n\nbody\n", b"H: 1\r\n\r\nbody\r\n", b"H: 1\n\r\nbody"])
def test_stored_line_ends_do_not_change_what_is_sent(stored: bytes) -> None:
    s = logged_in(FakeStore({"m": stored}))
    assert say(s, "STAT") == b"+OK 1 14\r\n"
    assert say(s, "RETR 1") == b"+OK 14 octets\r\nH: 1\r\n\r\nbody\r\n.\r\n"


def test_empty_message() -> None:
    s = logged_in(FakeStore({"e": b""}))
    assert say(s, "LIST") == b"+OK 1 message (0 octets)\r\n1 0\r\n.\r\n"
    assert say(s, "RETR 1") == b"+OK 0 octets\r\n.\r\n"
    assert say(s, "TOP 1 5") == b"+OK top of message follows\r\n\r\n.\r\n"


LONG = b"From: a@b.example\nSubject: t\n\nl1\nl2\n.l3\nl4\n"


@pytest.mark.parametrize(("n", "body"), [
    (0, b""),
    (1, b"l1\r\n"),
    (3, b"l1\r\nl2\r\n..l3\r\n"),
    (4, b"l1\r\nl2\r\n..l3\r\nl4\r\n"),
    (99, b"l1\r\nl2\r\n..l3\r\nl4\r\n"),
])
def test_top_sends_headers_blank_line_and_exactly_n_body_lines(n: int, body: bytes) -> None:
    s = logged_in(FakeStore({"t": LONG}))
    assert say(s, f"TOP 1 {n}") == (b"+OK top of message follows\r\nFrom: a@b.example\r\nSubject: t\r\n\r\n"
                                     + body + b".\r\n")


def test_top_of_a_message_without_body_still_ends_the_headers() -> None:
    assert top_lines(b"Subject: only\n", 3) == [b"Subject: only", b""]
    assert top_lines(b"A: 1\n\nx\n\ny\n", 2) == [b"A: 1", b"", b"x", b""]


def test_uidl_is_stable_across_sessions_and_valid() -> None:
    store = FakeStore({"1700000000.M1P2Q3.mail": b"a\n", "odd key with spaces": b"b\n", "x" * 80: b"c\n"})
    s = logged_in(store)
    first = say(s, "UIDL")
    say(s, "QUIT")
    s = logged_in(store)
    assert say(s, "UIDL") == first
    lines = first.split(b"\r\n")[1:-2]
    uids = [line.split(b" ", 1)[1] for line in lines]
    assert uids[0] == b"1700000000.M1P2Q3.mail"
    assert len(set(uids)) == 3
    assert all(1 <= len(u) <= 70 and all(0x21 <= c <= 0x7E for c in u) for u in uids)
    assert say(s, "UIDL 2") == f"+OK 2 {uid_for_key('odd key with spaces')}\r\n".encode()


def test_wire_helpers() -> None:
    assert wire_lines(b"a\nb") == [b"a", b"b"]
    assert wire_size(b"a\nb") == 6
    assert wire_size(b"") == 0
    assert stuff_lines([b".", b"x"]) == b"..\r\nx\r\n.\r\n"
    assert uid_for_key("k") == "k" and uid_for_key("k") == uid_for_key("k")
    assert uid_for_key("a b") != uid_for_key("a c")


# -- line limits, bad-command budget, pipelining -------------------------------------------------


def test_longest_legal_line_is_served_and_one_octet_more_is_refused() -> None:
    s = new_session(article_store())
    legal = b"USER " + b"a" * (MAX_LINE - len(b"USER ") - 2)
    assert len(legal + b"\r\n") == MAX_LINE
    assert say(s, legal) == b"+OK User accepted\r\n"
    assert say(s, legal + b"a") == f"-ERR line too long (at most {MAX_LINE} octets)\r\n".encode()


def test_an_oversized_line_is_drained_then_answered_once_and_the_session_goes_on() -> None:
    s = new_session(article_store())
    out: list[Action] = []
    for _ in range(100):  # 100 kB without a line end: never buffered whole, never answered early
        out += s.receive_data(b"Z" * 1000)
    assert sent(out) == b""
    out += s.receive_data(b"Z" * 10 + b"\r\nUSER betty\r\n")
    assert sent(out) == f"-ERR line too long (at most {MAX_LINE} octets)\r\n".encode() + b"+OK User accepted\r\n"
    assert say(s, f"PASS {PASSWORD}").startswith(b"+OK")


def test_a_run_of_bad_commands_closes_the_session() -> None:
    store = article_store()
    s = logged_in(store)
    say(s, "DELE 1")
    for _ in range(MAX_BAD_COMMANDS - 1):
        assert say(s, "BOGUS") == b"-ERR unknown command\r\n"
    assert say(s, "RETR 99").startswith(b"-ERR no such message")  # a fair -ERR is not "bad"
    actions = s.receive_data(b"BOGUS\r\nSTAT\r\n")
    assert sent(actions) == b"-ERR too many bad commands, closing connection\r\n"
    assert actions[-1] == Close() and s.closed
    assert store.locked == set() and store.boxes[ADDRESS].keys() == {"k1", "k2"}


def test_pipelined_commands_are_answered_in_order_like_separate_ones() -> None:
    script = [b"CAPA", b"USER betty", b"PASS wrong", b"USER betty", f"PASS {PASSWORD}".encode(), b"STAT",
              b"LIST", b"RETR 2", b"TOP 1 0", b"DELE 1", b"UIDL", b"RSET", b"NOOP", b"QUIT"]
    one_by_one = new_session(article_store())
    separate = b"".join(say(one_by_one, line) for line in script)
    pipelined = new_session(article_store())
    actions = pipelined.receive_data(b"".join(line + b"\r\n" for line in script))
    assert sent(actions) == separate
    byte_by_byte = new_session(article_store())
    dribbled: list[Action] = []
    for byte in b"".join(line + b"\n" for line in script):
        dribbled += byte_by_byte.receive_data(bytes([byte]))
    assert sent(dribbled) == separate


def test_the_password_never_reaches_the_log() -> None:
    s = new_session(article_store())
    logs = s.receive_data(b"USER betty\r\n") + s.receive_data(f"PASS {PASSWORD}\r\n".encode())
    logs += s.receive_data(b"STAT\r\n")
    texts = [a.text for a in logs if isinstance(a, Log)]
    assert texts == ["USER betty -> +OK User accepted",
                     "PASS **** -> +OK Pass accepted, 2 messages (380 octets)",
                     "STAT -> +OK 2 380"]
    assert not any("s3cret" in t for t in texts)


def test_internal_error_sends_a_generic_err_and_deletes_nothing() -> None:
    store = article_store()
    s = logged_in(store)
    say(s, "DELE 1")
    actions = s.internal_error()
    assert sent(actions) == b"-ERR [SYS/TEMP] internal server error, closing connection\r\n"
    assert actions[-1] == Close() and store.locked == set() and len(store.boxes[ADDRESS]) == 2


# -- the authenticator the server uses ------------------------------------------------------------


def test_account_authenticator() -> None:
    auth = AccountAuthenticator([
        Domain("stevenchoy.example", "mail", (Account("betty", "stevenchoy.example", "pw1"),
                                              Account("sam", "stevenchoy.example", "pw2"))),
        Domain("other.example", "mail", (Account("sam", "other.example", "pw3"),)),
    ])
    assert auth.authenticate("betty", "pw1") == "betty@stevenchoy.example"
    assert auth.authenticate("Betty@StevenChoy.example", "pw1") == "betty@stevenchoy.example"
    assert auth.authenticate("betty", "PW1") is None
    assert auth.authenticate("betty@other.example", "pw1") is None
    assert auth.authenticate("sam", "pw2") is None  # in two local domains: say which
    assert auth.authenticate("sam@other.example", "pw3") == "sam@other.example"
    assert auth.authenticate("", "") is None


# -- fuzzing ----------------------------------------------------------------------------------------

WORDS = [b"USER betty", f"PASS {PASSWORD}".encode(), b"PASS nope", b"STAT", b"LIST", b"LIST 1", b"LIST 9",
         b"RETR 1", b"RETR 2", b"DELE 1", b"DELE 2", b"RSET", b"NOOP", b"TOP 1 0", b"TOP 2 3", b"UIDL",
         b"UIDL 2", b"CAPA", b"QUIT", b"APOP x y", b"", b"\x00\xff", b"RETR 99999999999", b"LIST x y z",
         b"A" * 300]


@settings(deadline=None)  # the example count comes from the profile in tests/conftest.py
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.binary(max_size=40)), max_size=30),
       st.sampled_from([b"\r\n", b"\n"]), st.integers(min_value=1, max_value=64))
def test_fuzz_every_complete_line_gets_one_reply_and_nothing_raises(
        lines: list[bytes], ending: bytes, chunk: int) -> None:
    store = FakeStore({"k1": DOTTY, "k2": LONG})
    s = new_session(store, Limits(max_auth_failures=3))
    data = b"".join(line + ending for line in lines)
    actions: list[Action] = []
    for i in range(0, len(data), chunk):
        actions += s.receive_data(data[i:i + chunk])
    replies = [a.data for a in actions if isinstance(a, Send)]
    for reply in replies:
        assert reply.startswith((b"+OK", b"-ERR")) and reply.endswith(b"\r\n")
        if reply.count(b"\r\n") > 1:  # multi-line: ends with the lone dot
            assert reply.endswith(b"\r\n.\r\n")
    if s.closed:
        assert actions[-1] == Close() and len(replies) <= data.count(b"\n")
    else:
        assert len(replies) == data.count(b"\n")
    s.connection_lost()
    assert store.locked == set()
    removed = {"k1", "k2"} - store.boxes[ADDRESS].keys()
    assert not removed or b"QUIT" + ending in data


class Pop3Model(RuleBasedStateMachine):
    """Sessions against a model of the maildrop: what each says must match the model.

    QUIT commits the marked deletions and logs in again, so numbering and UIDs are checked across
    sessions too; the last session is dropped without QUIT and must leave the maildrop as it was.
    """

    MESSAGES = {"k1": ARTICLE_1, "k2": ARTICLE_2, "k3": DOTTY, "k4": LONG}

    @initialize()
    def login(self) -> None:
        self.store = FakeStore(self.MESSAGES)
        self.session = logged_in(self.store)
        self.keys = list(self.MESSAGES)
        self.deleted: set[int] = set()

    def live(self) -> list[int]:
        return [i for i in range(len(self.keys)) if i not in self.deleted]

    def size(self, index: int) -> int:
        return wire_size(self.MESSAGES[self.keys[index]])

    def exists(self, n: int) -> bool:
        return 1 <= n <= len(self.keys) and n - 1 not in self.deleted

    numbers = st.integers(min_value=0, max_value=5)

    @rule(n=numbers)
    def dele(self, n: int) -> None:
        reply = say(self.session, f"DELE {n}")
        if self.exists(n):
            assert reply == f"+OK message {n} deleted\r\n".encode()
            self.deleted.add(n - 1)
        else:
            assert reply.startswith(b"-ERR")

    @rule(n=numbers)
    def retr(self, n: int) -> None:
        reply = say(self.session, f"RETR {n}")
        if self.exists(n):
            body = wire_lines(self.MESSAGES[self.keys[n - 1]])
            assert reply == f"+OK {self.size(n - 1)} octets\r\n".encode() + stuff_lines(body)
        else:
            assert reply.startswith(b"-ERR")

    @rule(n=numbers)
    def uidl(self, n: int) -> None:
        reply = say(self.session, f"UIDL {n}")
        if self.exists(n):
            assert reply == f"+OK {n} {self.keys[n - 1]}\r\n".encode()
        else:
            assert reply.startswith(b"-ERR")

    @rule()
    def rset(self) -> None:
        say(self.session, "RSET")
        self.deleted.clear()

    @rule()
    def listing(self) -> None:
        expected = b"".join(f"{i + 1} {self.size(i)}\r\n".encode() for i in self.live())
        assert say(self.session, "LIST").split(b"\r\n", 1)[1] == expected + b".\r\n"

    @rule()
    def quit_and_log_in_again(self) -> None:
        assert say(self.session, "QUIT") == b"+OK Bye-bye\r\n"
        self.keys = [self.keys[i] for i in self.live()]
        self.deleted.clear()
        assert list(self.store.boxes[ADDRESS]) == self.keys
        assert self.store.locked == set()
        self.session = logged_in(self.store)

    @invariant()
    def stat_matches_the_model(self) -> None:
        live = self.live()
        assert say(self.session, "STAT") == f"+OK {len(live)} {sum(self.size(i) for i in live)}\r\n".encode()

    def teardown(self) -> None:
        self.session.connection_lost()  # a dropped connection: the maildrop is untouched
        assert list(self.store.boxes[ADDRESS]) == self.keys
        assert self.store.locked == set()


TestPop3Model = Pop3Model.TestCase
TestPop3Model.settings = settings(stateful_step_count=25, deadline=None)


def test_sizes_the_mailbox_knows_are_not_read_at_login() -> None:
    store = article_store()
    store.sizes = {"k1": 999, "k2": 1}  # as a Maildir's ",W=" would tell
    session = logged_in(store)
    assert store.reads == []  # a thousand messages no longer mean a thousand reads before +OK
    assert say(session, "STAT") == b"+OK 2 1000\r\n"
    assert say(session, "LIST 1") == b"+OK 1 999\r\n"
    say(session, "RETR 2")
    assert store.reads == ["k2"]  # the message itself is read when it is asked for


def test_a_uid_is_the_unique_part_of_a_maildir_name() -> None:
    assert uid_for_key("1796163944.M791731P30270Q1.mail.stevenchoy.example,S=80,W=85") == \
        "1796163944.M791731P30270Q1.mail.stevenchoy.example"


# RETR's text in one piece (textwire.pop3_form, stuff_text) must be the line-by-line framing
# octet for octet, on any stored bytes: LF or CRLF ends, bare CRs, a CR before the end, leading dots.
_STORED = st.lists(st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b" ", b"x.y"]), max_size=40).map(b"".join)


@given(_STORED)
@settings(max_examples=3000, deadline=None)
def test_retr_in_one_piece_is_the_line_by_line_framing(message: bytes) -> None:
    from services.textwire import pop3_form, stuff_text

    lines = wire_lines(message)
    assert pop3_form(message) == b"".join(line + b"\r\n" for line in lines)
    assert len(pop3_form(message)) == wire_size(message)
    assert stuff_text(pop3_form(message)) == stuff_lines(lines)


@pytest.mark.parametrize("message", [b"", b"\n", b".", b".\n.\n", b"abc\r", b"a\r\r\nb", b"\r\n.\r\n", b"x\ny"])
def test_retr_in_one_piece_edge_cases(message: bytes) -> None:
    from services.textwire import pop3_form, stuff_text

    assert stuff_text(pop3_form(message)) == stuff_lines(wire_lines(message))
