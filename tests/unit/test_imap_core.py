"""The IMAP session core, driven by byte scripts on a Maildir in tmp_path: no sockets, no event loop."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any

import pytest

from services.accounts import AccountAuthenticator
from services.actions import Action, Close, Poll, Send, StopPolling, Wait
from services.config import Account, Domain
from services.imap.core import MAX_BAD_COMMANDS, Limits, Session, State
from services.imap.store import UIDLIST, Folder, Mailboxes
from services.mailstore import Maildir, deliver

PASSWORD = "s3cret pw"
AUTH = AccountAuthenticator([Domain("stevenchoy.example", "mail", (Account("betty", "stevenchoy.example", PASSWORD),))])
MESSAGE_1 = (b"From: Andy <andy@ouhk.example>\nTo: betty@stevenchoy.example\nSubject: one\n"
             b"Date: Mon, 1 Jan 2024 10:00:00 +0000\n\nHello Betty.\n")
MULTIPART = (b'Subject: two\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\npreamble\n'
             b"--b\nContent-Type: text/plain; charset=utf-8\n\npart one\n"
             b'--b\nContent-Type: application/octet-stream; name="x.bin"\nContent-Transfer-Encoding: base64\n'
             b'Content-Disposition: attachment; filename="x.bin"\n\nAAEC\n'
             b"--b\nContent-Type: message/rfc822\n\nSubject: inner\nFrom: c@d.example\n\ninner body\n--b--\n")


FAST = Limits(auth_delay_first=0.5, auth_delay_max=2.0)


def sent(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


class Script:
    def __init__(self, root: Path, limits: Limits = FAST, folders: dict[Path, Folder] | None = None) -> None:
        self.root = root
        self.session = Session("mail.stevenchoy.example", AUTH, lambda address: Mailboxes(root, folders), limits)
        self.greeting = sent(self.session.start())

    def say(self, line: bytes) -> bytes:
        return sent(self.session.receive_data(line + b"\r\n"))

    def login(self) -> Script:
        assert self.say(f'a LOGIN betty "{PASSWORD}"'.encode()).startswith(b"a OK [CAPABILITY ")
        return self


@pytest.fixture
def box(tmp_path: Path) -> Path:
    root = tmp_path / "betty"
    deliver(root, MESSAGE_1)
    deliver(root, MULTIPART)
    return root


def test_greeting_capability_and_login(box: Path) -> None:
    s = Script(box)
    assert s.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ ")
    assert b"AUTH=PLAIN" in s.greeting
    assert s.say(b"A1 capability") == (b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR IDLE UIDPLUS MOVE UNSELECT NAMESPACE "
                                       b"ID ENABLE AUTH=PLAIN\r\nA1 OK CAPABILITY completed\r\n")
    assert s.say(b"A2 SELECT INBOX") == b"A2 BAD SELECT is not allowed before login\r\n"
    s.login()
    assert s.session.state is State.AUTHENTICATED
    assert s.say(b"A3 ENABLE UTF8=ACCEPT") == b"* ENABLED\r\nA3 OK ENABLE completed\r\n"


def test_select_answers_what_clients_cache(box: Path) -> None:
    s = Script(box).login()
    out = s.say(b"s SELECT inbox")
    assert re.fullmatch(rb"\* FLAGS \(\\Answered \\Flagged \\Deleted \\Seen \\Draft\)\r\n"
                        rb"\* OK \[PERMANENTFLAGS \(\\Answered \\Flagged \\Deleted \\Seen \\Draft\)\] .*\r\n"
                        rb"\* 2 EXISTS\r\n\* 2 RECENT\r\n\* OK \[UNSEEN 1\] .*\r\n"
                        rb"\* OK \[UIDVALIDITY (\d+)\] .*\r\n\* OK \[UIDNEXT 3\] .*\r\n"
                        rb"s OK \[READ-WRITE\] SELECT completed\r\n", out), out
    assert (box / UIDLIST).read_text().startswith("3 V")
    assert not list((box / "new").iterdir())  # claimed into cur/, as Dovecot does
    other = Script(box).login()
    assert b"* 0 RECENT" in other.say(b"e EXAMINE INBOX")  # \Recent is for one session only


def test_fetch_sizes_are_crlf_octets_and_body_sets_seen(box: Path) -> None:
    s = Script(box).login()
    s.say(b"s SELECT INBOX")
    wire = MESSAGE_1.replace(b"\n", b"\r\n")
    out = s.say(b"f1 FETCH 1 (RFC822.SIZE BODY.PEEK[])")
    assert out == b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\nf1 OK FETCH completed\r\n" % (
        len(wire), len(wire), wire)
    assert s.say(b"f2 FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Recent))\r\nf2 OK FETCH completed\r\n"
    assert s.say(b"f3 FETCH 1 BODY[TEXT]<6.5>") == (
        b"* 1 FETCH (BODY[TEXT]<6> {5}\r\nBetty FLAGS (\\Seen \\Recent))\r\nf3 OK FETCH completed\r\n")
    assert any(p.name.endswith(":2,S") for p in (box / "cur").iterdir())


def test_envelope_bodystructure_and_sections_of_a_multipart(box: Path) -> None:
    s = Script(box).login()
    s.say(b"s EXAMINE INBOX")
    out = s.say(b"f FETCH 1 ENVELOPE")
    assert out.startswith(b'* 1 FETCH (ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "one" (("Andy" NIL "andy" '
                          b'"ouhk.example")) (("Andy" NIL "andy" "ouhk.example")) (("Andy" NIL "andy" '
                          b'"ouhk.example")) ((NIL NIL "betty" "stevenchoy.example")) NIL NIL NIL NIL))')
    out = s.say(b"f FETCH 2 BODYSTRUCTURE")
    assert out == (
        b'* 2 FETCH (BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 8 1 NIL NIL NIL NIL)'
        b'("application" "octet-stream" ("name" "x.bin") NIL NIL "base64" 4 NIL ("attachment" ("filename" "x.bin"))'
        b' NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 47 (NIL "inner" ((NIL NIL "c" "d.example")) '
        b'((NIL NIL "c" "d.example")) ((NIL NIL "c" "d.example")) NIL NIL NIL NIL NIL) ("text" "plain" '
        b'("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL) "mixed" ("boundary" "b")'
        b' NIL NIL NIL))\r\nf OK FETCH completed\r\n')
    assert s.say(b"g FETCH 2 BODY.PEEK[1]") == b"* 2 FETCH (BODY[1] {8}\r\npart one)\r\ng OK FETCH completed\r\n"
    header = s.say(b"h FETCH 2 BODY.PEEK[3.HEADER]")
    assert b"BODY[3.HEADER] {37}\r\nSubject: inner\r\nFrom: c@d.example\r\n\r\n)" in header
    assert b"{10}\r\ninner body)" in s.say(b"i FETCH 2 BODY.PEEK[3.TEXT]")
    assert b"BODY[2.MIME] {" in s.say(b"j FETCH 2 BODY.PEEK[2.MIME]")
    assert s.say(b"k FETCH 2 BODY.PEEK[HEADER.FIELDS.NOT (Content-Type MIME-Version)]") == (
        b"* 2 FETCH (BODY[HEADER.FIELDS.NOT (Content-Type MIME-Version)] {16}\r\nSubject: two\r\n\r\n)\r\n"
        b"k OK FETCH completed\r\n")
    assert s.say(b"l FETCH 2 BODY[9]") == b"* 2 FETCH (BODY[9] {0}\r\n)\r\nl OK FETCH completed\r\n"
    assert s.say(b"m FETCH 2 BODY[HEADER.FIELDS]") == b"m BAD invalid section in FETCH BODY[...]\r\n"


def test_store_search_expunge_renumber(box: Path) -> None:
    deliver(box, b"Subject: three\n\n3\n")
    s = Script(box).login()
    s.say(b"s SELECT INBOX")
    assert s.say(b"t STORE 1,3 +FLAGS (\\Deleted)") == (
        b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\n* 3 FETCH (FLAGS (\\Deleted \\Recent))\r\nt OK STORE completed\r\n")
    assert s.say(b"u SEARCH DELETED") == b"* SEARCH 1 3\r\nu OK SEARCH completed\r\n"
    assert s.say(b"v UID SEARCH SUBJECT two") == b"* SEARCH 2\r\nv OK SEARCH completed\r\n"
    assert s.say(b"w SEARCH OR SEEN NOT DELETED") == b"* SEARCH 2\r\nw OK SEARCH completed\r\n"
    assert s.say(b"x EXPUNGE") == b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\nx OK EXPUNGE completed\r\n"
    assert s.say(b"y FETCH 1 UID") == b"* 1 FETCH (UID 2)\r\ny OK FETCH completed\r\n"
    assert len(Maildir(box).keys()) == 1


def test_examine_changes_nothing(box: Path) -> None:
    s = Script(box).login()
    assert b"[READ-ONLY]" in s.say(b"e EXAMINE INBOX")
    s.say(b"f FETCH 1 BODY[]")
    assert s.say(b"g STORE 1 +FLAGS (\\Seen)").startswith(b"g NO [READ-ONLY]")
    assert all(":2,S" not in p.name for sub in ("new", "cur") for p in (box / sub).iterdir())


def test_other_sessions_changes_arrive_at_the_next_command(box: Path) -> None:
    one, two = Script(box).login(), Script(box).login()
    one.say(b"s SELECT INBOX")
    two.say(b"s SELECT INBOX")
    deliver(box, b"Subject: new\n\nnew\n")
    one.say(b"t STORE 1 +FLAGS (\\Deleted)")
    one.say(b"u EXPUNGE")
    out = two.say(b"n NOOP")
    assert out == b"* 1 EXPUNGE\r\n* 2 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n"
    held = Script(box).login()
    held.say(b"s SELECT INBOX")
    one.say(b"v STORE 1 +FLAGS (\\Deleted)")
    one.say(b"w EXPUNGE")
    # §7.4.1: no EXPUNGE during FETCH by number; the gone message is answered EXPUNGEISSUED.
    assert held.say(b"f FETCH 1 BODY.PEEK[]") == (
        b"f NO [EXPUNGEISSUED] some of the messages were expunged meanwhile\r\n")
    assert held.say(b"g NOOP") == b"* 1 EXPUNGE\r\ng OK NOOP completed\r\n"


def test_idle_reports_new_mail_on_poll_and_ends_with_done(box: Path) -> None:
    s = Script(box).login()
    s.say(b"s SELECT INBOX")
    actions = s.session.receive_data(b"i IDLE\r\n")
    assert sent(actions) == b"+ idling\r\n" and any(isinstance(a, Poll) for a in actions)
    assert s.session.poll() == []
    deliver(box, b"Subject: three\n\n3\n")
    assert sent(s.session.poll()) == b"* 3 EXISTS\r\n* 3 RECENT\r\n"
    actions = s.session.receive_data(b"DONE\r\n")
    assert isinstance(actions[0], StopPolling) and sent(actions) == b"i OK IDLE terminated\r\n"


def test_wrong_password_waits_longer_each_time_then_bye(box: Path) -> None:
    s = Script(box, Limits(auth_delay_first=1.0, auth_delay_max=4.0, max_auth_failures=3))
    waits = []
    for n in range(3):
        actions = s.session.receive_data(b"a%d LOGIN betty wrong\r\n" % n)
        waits += [a.seconds for a in actions if isinstance(a, Wait)]
        assert b"a%d NO [AUTHENTICATIONFAILED] Authentication failed\r\n" % n in sent(actions)
    assert waits == [1.0, 2.0, 4.0]
    assert isinstance(actions[-1], Close) and b"* BYE" in sent(actions)


def test_authenticate_plain_with_and_without_initial_response(box: Path) -> None:
    token = base64.b64encode(f"\0betty\0{PASSWORD}".encode())
    s = Script(box)
    assert s.say(b"a AUTHENTICATE PLAIN " + token).startswith(b"a OK [CAPABILITY")
    s = Script(box)
    assert s.say(b"b AUTHENTICATE PLAIN") == b"+ \r\n"
    assert s.say(token).startswith(b"b OK")
    s = Script(box)
    s.say(b"c AUTHENTICATE PLAIN")
    assert s.say(b"*") == b"c BAD AUTHENTICATE cancelled\r\n"


def test_folders_create_list_status_rename_delete_subscribe(box: Path) -> None:
    s = Script(box).login()
    assert s.say(b"c CREATE Lists.lab") == b"c OK CREATE completed\r\n"
    assert s.say(b"c CREATE Lists.lab").startswith(b"c NO [ALREADYEXISTS]")
    assert (box / ".Lists.lab" / "maildirfolder").exists()
    assert s.say(b'l LIST "" *') == (b'* LIST (\\HasNoChildren) "." "INBOX"\r\n'
                                    b'* LIST (\\Noselect \\HasChildren) "." "Lists"\r\n'
                                    b'* LIST (\\HasNoChildren) "." "Lists.lab"\r\nl OK LIST completed\r\n')
    assert s.say(b'l LIST "" %') == (b'* LIST (\\HasNoChildren) "." "INBOX"\r\n'
                                    b'* LIST (\\Noselect \\HasChildren) "." "Lists"\r\nl OK LIST completed\r\n')
    assert re.fullmatch(rb'\* STATUS "Lists.lab" \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+\)\r\nt OK STATUS completed\r\n',
                        s.say(b"t STATUS Lists.lab (MESSAGES UIDNEXT UIDVALIDITY)"))
    assert s.say(b"r RENAME Lists.lab Old") == b"r OK RENAME completed\r\n"
    assert s.say(b"u SUBSCRIBE Old") == b"u OK SUBSCRIBE completed\r\n"
    assert s.say(b'v LSUB "" *') == b'* LSUB () "." "Old"\r\nv OK LSUB completed\r\n'
    assert s.say(b"d DELETE Old") == b"d OK DELETE completed\r\n"
    assert s.say(b"d DELETE INBOX").startswith(b"d NO")
    assert s.say(b"e SELECT Old").startswith(b"e NO [NONEXISTENT]")


def test_append_with_literal_plus_and_uidplus(box: Path) -> None:
    s = Script(box).login()
    message = b"Subject: appended\r\n\r\nbody\r\n"
    out = sent(s.session.receive_data(b'p APPEND INBOX (\\Seen \\Draft) "01-Feb-2024 10:00:00 +0100" {%d+}\r\n%s\r\n'
                                      % (len(message), message)))
    assert re.fullmatch(rb"p OK \[APPENDUID \d+ 3\] APPEND completed\r\n", out), out
    assert sent(s.session.receive_data(b"q APPEND Nowhere {3}\r\n")) == b"+ Ready for literal data\r\n"
    assert s.say(b"abc").startswith(b"q NO [TRYCREATE]")
    s.say(b"s EXAMINE INBOX")
    assert s.say(b"f FETCH 3 (FLAGS INTERNALDATE)") == (
        b'* 3 FETCH (FLAGS (\\Seen \\Draft) INTERNALDATE "01-Feb-2024 09:00:00 +0000")\r\nf OK FETCH completed\r\n')


@pytest.mark.parametrize("message", [b"Subject: no line end\r\n\r\nlast line", b"Subject: x\r\n\r\nbare\rcr\r\n"])
def test_an_appended_message_comes_back_octet_for_octet(box: Path, message: bytes) -> None:
    """BODY[] is the message as APPENDed, in CRLF form, with nothing added: as Dovecot serves it
    from the same Maildir (its W= in the name counts no final CRLF either)."""
    s = Script(box).login()
    before = set((box / "cur").iterdir()) | set((box / "new").iterdir())
    assert s.say(b"p APPEND INBOX {%d+}\r\n%s" % (len(message), message)).startswith(b"p OK [APPENDUID")
    (stored,) = set((box / "cur").iterdir()) - before
    assert ",W=" not in stored.name or f",W={len(message)}" in stored.name
    s.say(b"s SELECT INBOX")
    size = len(message)
    assert s.say(b"f FETCH 3 (RFC822.SIZE BODY.PEEK[])") == (
        b"* 3 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (size, size, message))


def test_copy_move_give_copyuid_and_expunges(box: Path) -> None:
    s = Script(box).login()
    s.say(b"c CREATE Sent")
    s.say(b"s SELECT INBOX")
    assert re.fullmatch(rb"c OK \[COPYUID \d+ 1:2 1:2\] COPY completed\r\n", s.say(b"c COPY 1:* Sent"))
    out = s.say(b"m UID MOVE 2 Sent")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 2 3\] Moved\r\n\* 2 EXPUNGE\r\nm OK MOVE completed\r\n", out), out
    assert s.say(b"n COPY 1 Nowhere").startswith(b"n NO [TRYCREATE]")


def test_a_copy_of_many_lists_the_target_once_and_gives_their_uids_in_order(
        box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """COPY stores each message as it reads it, then one listing gives all their UIDs: it listed
    the target folder once per message (1,000 copies into a big folder, 1,000 listings)."""
    for n in range(40):
        deliver(box, b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))
    s = Script(box).login()
    s.say(b"c CREATE Sent")
    s.say(b"s SELECT INBOX")
    listings: list[Path] = []
    real = Folder.messages

    def counted(self: Folder, **kw: Any) -> Any:
        listings.append(self.path)
        return real(self, **kw)

    monkeypatch.setattr(Folder, "messages", counted)
    out = s.say(b"c COPY 1:* Sent")
    assert re.fullmatch(rb"c OK \[COPYUID \d+ 1:42 1:42\] COPY completed\r\n", out), out
    assert sum(1 for p in listings if p.name.endswith("Sent")) == 1, listings
    monkeypatch.undo()
    s.say(b"t SELECT Sent")
    fetched = s.say(b"f UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = re.findall(rb"Subject: (\S+)", fetched)
    assert len(subjects) == 42 and subjects[2:] == [b"m%d" % n for n in range(40)], subjects  # in UID order


def test_bad_commands_are_bad_and_a_run_of_them_ends_the_session(box: Path) -> None:
    s = Script(box)
    assert s.say(b"t1 FROB") == b"t1 BAD unknown command\r\n"
    assert s.say(b"+bad") == b"* BAD missing or invalid tag\r\n"
    assert s.say(b"t3 LOGIN") == b"t3 BAD wrong number of arguments for LOGIN\r\n"
    for n in range(MAX_BAD_COMMANDS - 4):
        assert s.say(b"t%d FROB" % n).endswith(b"BAD unknown command\r\n")
    actions = s.session.receive_data(b"last FROB\r\n")
    assert sent(actions) == b"last BAD unknown command\r\n* BYE Too many invalid commands, closing connection\r\n"
    assert isinstance(actions[-1], Close) and s.session.closed


def test_logout_and_garbage_never_leak_python(box: Path) -> None:
    s = Script(box).login()
    s.say(b"s SELECT INBOX")
    for line in (b"a FETCH 1:x FLAGS", b"b FETCH 99 FLAGS", b"c STORE 1 FLAGS (\\Bogus)", b"d SEARCH BEFORE 1-Foo-2000",
                 b"e UID FROB", b"f FETCH 1 (BODY[1.2.3.4.5.6.7.8.9]<0.1>)", b'g SEARCH HEADER "X" ""', b"h COPY"):
        out = s.say(line)
        last = out.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        assert last.startswith(line.split()[0] + b" ") and b"Traceback" not in out and b"Error" not in out, out
    assert s.say(b"z LOGOUT") == b"* BYE IMAP4rev1 server logging out\r\nz OK LOGOUT completed\r\n"


def test_sessions_sharing_the_listings_see_each_others_changes(box: Path) -> None:
    """The server's sessions share each folder's listing: one session's changes, and another
    process's delivery, still reach the other session at its next command."""
    shared: dict[Path, Folder] = {}
    a, b = Script(box, folders=shared).login(), Script(box, folders=shared).login()
    a.say(b"s SELECT INBOX")
    assert a.say(b"f STORE 1 +FLAGS.SILENT (\\Flagged)") == b"f OK STORE completed\r\n"
    b.say(b"s SELECT INBOX")
    assert b.say(b"f FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Flagged))\r\nf OK FETCH completed\r\n"
    deliver(box, b"Subject: three\n\nthird\n")
    assert b.say(b"n NOOP") == b"* 3 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n"
    a.say(b"d STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert b"* 2 EXPUNGE\r\n" in a.say(b"e EXPUNGE")
    assert b.say(b"n NOOP") == b"* 2 EXPUNGE\r\nn OK NOOP completed\r\n"
    assert b.say(b"f FETCH 1:* UID") == b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 3)\r\nf OK FETCH completed\r\n"


def test_envelope_shows_address_groups(tmp_path: Path) -> None:
    """RFC 3501 §7.4.2: a group is a start marker (its name in the mailbox field, host NIL), its
    members, and an end marker (all NIL); "undisclosed-recipients:;" is an empty group, not NIL."""
    root = tmp_path / "betty"
    deliver(root, b'From: a@b.example\nTo: Friends: c@d.example, "E, F" <e@f.example>;, g@h.example\n'
                  b"Cc: undisclosed-recipients:;\nSubject: groups\n\nbody\n")
    s = Script(root).login()
    s.say(b"s SELECT INBOX")
    out = s.say(b"f FETCH 1 ENVELOPE")
    assert (b'((NIL NIL "Friends" NIL)(NIL NIL "c" "d.example")("E, F" NIL "e" "f.example")(NIL NIL NIL NIL)'
            b'(NIL NIL "g" "h.example")) ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL') in out, out


def test_a_listing_taken_while_the_folder_was_changing_is_not_trusted_later(
        box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery in the same mtime tick as a listing leaves the directory's mtime as it was: a
    listing taken while the folder was "dirty" must be taken again later, even when no session
    looked while it was dirty."""
    from services.imap import store

    folder = Mailboxes(box).folder("INBOX")
    assert len(folder.messages()) == 2  # just delivered: new/ is dirty
    new = box / "new"
    before = new.stat()
    deliver(box, b"Subject: same tick\n\nthree\n")
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))  # as if in the same tick
    monkeypatch.setattr(store, "DIRTY_WINDOW", 0.0)  # later: nothing is recent any more
    assert len(folder.messages()) == 3


class _CountedEntry:
    """A directory entry that notes each stat(2) made through it."""

    def __init__(self, entry: os.DirEntry[str], seen: list[str]) -> None:
        self._entry, self._seen = entry, seen

    def __getattr__(self, name: str) -> object:
        return getattr(self._entry, name)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        self._seen.append(self._entry.path)
        return self._entry.stat(follow_symlinks=follow_symlinks)


def _count_message_stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The message files stat(2)ed from now on, through os.stat or a listing's entries."""
    seen: list[str] = []
    real_stat, real_scandir = os.stat, os.scandir

    def stat(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> os.stat_result:
        if os.path.basename(os.path.dirname(os.fspath(path))) in ("new", "cur"):
            seen.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    class Listing(list[_CountedEntry]):  # what os.scandir gives: iterable, and a context manager
        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    def scandir(path: str | os.PathLike[str]) -> Listing:
        with real_scandir(path) as entries:
            return Listing(_CountedEntry(e, seen) for e in entries)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    return seen


def test_select_reads_names_alone_and_internal_dates_come_when_asked(box: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SELECT lists the directories and stats no message file (a folder of 10,000 paid 10,000
    stat(2) calls for dates no SELECT shows); INTERNALDATE, SEARCH by date and COPY still give
    the file's mtime, looked up once, and a message gone meanwhile is EXPUNGEISSUED."""
    for i in range(20):
        deliver(box, b"Subject: more %d\n\nbody\n" % i)
    s = Script(box).login()
    seen = _count_message_stats(monkeypatch)
    assert b"* 22 EXISTS\r\n" in s.say(b"s SELECT INBOX")
    assert seen == []
    jan = 1_704_103_200  # 2024-01-01 10:00:00 UTC
    for path in (box / "cur").iterdir():
        os.utime(path, (jan, jan))
    out = s.say(b"f FETCH 1:2 INTERNALDATE")
    assert out == (b'* 1 FETCH (INTERNALDATE "01-Jan-2024 10:00:00 +0000")\r\n'
                   b'* 2 FETCH (INTERNALDATE "01-Jan-2024 10:00:00 +0000")\r\nf OK FETCH completed\r\n')
    assert len(seen) == 2
    s.say(b"g FETCH 1:2 INTERNALDATE")
    assert len(seen) == 2  # kept: a file's mtime does not change with its flags
    # Message 22's file removed behind the session's back before its date was ever looked up.
    uid_22 = s.say(b"k FETCH 22 UID").split(b"UID ")[1].split(b")")[0].decode()
    key = next(line.split(" :", 1)[1] for line in (box / UIDLIST).read_text().splitlines()[1:]
               if line.split(" ", 1)[0] == uid_22)
    next(p for p in (box / "cur").iterdir() if p.name.startswith(key)).unlink()
    assert s.say(b"l FETCH 22 INTERNALDATE") == (
        b"l NO [EXPUNGEISSUED] some of the messages were expunged meanwhile\r\n")
    # SEARCH looks up every date it needs; message 22, still in the view, matches nothing.
    assert s.say(b"h SEARCH SINCE 1-Jan-2024 BEFORE 2-Jan-2024") == (
        b"* SEARCH " + b" ".join(b"%d" % n for n in range(1, 22)) + b"\r\nh OK SEARCH completed\r\n")
    assert s.say(b"i SEARCH BEFORE 1-Jan-2024") == b"* SEARCH\r\ni OK SEARCH completed\r\n"
    s.say(b"c CREATE Kept")
    assert s.say(b"j COPY 1 Kept").startswith(b"j OK [COPYUID ")
    [copy] = (box / ".Kept" / "cur").iterdir()
    assert copy.stat().st_mtime == jan


def test_views_share_a_listing_until_one_of_them_changes(box: Path) -> None:
    """Sessions' views of one listing are the folder's own objects (a SELECT copies nothing): a
    change in one view is copied out first, so the other still sees it as news at its next
    command. A SELECT says everything once: the command after it has nothing to add."""
    shared: dict[Path, Folder] = {}
    a, b = Script(box, folders=shared).login(), Script(box, folders=shared).login()
    assert b"* 2 RECENT\r\n" in a.say(b"s SELECT INBOX")  # claims new/ into cur/: cur/ is "dirty"
    assert a.say(b"n NOOP") == b"n OK NOOP completed\r\n"
    assert b"* 0 RECENT\r\n" in b.say(b"s SELECT INBOX")
    assert a.say(b"t STORE 1 +FLAGS.SILENT (\\Flagged)") == b"t OK STORE completed\r\n"
    assert b.say(b"n NOOP") == b"* 1 FETCH (FLAGS (\\Flagged))\r\nn OK NOOP completed\r\n"
    assert b.say(b"f FETCH 2 BODY[HEADER.FIELDS (Subject)]") == (
        b"* 2 FETCH (BODY[HEADER.FIELDS (Subject)] {16}\r\nSubject: two\r\n\r\n FLAGS (\\Seen))\r\n"
        b"f OK FETCH completed\r\n")
    assert a.say(b"n NOOP") == b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\nn OK NOOP completed\r\n"
    assert b.say(b"g FETCH 1:2 FLAGS") == (b"* 1 FETCH (FLAGS (\\Flagged))\r\n* 2 FETCH (FLAGS (\\Seen))\r\n"
                                           b"g OK FETCH completed\r\n")


def test_the_uid_list_is_read_again_when_another_writer_changed_it(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list is parsed only when its file changed (inode, mtime, size), and then in full:
    Dovecot appends to it in place, with fields between the UID and the name; a line we cannot
    read is skipped, not taken for a message."""
    from services.imap import store

    monkeypatch.setattr(store, "DIRTY_WINDOW", 0.0)  # the file's identity alone decides
    folder = Mailboxes(box).folder("INBOX")
    assert [m.uid for m in folder.messages()] == [1, 2]
    key = deliver(box, b"Subject: three\n\nthree\n")
    with open(box / UIDLIST, "a") as f:  # as Dovecot appends: same inode
        f.write(f"7 G0123456789abcdef :{key}\r\nnot a line\n")
    assert [m.uid for m in folder.messages()] == [1, 2, 7]
    assert folder.uidnext == 8
    assert [m.key for m in folder.messages()][-1] == key


def test_names_without_a_time_get_uids_in_mtime_order(tmp_path: Path) -> None:
    """UIDs go in delivery order: from the name where it tells, else the file's mtime (the one
    stat(2) a listing still makes, for such a name only)."""
    root = tmp_path / "betty"
    ours = deliver(root, b"Subject: ours\n\nx\n")
    for name, mtime in (("zzz-late", 4_000_000_000), ("aaa-early", 1_000_000_000)):
        (root / "new" / name).write_bytes(b"Subject: foreign\n\nx\n")
        os.utime(root / "new" / name, (mtime, mtime))
    folder = Mailboxes(root).folder("INBOX")
    assert [(m.uid, m.key) for m in folder.messages()] == [(1, "aaa-early"), (2, ours), (3, "zzz-late")]


def test_a_listing_pauses_garbage_collection_and_always_resumes_it(box: Path) -> None:
    """No cyclic collection while a listing is built (each walked the whole server's heap), and
    the collector is on again after it, also when the listing fails; off stays off."""
    import gc

    from services.imap.store import StoreError

    folder = Mailboxes(box).folder("INBOX")
    seen: list[bool] = []
    real_scan = folder._scan

    def scan() -> dict[str, tuple[str, str, bool]]:
        seen.append(gc.isenabled())
        return real_scan()

    folder._scan = scan  # type: ignore[method-assign]
    assert gc.isenabled()
    assert len(folder.messages()) == 2
    assert seen == [False] and gc.isenabled()
    (box / "cur").rename(box / "cur.away")
    with pytest.raises(StoreError):
        folder.messages()
    assert gc.isenabled()
    (box / "cur.away").rename(box / "cur")
    gc.disable()
    try:
        folder.messages()
        assert not gc.isenabled()
    finally:
        gc.enable()
