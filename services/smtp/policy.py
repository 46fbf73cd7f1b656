"""What the lab's SMTP servers accept: MAIL and RCPT arguments, and who may send to whom.

Pure functions of strings and the lab configuration; the servers (:mod:`services.smtp.server`)
call them and put the :class:`Reply` on the wire. Every parse ends in a decision, never an
exception: a peer's garbage is an answer (``501``/``553``), not a traceback.

Paths follow RFC 5321 §4.1.2 strictly, with two liberties a student typing by hand needs (the
reference article's ``MAIL FROM: andy@ouhk.example``): a space after the colon, and a bare
mailbox without angle brackets. A source route (``<@relay:user@domain>``) is accepted and
ignored (§4.1.1.3, Appendix C).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from services.config import POSTMASTER, LabConfig
from services.smtp.wire import Reply

# RFC 5321 §4.5.3.1: the sizes every server must accept; longer ones it may refuse.
LOCAL_PART_LIMIT = 64  # §4.5.3.1.1
DOMAIN_LIMIT = 255  # §4.5.3.1.2
PATH_LIMIT = 256  # §4.5.3.1.3, the angle brackets included

# §4.1.2 and RFC 5322 §3.2.3: the characters of an Atom, and a dot-string built of atoms.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# §4.1.2: Quoted-string = DQUOTE *(qtextSMTP / quoted-pairSMTP) DQUOTE
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LOCAL_PART = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED_STRING})")
# §4.1.2: sub-domain = Let-dig [Ldh-str]; Ldh-str ends in a letter or digit.
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*")
# §4.1.3: General-address-literal = Standardized-tag ":" 1*dcontent
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
# §4.1.2: A-d-l = At-domain *( "," At-domain ), At-domain = "@" Domain
_SOURCE_ROUTE = re.compile(rf"@{_DOMAIN.pattern}(?:,@{_DOMAIN.pattern})*:")
# §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 / %d62-126)
_ESMTP_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")

BODY_TYPES = ("7BIT", "8BITMIME")  # RFC 6152 §2: the BODY values an 8BITMIME server takes


@dataclass(frozen=True)
class Mailbox:
    local: str  # as written, quotes included: the local part is the receiving host's business
    domain: str  # a domain name or an address literal ("[10.89.0.10]"), as written

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class EnvelopePath:
    """The argument of MAIL FROM or RCPT TO, parsed."""

    mailbox: Mailbox | None  # None: the null reverse-path <> (bounces, RFC 5321 §4.5.5)
    bracketed: bool  # written as <...>; replies echo the address the way the client wrote it
    params: dict[str, str | None] = field(default_factory=dict)  # ESMTP parameters, keys upper-cased

    @property
    def address(self) -> str:
        """``user@domain``, or ``""`` for the null reverse-path."""
        return "" if self.mailbox is None else str(self.mailbox)

    @property
    def echo(self) -> str:
        """The address for a reply line, as sendmail shows it: ``<a@b>`` or ``a@b``, and ``<>``."""
        return f"<{self.address}>" if self.bracketed or self.mailbox is None else self.address


# -- syntax ------------------------------------------------------------------------------------


def is_domain(text: str) -> bool:
    """A domain name by RFC 5321 §4.1.2 (no trailing dot), within §4.5.3.1.2's length."""
    return len(text) <= DOMAIN_LIMIT and _DOMAIN.fullmatch(text) is not None


def is_address_literal(text: str) -> bool:
    """``[IPv4]``, ``[IPv6:...]`` or ``[tag:content]`` (RFC 5321 §4.1.3)."""
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    inner = text[1:-1]
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    if ":" in inner:
        return _GENERAL_LITERAL.fullmatch(inner) is not None
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def parse_mailbox(text: str) -> Mailbox | None:
    """``Local-part "@" ( Domain / address-literal )`` (RFC 5321 §4.1.2), or None."""
    local, at, domain = text.rpartition("@")
    if not at or len(local) > LOCAL_PART_LIMIT or _LOCAL_PART.fullmatch(local) is None:
        return None
    if not (is_domain(domain) or is_address_literal(domain)):
        return None
    return Mailbox(local, domain)


def _split_path(rest: str) -> tuple[str, str] | None:
    """Cut ``<path> params`` (or ``mailbox params``) into the path and the rest."""
    if not rest.startswith("<"):
        path, _, tail = rest.partition(" ")
        return path, tail
    quoted = escaped = False
    for i, ch in enumerate(rest):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return rest[: i + 1], rest[i + 1 :]
    return None  # no closing bracket


def _parse_params(text: str) -> dict[str, str | None] | None:
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue  # RFC 5321 asks for single spaces; several are harmless
        m = _ESMTP_PARAM.fullmatch(word)
        if m is None or m.group(1).upper() in params:
            return None
        params[m.group(1).upper()] = m.group(2)
    return params


@dataclass(frozen=True)
class _Command:
    keyword: str  # "FROM:" or "TO:"
    usage: str  # the syntax line of a 501
    bad_address: Reply  # an address that does not parse
    no_domain: Reply  # a mailbox name without a domain ("betty")


_MAIL = _Command(
    "FROM:",
    "MAIL FROM:<address>",
    # RFC 3463: X.1.7 is the sender's bad address syntax, X.1.3 the recipient's.
    Reply(501, "5.1.7", "Bad sender address syntax"),
    Reply(553, "5.1.7", "Domain name required for sender address"),
)
_RCPT = _Command(
    "TO:",
    "RCPT TO:<address>",
    Reply(501, "5.1.3", "Bad recipient address syntax"),
    Reply(553, "5.1.3", "Domain name required for recipient address"),
)


def _parse(command: _Command, arg: str | None, *, null_ok: bool, postmaster: str | None = None) -> EnvelopePath | Reply:
    usage = Reply(501, "5.5.4", f"Syntax: {command.usage}")
    if arg is None or arg[: len(command.keyword)].upper() != command.keyword:
        return usage
    rest = arg[len(command.keyword) :].lstrip(" ")  # "MAIL FROM: andy@..." (the article's way)
    split = _split_path(rest)
    if split is None or not split[0]:
        return command.bad_address if rest else usage
    written, tail = split
    bracketed = written.startswith("<")
    if len(written) + (0 if bracketed else 2) > PATH_LIMIT:
        return Reply(501, command.bad_address.status, "Path too long")
    inner = written[1:-1] if bracketed else written
    if bracketed and inner == "":
        if not null_ok:
            return command.bad_address
        mailbox = None
    else:
        route = _SOURCE_ROUTE.match(inner) if bracketed else None
        address = inner[route.end() :] if route else inner
        mailbox = parse_mailbox(address)
        if mailbox is None and postmaster is not None and address.lower() == POSTMASTER:
            # RFC 5321 §4.5.1: "RCPT TO:<Postmaster>", with no domain, MUST be accepted.
            mailbox = parse_mailbox(postmaster)
        if mailbox is None:
            if "@" not in address and _LOCAL_PART.fullmatch(address):
                return Reply(command.no_domain.code, command.no_domain.status,
                             f"{written}... {command.no_domain.text}")
            return command.bad_address
    params = _parse_params(tail)
    if params is None:
        return Reply(501, "5.5.4", f"Bad parameter syntax; {usage.text}")
    return EnvelopePath(mailbox, bracketed, params)


def parse_mail(arg: str | None, *, size_limit: int, esmtp: bool) -> EnvelopePath | Reply:
    """The argument of MAIL (``FROM:<a@b> SIZE=123``): the reverse-path, or the reply refusing it.

    ``esmtp``: the client said EHLO, so the parameters of the extensions it was offered count
    (SIZE, RFC 1870; BODY, RFC 6152); after HELO, or no greeting at all, none do.
    """
    path = _parse(_MAIL, arg, null_ok=True)
    if isinstance(path, Reply):
        return path
    params = dict(path.params)
    if params and not esmtp:
        return Reply(555, "5.5.4", "MAIL FROM parameters need EHLO")
    size = params.pop("SIZE", "")
    if size is None or (size and not (size.isascii() and size.isdigit())):
        return Reply(501, "5.5.4", "SIZE needs a number of octets")
    if size and int(size) > size_limit:
        return Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")  # RFC 1870 §6.1
    if "BODY" in params and (params.pop("BODY") or "").upper() not in BODY_TYPES:
        return Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
    if params:
        return Reply(555, "5.5.4", f"MAIL FROM parameter {next(iter(params))} not recognized or not implemented")
    return path


def parse_rcpt(arg: str | None, *, postmaster: str | None = None) -> EnvelopePath | Reply:
    """The argument of RCPT (``TO:<a@b>``): the forward-path, or the reply refusing it.

    ``postmaster``: the address ``TO:<Postmaster>`` (without a domain) stands for on this host.
    """
    path = _parse(_RCPT, arg, null_ok=False, postmaster=postmaster)
    if isinstance(path, Reply):
        return path
    if path.params:  # no extension offered here defines RCPT parameters
        return Reply(555, "5.5.4", f"RCPT TO parameter {next(iter(path.params))} not recognized or not implemented")
    return path


# -- decisions ---------------------------------------------------------------------------------


def sender_ok(sender: EnvelopePath) -> Reply:
    return Reply(250, "2.1.0", f"{sender.echo}... Sender ok")


def submission_sender(sender: EnvelopePath, *, authenticated: bool, relay_client: bool) -> Reply:
    """MAIL on the submission port (RFC 6409 §4.3): AUTH first, unless the client is on our LAN."""
    if authenticated or relay_client:
        return sender_ok(sender)
    return Reply(530, "5.7.0", "Authentication required")


def is_local(cfg: LabConfig, domain: str) -> bool:
    """Are the mailboxes of ``domain`` on this host?"""
    d = cfg.domain(domain)
    return d is not None and d.mail_host == cfg.me


def recipient(cfg: LabConfig, rcpt: EnvelopePath, *, relay: bool) -> Reply:
    """RCPT: our own domains' existing users always; other domains only when ``relay`` is allowed.

    ``relay`` is False on the recipient MX, so it is no open relay; on the MTA it is True for
    its own clients (its LAN, or after AUTH). RFC 5321 §3.9 and §7.1 explain why an open relay is a spammer's gift.
    """
    if rcpt.mailbox is None:  # parse_rcpt refuses <>; a decision all the same
        return _RCPT.bad_address
    address = str(rcpt.mailbox)
    known = cfg.account(cfg.mailbox_owner(address)) is not None  # postmaster@ our domains too
    if is_local(cfg, rcpt.mailbox.domain):
        if not known:
            return Reply(550, "5.1.1", f"{rcpt.echo}... User unknown")
        return Reply(250, "2.1.5", f"{rcpt.echo}... Recipient ok")
    if relay:
        return Reply(250, "2.1.5", f"{rcpt.echo}... Recipient ok")
    if cfg.is_backup_mx(rcpt.mailbox.domain):
        # A backup MX knows the domain's accounts: refusing an unknown user now, rather than
        # bouncing it later, sends no bounce to a forged sender (backscatter).
        if not known:
            return Reply(550, "5.1.1", f"{rcpt.echo}... User unknown")
        return Reply(250, "2.1.5", f"{rcpt.echo}... Recipient ok (backup MX, will relay)")
    return Reply(550, "5.7.1", f"{rcpt.echo}... Relaying denied")
