"""The mail part of a topology (``x-maillab``): domains with their MX records and users, and the
MTA's retry schedule.

:func:`domain` reads one domain entry as a change to what the lab had (nothing, for the base file
and for a domain an overlay adds), so the base file, an overlay and a live DNS change read domains
the same way. Whether the hosts they name can do the job is checked afterwards, on the whole lab
(:mod:`labctl.topology.checks`).
"""

from __future__ import annotations

import re
from typing import Any

from labctl.topology.model import DomainSpec, HostSpec, MxRecord
from labctl.yamlreader import LABEL, Reader, describe
from labctl.yamlsource import PathKey
from services import config as svc

LAB_KEYS = ("domains", "retry", "tls", "placement")
DOMAIN_KEYS = ("mail_host", "mx", "users", "address", "records")
RETRY_KEYS = ("schedule", "give_up")
TLS_KEYS = ("auth", "relay")
# `tls: {auth: ...}`: where AUTH (and POP3/IMAP logins) are offered; `relay:` the MTA's STARTTLS to the MX.
TLS_AUTH = {"tls-only": True, "anywhere": False}
TLS_RELAY = ("may", "verify", "none")
LOCAL_PART = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")


def domain(r: Reader, raw_name: Any, value: Any, at: PathKey, old: DomainSpec | None,
           hosts: tuple[HostSpec, ...], keys: tuple[str, ...] = DOMAIN_KEYS) -> DomainSpec:
    """The domain entry at ``at`` applied to ``old``: ``mail_host``, ``mx`` and ``address``
    replace; ``users`` and ``records`` add. A new domain (``old`` None) needs a mail_host and
    gets the MX record ``10 <mail host>`` unless it says otherwise."""
    name = r.fqdn(raw_name, at, "domain")
    spec = r.mapping(value, at, keys, f"domain {name!r}", optional=True)
    if old is None and "mail_host" not in spec:
        choices = ", ".join(h.name for h in hosts if h.runs_smtp) or "none defined"
        raise r.fail(at, f"new domain {name!r} needs a mail_host (the host keeping its mailboxes): {choices}")
    mail_host = r.text(spec["mail_host"], at + ("mail_host",), "mail_host").strip() if "mail_host" in spec \
        else old.mail_host if old else ""
    if "mx" in spec or old is None:
        keeper = next((h for h in hosts if h.name == mail_host), None)
        # No such host: no default MX; the checks then report the mail_host itself.
        default = (MxRecord(10, keeper.fqdn),) if keeper else ()
        mx = mx_records(r, spec.get("mx"), at + ("mx",), default)
    else:
        mx = old.mx
    users = dict(old.users) if old else {}
    users.update(_users(r, spec.get("users"), at + ("users",)))
    address = old.address if old else None
    if "address" in spec:
        address = None if spec["address"] is None else r.text(spec["address"], at + ("address",), "address").strip()
    records = spec.get("records", [])
    if not isinstance(records, list) or not all(isinstance(x, str) for x in records):
        raise r.fail(at + ("records",), "records must be a list of zone-file lines")
    return DomainSpec(name, mail_host, mx, tuple(users.items()), address,
                      (old.records if old else ()) + tuple(records))


def mx_records(r: Reader, value: Any, at: PathKey, default: tuple[MxRecord, ...]) -> tuple[MxRecord, ...]:
    if value is None:
        return default
    if not isinstance(value, list):
        raise r.fail(at, 'mx must be a list like ["10 mail.example.example"], or [] for none')
    out: list[MxRecord] = []
    for i, item in enumerate(value):
        parts = str(item).split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) > 65535:
            raise r.fail(at + (i,), f"mx entry {item!r} must be 'PREFERENCE HOST', e.g. '10 mail.x.example'")
        host = parts[1]
        exchange = "." if host == "." else r.fqdn(host, at + (i,), "mx host")
        out.append(MxRecord(int(parts[0]), exchange))
    if any(x.exchange == "." for x in out) and len(out) > 1:
        raise r.fail(at, "a null MX ('0 .', RFC 7505) must be the domain's only MX record")
    return tuple(out)


def _users(r: Reader, value: Any, at: PathKey) -> tuple[tuple[str, str], ...]:
    users = r.mapping(value, at, None, "users", optional=True)
    out: list[tuple[str, str]] = []
    for user, password in users.items():
        if not LOCAL_PART.match(user):
            raise r.fail(at + (user,), f"user name {user!r}: use lower-case letters, digits, . _ + -")
        if not isinstance(password, str | int) or isinstance(password, bool) or str(password) == "":
            raise r.fail(at + (user,), f"the password of {user!r} must be non-empty text")
        out.append((user, str(password)))
    return tuple(out)


def retry(r: Reader, value: Any, at: PathKey) -> svc.Retry:
    """When the MTA tries again (RFC 5321 §4.5.4.1): the schedule's last interval repeats."""
    if value is None:
        return svc.Retry()
    spec = r.mapping(value, at, RETRY_KEYS, "retry")
    schedule = spec.get("schedule", list(svc.Retry.schedule))
    if not isinstance(schedule, list) or not schedule:
        raise r.fail(at + ("schedule",), "retry.schedule must be a non-empty list of seconds")
    steps = tuple(r.number(s, at + ("schedule", i), "a retry interval") for i, s in enumerate(schedule))
    give_up = r.number(spec.get("give_up", svc.Retry.give_up), at + ("give_up",), "retry.give_up")
    return svc.Retry(schedule=steps, give_up=give_up)


def tls(r: Reader, value: Any, at: PathKey) -> svc.TlsSettings:
    """``tls: true`` (STARTTLS, implicit TLS, the lab CA, with the defaults), ``tls: false`` (the
    clear-text lab), or a mapping ``{auth: tls-only|anywhere, relay: may|verify|none}`` (TLS on)."""
    if value is None or value is False:
        return svc.TlsSettings()
    if value is True:
        return svc.TlsSettings(enabled=True)
    spec = r.mapping(value, at, TLS_KEYS, "tls (true, false, or {auth: ..., relay: ...})")
    auth = spec.get("auth", "tls-only")
    if auth not in TLS_AUTH:
        raise r.fail(at + ("auth",), f"tls.auth {auth!r}: valid choices: tls-only (AUTH and logins only "
                                      "after STARTTLS/STLS or on 465/995/993), anywhere (in clear too)")
    relay = spec.get("relay", "may")
    if relay not in TLS_RELAY:
        raise r.fail(at + ("relay",), f"tls.relay {relay!r}: valid choices: may (STARTTLS when the MX offers "
                                       "it, unverified), verify (STARTTLS required, certificate checked "
                                       "against the lab CA), none (always in clear)")
    return svc.TlsSettings(enabled=True, auth_needs_tls=TLS_AUTH[auth], relay=relay)


def placement(r: Reader, value: Any, at: PathKey, hosts: tuple[HostSpec, ...],
              old: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
    """``placement: {mail: node2, betty: node2}``: the engine (a name in the engines file) each
    listed host runs on when the lab is split over several machines; entries add to ``old``."""
    if value is None:
        return old
    spec = r.mapping(value, at, None, "placement (host: engine name)")
    out = dict(old)
    names = {h.name for h in hosts}
    for host, engine in spec.items():
        if host not in names:
            raise r.fail(at + (host,), f"placement names host {host!r}, which is not in the lab; "
                                       f"hosts: {', '.join(h.name for h in hosts)}")
        if not isinstance(engine, str) or not LABEL.match(engine):
            shown = repr(engine) if isinstance(engine, str) else describe(engine)
            raise r.fail(at + (host,), f"placement of {host}: {shown} is not an engine name "
                                       "(lower-case letters, digits and '-', as in the engines file)")
        out[host] = engine
    order = [h.name for h in hosts]
    return tuple(sorted(out.items(), key=lambda item: order.index(item[0])))
