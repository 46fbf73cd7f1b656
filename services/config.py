"""The lab configuration every service reads.

labctl renders the topology (``compose/lab.yml``) into one JSON document per container and
copies it to :data:`CONFIG_PATH` before the container starts (through the Engine API, so it
works when the engine runs in a VM). This module is the whole contract between the two sides:
labctl builds a :class:`LabConfig` and calls :meth:`LabConfig.to_json`; a service calls
:func:`load`.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.errors import LocalError

CONFIG_PATH = Path("/etc/maillab/lab.json")
ZONES_DIR = Path("/etc/maillab/zones")
SPOOL_DIR = Path("/var/spool/maillab")
MAIL_DIR = Path("/var/mail/maillab")

# client: a host on the lab network that is no lab user and no relay client of the MTA, "someone
# on the Internet" with the student's tools (for the 530 of a submission port without AUTH, say).
ROLES = ("dns", "mta", "mx", "mua", "client")
POSTMASTER = "postmaster"  # RFC 5321 §4.5.1: the reserved mailbox, a case-insensitive local part

# The reference peers (issue 6): the same jobs done by the servers people run in production, so a
# lab can put ours and theirs side by side. Each does the job of one of our roles (its kind: the
# same ports, the same place in the topology) and runs on the reference image.
REFERENCE_ROLES = {"nsd-dns": "dns", "postfix-mta": "mta", "postfix-mx": "mx"}
ALL_ROLES = ROLES + tuple(REFERENCE_ROLES)


def role_kind(role: str) -> str:
    """The job a role does: ``postfix-mx`` is an ``mx``; our own roles are their own kind."""
    return REFERENCE_ROLES.get(role, role)


# labctl hands each host its files under /etc (lab.json, zone files) in this environment
# variable, as JSON {relative path: text}; the role writes them at start (materialize_files).
FILES_ENV = "MAILLAB_FILES"
ETC = Path("/etc")


class ConfigError(LocalError):
    """The lab configuration is missing or inconsistent; the message says what to fix."""


@dataclass(frozen=True)
class Host:
    name: str  # short name in the topology ("smtp", "andy")
    fqdn: str  # the host's DNS name ("smtp.ouhk.example")
    role: str  # one of ALL_ROLES
    address: str  # IPv4 address on the lab network


@dataclass(frozen=True)
class Account:
    user: str  # local part ("betty")
    domain: str  # "stevenchoy.example"
    password: str

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain}"


@dataclass(frozen=True)
class Domain:
    name: str
    mail_host: str  # short name of the host that keeps this domain's mailboxes
    accounts: tuple[Account, ...] = ()
    # Short names of the other lab hosts listed as MX of this domain: backup MX hosts (role mta)
    # that take the domain's mail while the mail host is down, queue it and relay it on
    # (RFC 5321 §5.1: a lower-preference MX "relays" for the best one).
    backup_mx: tuple[str, ...] = ()


@dataclass(frozen=True)
class Retry:
    """When the MTA tries again after a transient failure (RFC 5321 §4.5.4.1).

    Real MTAs wait 30 minutes and give up after days; a lab wants to watch a retry happen,
    so the defaults are seconds. The last interval repeats until ``give_up`` seconds after
    the message was queued.
    """

    schedule: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0)
    give_up: float = 600.0


@dataclass(frozen=True)
class MuaSettings:
    """Where a mail user agent host sends and fetches mail (from its ``environment:``)."""

    user: str  # full address, "andy@ouhk.example"
    smtp: str  # FQDN of the submission server
    pop3: str  # FQDN of the POP3 server


# TLS (issue 12). labctl makes a CA per lab and one leaf certificate per server host, and passes
# them with the host's other files (FILES_ENV); they land here. The CA is installed into each
# host's system trust store at start (services.tls.trust_lab_ca), so real clients verify with no flags.
TLS_DIR = Path("/etc/maillab/tls")
TLS_CA = TLS_DIR / "ca.pem"  # the lab CA certificate (every host)
TLS_CERT = TLS_DIR / "cert.pem"  # this host's leaf certificate, then the CA (server hosts)
TLS_KEY = TLS_DIR / "key.pem"  # this host's private key (server hosts)


@dataclass(frozen=True)
class TlsSettings:
    """TLS in the lab: off unless the topology's ``x-maillab.tls`` or ``labctl up --tls`` turns it on.

    Off, the lab is exactly the clear-text lab of the article. On: STARTTLS on 25 and 587,
    implicit TLS on 465, STLS on POP3 110 and POP3S on 995, STARTTLS on IMAP 143 and IMAPS on 993.
    """

    enabled: bool = False
    # RFC 8314 §3.3 style: AUTH on 587 (and USER/PASS, LOGIN, AUTHENTICATE on POP3/IMAP) only under
    # TLS; a clear channel gets no AUTH offered and a refusal if it tries. False: AUTH anywhere.
    auth_needs_tls: bool = True
    # MTA -> MX: "may" uses STARTTLS when the next hop offers it, without verifying (Postfix
    # smtp_tls_security_level=may); "verify" requires it and checks the certificate against the
    # lab CA; "none" never starts TLS.
    relay: str = "may"


@dataclass(frozen=True)
class LabConfig:
    lab: str
    me: str  # short name of the host reading this config
    subnet: str
    nameserver: str  # address of the lab DNS server
    hosts: tuple[Host, ...]
    domains: tuple[Domain, ...]
    retry: Retry = field(default_factory=Retry)
    mua: MuaSettings | None = None  # set on MUA hosts that have a user
    tls: TlsSettings = field(default_factory=TlsSettings)

    # -- lookups ---------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name or h.fqdn == name:
                return h
        raise ConfigError(f"no host {name!r} in lab {self.lab!r}")

    @property
    def this(self) -> Host:
        return self.host(self.me)

    def domain(self, name: str) -> Domain | None:
        name = name.lower().rstrip(".")
        for d in self.domains:
            if d.name == name:
                return d
        return None

    def is_backup_mx(self, domain: str) -> bool:
        """Is this host a backup MX of ``domain`` (it takes the mail and relays it on)?"""
        d = self.domain(domain)
        return d is not None and self.me in d.backup_mx

    @property
    def local_domains(self) -> tuple[Domain, ...]:
        """The domains whose mailboxes live on this host."""
        return tuple(d for d in self.domains if d.mail_host == self.me)

    def account(self, address: str) -> Account | None:
        user, _, dom = address.rpartition("@")
        d = self.domain(dom)
        if d is None:
            return None
        for a in d.accounts:
            if a.user.lower() == user.lower():
                return a
        return None

    # -- the seal (design decision 5) -----------------------------------------------------------

    @property
    def zones(self) -> list[str]:
        """The zones the lab DNS serves (:func:`lab_zones`)."""
        return lab_zones([d.name for d in self.domains], [h.fqdn for h in self.hosts])

    def outside(self, domain: str) -> str | None:
        """Why mail for ``domain`` can never be delivered, if it is outside the lab; else None.

        The lab DNS answers REFUSED for every other name, so without this a message to gmail.com
        waits out the whole retry period on "no name server answered".
        """
        name = domain.lower().rstrip(".")
        if name.startswith("[") or any(name == z or name.endswith("." + z) for z in self.zones):
            return None  # an address literal is routed by address, not by name
        return (f"{name} is outside the sealed lab: the lab DNS serves only {', '.join(self.zones)} "
                "(and answers REFUSED for any other name), and no mail leaves the lab")

    # -- postmaster (RFC 5321 §4.5.1) -----------------------------------------------------------

    def mailbox_owner(self, address: str) -> str:
        """The address whose mailbox takes mail for ``address``: itself, but ``postmaster@D``
        (any case) goes to the first user of lab domain D: the lab's one alias (RFC 5321 §4.5.1:
        every domain a server delivers for MUST take mail for its postmaster)."""
        user, _, dom = address.rpartition("@")
        d = self.domain(dom)
        if user.lower() == POSTMASTER and d is not None and d.accounts and self.account(address) is None:
            return d.accounts[0].address
        return address

    @property
    def postmaster(self) -> str | None:
        """Where ``RCPT TO:<Postmaster>`` (no domain, RFC 5321 §4.5.1) goes on this host: the
        postmaster of its first local domain, else of the lab domain its name is in."""
        parent = self.this.fqdn.partition(".")[2]
        d = next(iter(self.local_domains), None) or self.domain(parent)
        return f"{POSTMASTER}@{d.name}" if d is not None else None

    def is_relay_client(self, address: str) -> bool:
        """May a client at this IP address relay through the MTA without AUTH?

        The MTA's own clients are the lab's MUA hosts; any other host (another mail server,
        say) is "the Internet" and may only send mail for the MTA's local domains.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return ip.is_loopback or str(ip) in self.relay_clients

    @property
    def relay_clients(self) -> tuple[str, ...]:
        """The addresses that may relay without AUTH: the lab's MUA hosts (the MTA's own users)."""
        return tuple(h.address for h in self.hosts if h.role == "mua")

    # -- (de)serialisation -----------------------------------------------------------------

    def to_json(self) -> str:
        data = asdict(self)
        if not self.tls.enabled:
            # The clear-text lab's lab.json as before issue 12: its hosts' digests do not change.
            del data["tls"]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabConfig:
        try:
            mua = data.get("mua")
            return cls(
                lab=data["lab"],
                me=data["me"],
                subnet=data["subnet"],
                nameserver=data["nameserver"],
                hosts=tuple(Host(**h) for h in data["hosts"]),
                domains=tuple(
                    Domain(
                        name=d["name"],
                        mail_host=d["mail_host"],
                        accounts=tuple(Account(**a) for a in d.get("accounts", ())),
                        backup_mx=tuple(d.get("backup_mx", ())),
                    )
                    for d in data["domains"]
                ),
                retry=Retry(
                    schedule=tuple(data.get("retry", {}).get("schedule", Retry.schedule)),
                    give_up=float(data.get("retry", {}).get("give_up", Retry.give_up)),
                ),
                mua=MuaSettings(**mua) if mua else None,
                tls=TlsSettings(**data.get("tls", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"lab configuration is incomplete or malformed: {exc}") from exc


def lab_zones(domains: Iterable[str], fqdns: Iterable[str]) -> list[str]:
    """Every zone the lab DNS serves: the mail domains plus the parent of each host name not in one."""
    names = {d.lower() for d in domains}
    for fqdn in fqdns:
        if not any(fqdn == z or fqdn.endswith("." + z) for z in names):
            names.add(fqdn.partition(".")[2])
    return sorted(names)


def encode_files(files: dict[str, str]) -> str:
    return json.dumps(files, sort_keys=True)


def materialize_files(environ: dict[str, str] | None = None, root: Path = ETC) -> list[Path]:
    """Write the files labctl passed in the environment; return their paths.

    Only paths under ``maillab/`` are accepted: the variable comes from labctl, but a file
    outside the lab's own folder is never what it meant.
    """
    raw = (environ if environ is not None else dict(os.environ)).get(FILES_ENV)
    if raw is None:
        return []
    try:
        files = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{FILES_ENV} is not valid JSON: {exc.msg}") from exc
    if not isinstance(files, dict):
        raise ConfigError(f"{FILES_ENV} must map paths to file contents")
    written = []
    for rel, text in sorted(files.items()):
        parts = Path(rel).parts
        if not isinstance(text, str) or not parts or parts[0] != "maillab" or ".." in parts or Path(rel).is_absolute():
            raise ConfigError(f"{FILES_ENV}: refusing to write {rel!r} (only files under maillab/)")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # a tool reading it at this moment sees the old file or the new one
        written.append(path)
    return written


def load(path: Path = CONFIG_PATH) -> LabConfig:
    """Read the configuration labctl placed in this container."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}; start this host with `labctl up`, "
            "which writes the file"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    return LabConfig.from_dict(data)
