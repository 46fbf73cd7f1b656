"""What the SMTP servers accept: MAIL/RCPT argument parsing and the relay decisions, without a socket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.config import LabConfig
from services.smtp import policy
from services.smtp.mta import MtaHandler
from services.smtp.mx import MxHandler
from services.smtp.policy import Mailbox, parse_mail, parse_rcpt
from services.smtp.session import Client
from services.smtp.spool import Spool
from services.smtp.wire import Reply
from tests.labconfig import lab_config

SIZE = 1000


MX = lab_config("mail")
MTA = lab_config("smtp")


def mail(arg: str | None, *, esmtp: bool = True) -> policy.EnvelopePath | Reply:
    return parse_mail(arg, size_limit=SIZE, esmtp=esmtp)


def path(result: policy.EnvelopePath | Reply) -> policy.EnvelopePath:
    assert isinstance(result, policy.EnvelopePath), result
    return result


def reply(result: policy.EnvelopePath | Reply) -> str:
    assert isinstance(result, Reply), result
    return str(result)


# -- MAIL FROM ---------------------------------------------------------------------------------


def test_the_article_s_hand_typed_mail_from() -> None:
    sender = path(mail("FROM: andy@ouhk.example", esmtp=False))
    assert sender.mailbox == Mailbox("andy", "ouhk.example")
    assert str(policy.sender_ok(sender)) == "250 2.1.0 andy@ouhk.example... Sender ok"


@pytest.mark.parametrize("arg", ["FROM:<andy@ouhk.example>", "from:<andy@ouhk.example>", "From: <andy@ouhk.example>"])
def test_mail_from_in_angle_brackets_is_echoed_with_them(arg: str) -> None:
    sender = path(mail(arg))
    assert sender.address == "andy@ouhk.example"
    assert str(policy.sender_ok(sender)) == "250 2.1.0 <andy@ouhk.example>... Sender ok"


def test_the_null_sender_is_accepted() -> None:
    sender = path(mail("FROM:<>"))
    assert sender.mailbox is None and sender.address == ""
    assert str(policy.sender_ok(sender)) == "250 2.1.0 <>... Sender ok"


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (None, "501 5.5.4 Syntax: MAIL FROM:<address>"),
        ("andy@ouhk.example", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        ("FROM", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        ("FROM:", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        ("FROM:<andy@ouhk.example", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<andy@@ouhk.example>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<an dy@ouhk.example>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<andy@-ouhk.example>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<andy@ouhk.example.>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<.andy@ouhk.example>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<andy(comment)@ouhk.example>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<andy@[999.1.1.1]>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<andy>", "553 5.1.7 <andy>... Domain name required for sender address"),
        ("FROM:andy", "553 5.1.7 andy... Domain name required for sender address"),
    ],
)
def test_malformed_mail_from(arg: str | None, expected: str) -> None:
    assert reply(mail(arg)) == expected


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ('FROM:<"john doe"@ouhk.example>', '"john doe"@ouhk.example'),
        ('FROM:<"a>b"@ouhk.example>', '"a>b"@ouhk.example'),
        ("FROM:<andy@[10.89.0.10]>", "andy@[10.89.0.10]"),
        ("FROM:<andy@[IPv6:fd00::10]>", "andy@[IPv6:fd00::10]"),
        ("FROM:<@relay.example,@other.example:andy@ouhk.example>", "andy@ouhk.example"),  # route ignored
        ("FROM:<first.last+tag@sub.ouhk.example>", "first.last+tag@sub.ouhk.example"),
    ],
)
def test_well_formed_unusual_senders(arg: str, address: str) -> None:
    assert path(mail(arg)).address == address


def test_rfc_5321_length_limits() -> None:
    assert path(mail(f"FROM:<{'a' * 64}@ouhk.example>")).mailbox is not None
    assert reply(mail(f"FROM:<{'a' * 65}@ouhk.example>")) == "501 5.1.7 Bad sender address syntax"
    domain = ".".join(["d" * 61] * 4) + ".example"  # 255 octets, a valid domain: the path is over 256
    assert reply(mail(f"FROM:<ab@{domain}>")) == "501 5.1.7 Path too long"


def test_mail_parameters_after_ehlo() -> None:
    assert path(mail("FROM:<andy@ouhk.example> SIZE=1000 BODY=8BITMIME")).params == {
        "SIZE": "1000", "BODY": "8BITMIME"}
    assert path(mail("FROM:<andy@ouhk.example> body=7bit")).address == "andy@ouhk.example"
    assert reply(mail("FROM:<andy@ouhk.example> SIZE=1001")) == (
        "552 5.3.4 Message size exceeds fixed maximum message size")
    assert reply(mail("FROM:<andy@ouhk.example> SIZE=lots")) == "501 5.5.4 SIZE needs a number of octets"
    assert reply(mail("FROM:<andy@ouhk.example> SIZE")) == "501 5.5.4 SIZE needs a number of octets"
    assert reply(mail("FROM:<andy@ouhk.example> BODY=BINARYMIME")) == "501 5.5.4 BODY must be 7BIT or 8BITMIME"
    assert reply(mail("FROM:<andy@ouhk.example> SMTPUTF8")).startswith("555 5.5.4 MAIL FROM parameter SMTPUTF8")
    assert reply(mail("FROM:<andy@ouhk.example> SIZE=1 SIZE=2")).startswith("501 5.5.4 Bad parameter syntax")
    assert reply(mail("FROM:<andy@ouhk.example> =x")).startswith("501 5.5.4 Bad parameter syntax")


def test_mail_parameters_need_ehlo() -> None:
    assert reply(mail("FROM:<andy@ouhk.example> SIZE=10", esmtp=False)) == "555 5.5.4 MAIL FROM parameters need EHLO"


# -- RCPT TO -----------------------------------------------------------------------------------


def test_the_article_s_hand_typed_rcpt_to() -> None:
    rcpt = path(parse_rcpt("TO: betty@stevenchoy.example"))
    assert str(policy.recipient(MX, rcpt, relay=False)) == "250 2.1.5 betty@stevenchoy.example... Recipient ok"


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (None, "501 5.5.4 Syntax: RCPT TO:<address>"),
        ("betty@stevenchoy.example", "501 5.5.4 Syntax: RCPT TO:<address>"),
        ("TO:<>", "501 5.1.3 Bad recipient address syntax"),
        ("TO:<betty@stevenchoy..example>", "501 5.1.3 Bad recipient address syntax"),
        ("TO:<betty>", "553 5.1.3 <betty>... Domain name required for recipient address"),
        ("TO:<betty@stevenchoy.example> NOTIFY=NEVER",
         "555 5.5.4 RCPT TO parameter NOTIFY not recognized or not implemented"),
    ],
)
def test_malformed_rcpt_to(arg: str | None, expected: str) -> None:
    assert reply(parse_rcpt(arg)) == expected


@pytest.mark.parametrize(
    ("cfg", "rcpt", "relay", "expected"),
    [
        (MX, "<betty@stevenchoy.example>", False, "250 2.1.5 <betty@stevenchoy.example>... Recipient ok"),
        (MX, "<Betty@StevenChoy.EXAMPLE>", False, "250 2.1.5 <Betty@StevenChoy.EXAMPLE>... Recipient ok"),
        (MX, "<carol@stevenchoy.example>", False, "550 5.1.1 <carol@stevenchoy.example>... User unknown"),
        (MX, '<"betty"@stevenchoy.example>', False, '550 5.1.1 <"betty"@stevenchoy.example>... User unknown'),
        (MX, "<andy@ouhk.example>", False, "550 5.7.1 <andy@ouhk.example>... Relaying denied"),
        (MX, "<x@[10.89.0.110]>", False, "550 5.7.1 <x@[10.89.0.110]>... Relaying denied"),
        # the MTA: its own domain like the MX; other domains only when the client may relay
        (MTA, "<andy@ouhk.example>", False, "250 2.1.5 <andy@ouhk.example>... Recipient ok"),
        (MTA, "<nobody@ouhk.example>", True, "550 5.1.1 <nobody@ouhk.example>... User unknown"),
        (MTA, "<betty@stevenchoy.example>", False, "550 5.7.1 <betty@stevenchoy.example>... Relaying denied"),
        (MTA, "<betty@stevenchoy.example>", True, "250 2.1.5 <betty@stevenchoy.example>... Recipient ok"),
        (MTA, "<anyone@elsewhere.example>", True, "250 2.1.5 <anyone@elsewhere.example>... Recipient ok"),
    ],
)
def test_recipient_decisions(cfg: LabConfig, rcpt: str, relay: bool, expected: str) -> None:
    assert str(policy.recipient(cfg, path(parse_rcpt(f"TO:{rcpt}")), relay=relay)) == expected


@pytest.mark.parametrize("arg", ["TO:<Postmaster>", "TO:<postmaster>", "TO:POSTMASTER", "to:<PostMaster>"])
def test_postmaster_without_a_domain_is_this_host_s(arg: str) -> None:
    """RFC 5321 §4.5.1: RCPT TO:<Postmaster> MUST be accepted (it was 553 "Domain name required")."""
    assert path(parse_rcpt(arg, postmaster="postmaster@stevenchoy.example")).address == "postmaster@stevenchoy.example"
    assert reply(parse_rcpt(arg)).startswith("553 5.1.3")  # a host with no postmaster of its own
    assert reply(parse_rcpt("TO:<betty>", postmaster="postmaster@stevenchoy.example")).startswith("553 5.1.3")


def test_postmaster_of_every_lab_domain_is_its_first_user() -> None:
    assert (MX.postmaster, MTA.postmaster) == ("postmaster@stevenchoy.example", "postmaster@ouhk.example")
    assert MX.mailbox_owner("PostMaster@StevenChoy.Example") == "betty@stevenchoy.example"
    assert MX.mailbox_owner("betty@stevenchoy.example") == "betty@stevenchoy.example"
    assert MX.mailbox_owner("postmaster@elsewhere.example") == "postmaster@elsewhere.example"
    for cfg, rcpt in ((MX, "<Postmaster@stevenchoy.example>"), (MTA, "<postmaster@OUHK.example>")):
        assert str(policy.recipient(cfg, path(parse_rcpt(f"TO:{rcpt}")), relay=False)) == (
            f"250 2.1.5 {rcpt}... Recipient ok")


def test_a_backup_mx_takes_its_domain_s_known_users_from_anyone() -> None:
    from dataclasses import replace

    backup = replace(lab_config("smtp"), domains=tuple(
        replace(d, backup_mx=("smtp",)) if d.name == "stevenchoy.example" else d for d in MTA.domains))
    def decide(rcpt: str) -> str:
        return str(policy.recipient(backup, path(parse_rcpt(f"TO:{rcpt}")), relay=False))

    assert decide("<betty@stevenchoy.example>") == \
        "250 2.1.5 <betty@stevenchoy.example>... Recipient ok (backup MX, will relay)"
    assert decide("<carol@stevenchoy.example>") == "550 5.1.1 <carol@stevenchoy.example>... User unknown"
    assert decide("<x@elsewhere.example>") == "550 5.7.1 <x@elsewhere.example>... Relaying denied"
    assert MTA.is_backup_mx("stevenchoy.example") is False and backup.is_backup_mx("StevenChoy.example.")
    assert LabConfig.from_dict(json.loads(backup.to_json())) == backup


def test_submission_wants_auth_from_outside_the_lan() -> None:
    sender = path(mail("FROM:<andy@ouhk.example>"))
    assert policy.submission_sender(sender, authenticated=True, relay_client=False).code == 250
    assert policy.submission_sender(sender, authenticated=False, relay_client=True).code == 250
    assert str(policy.submission_sender(sender, authenticated=False, relay_client=False)) == (
        "530 5.7.0 Authentication required")


# -- the roles' rules, on the lab's real addresses --------------------------------------------------

ANDY = Client("10.89.0.10", "andy.ouhk.example", True, None)  # a MUA host: the MTA's LAN
THE_MX = Client("10.89.0.110", "mail.stevenchoy.example", True, None)  # "the Internet" to the MTA
ANDY_OUTSIDE = Client("192.0.2.7", "laptop.example", True, "andy@ouhk.example")  # authenticated


@pytest.fixture
def mta(tmp_path: Path) -> tuple[MtaHandler, MtaHandler]:
    spool = Spool(tmp_path)
    return (MtaHandler(MTA, spool, on_enqueued=lambda: None),
            MtaHandler(MTA, spool, on_enqueued=lambda: None, submission=True))


def test_the_mta_relays_for_its_lan_and_authenticated_users_only(mta: tuple[MtaHandler, MtaHandler]) -> None:
    smtp, submission = mta
    betty = path(parse_rcpt("TO:<betty@stevenchoy.example>"))
    andy = path(parse_rcpt("TO:<andy@ouhk.example>"))
    for handler in (smtp, submission):
        assert handler.check_recipient(ANDY, betty).code == 250
        assert handler.check_recipient(ANDY_OUTSIDE, betty).code == 250
        assert str(handler.check_recipient(THE_MX, betty)) == "550 5.7.1 <betty@stevenchoy.example>... Relaying denied"
        assert handler.check_recipient(THE_MX, andy).code == 250  # mail for its own users, from anyone


def test_the_mta_submission_port_wants_auth_before_mail_from_outside(mta: tuple[MtaHandler, MtaHandler]) -> None:
    smtp, submission = mta
    sender = path(mail("FROM:<andy@ouhk.example>"))
    assert smtp.check_sender(THE_MX, sender).code == 250
    assert submission.check_sender(ANDY, sender).code == 250
    assert submission.check_sender(ANDY_OUTSIDE, sender).code == 250
    assert str(submission.check_sender(THE_MX, sender)) == "530 5.7.0 Authentication required"


def test_the_mx_is_no_open_relay_even_for_authenticated_clients(tmp_path: Path) -> None:
    mx = MxHandler(MX, mail_root=tmp_path)
    betty = path(parse_rcpt("TO:<betty@stevenchoy.example>"))
    andy = path(parse_rcpt("TO:<andy@ouhk.example>"))
    for client in (ANDY, THE_MX, ANDY_OUTSIDE):
        assert mx.check_recipient(client, betty).code == 250
        assert mx.check_recipient(client, andy).code == 550
        assert mx.check_sender(client, path(mail("FROM:<>"))).code == 250


# -- fuzzing: every argument gets a decision, none an exception --------------------------------------

TOKENS = [*'abz09.-_+@<>[]:,"\\ =()', "IPv6:", "::1", "10.0.0.1", "SIZE=", "BODY=", "8BITMIME"]
PATHISH = st.lists(st.sampled_from(TOKENS), max_size=20).map("".join)
KEYWORD = st.sampled_from(["FROM:", "TO:", "from: ", "to:<"])
ARG = st.one_of(st.none(), st.text(max_size=80), st.builds(lambda k, p: k + p, KEYWORD, PATHISH))


@settings(max_examples=200, deadline=None)
@given(ARG, st.booleans())
def test_mail_always_decides(arg: str | None, esmtp: bool) -> None:
    result = parse_mail(arg, size_limit=SIZE, esmtp=esmtp)
    if isinstance(result, Reply):
        assert result.code in (501, 552, 553, 555) and result.status.startswith("5.")
    else:
        assert result.mailbox is None or policy.parse_mailbox(result.address) == result.mailbox
        assert str(policy.sender_ok(result)).startswith("250 2.1.0 ")


@settings(max_examples=200, deadline=None)
@given(ARG, st.booleans())
def test_rcpt_always_decides(arg: str | None, relay: bool) -> None:
    result = parse_rcpt(arg)
    if isinstance(result, Reply):
        assert result.code in (501, 553, 555)
        return
    assert result.mailbox is not None and policy.parse_mailbox(result.address) == result.mailbox
    for cfg in (MX, MTA):
        decision = policy.recipient(cfg, result, relay=relay)
        assert decision.code in (250, 550)
        assert "\r" not in str(decision) and "\n" not in str(decision)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_mailbox_parsing_never_raises(text: str) -> None:
    mailbox = policy.parse_mailbox(text)
    assert mailbox is None or (str(mailbox) == text and text.isascii())


def test_the_seal_is_the_lab_dns_zones() -> None:
    """What the MTA and the MUA call outside the lab is what the lab DNS does not serve (zonefiles)."""
    from labctl import topology, zonefiles

    assert MTA.zones == zonefiles.zone_names(topology.load()) == ["lab.example", "ouhk.example", "stevenchoy.example"]
    for inside in ("stevenchoy.example", "Mail.StevenChoy.Example.", "nowhere.lab.example", "[10.89.0.110]"):
        assert MTA.outside(inside) is None, inside
    assert MTA.outside("gmail.com") == (
        "gmail.com is outside the sealed lab: the lab DNS serves only lab.example, ouhk.example, stevenchoy.example "
        "(and answers REFUSED for any other name), and no mail leaves the lab")
    assert MTA.outside("stevenchoy.example.com") is not None
