"""Scenario files: YAML checked into :mod:`labctl.scenario.model`, every error with ``file:line``.

The format is documented for instructors in ``scenarios/README.md``; this module is its reference.
Each mapping accepts only the keys listed in ``*_KEYS`` below, and a wrong one is reported with the
valid choices, so a typo never silently does nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from labctl import serverfaults, topology, yamlsource
from labctl.scenario import model as m
from labctl.topology import Topology
from labctl.topology.model import MAIL_KINDS, MTA, MX
from labctl.yamlreader import Reader
from labctl.yamlsource import Document, PathKey
from services import config as svc
from services.smtp import replyfaults

TOP_KEYS = ("name", "description", "goal", "topology", "steps")
STEP_EXTRA_KEYS = ("name", "note")
SEND_KEYS = ("from", "to", "subject", "body", "attach", "submission", "tls")
ATTACH_KEYS = ("name", "text", "bytes", "file")
FETCH_KEYS = ("user", "delete", "imap")
DIALOGUE_KEYS = ("from", "server", "port", "dialogue")
EXCHANGE_KEYS = ("send", "expect", "match")
WAIT_KEYS = ("delivered", "read", "queued", "bounced", "queue_empty", "seconds", "timeout")
DELIVERED_KEYS = ("to", "subject", "count")
QUEUED_KEYS = ("to", "host", "attempts")
BOUNCED_KEYS = ("to", "about", "status")
QUEUE_EMPTY_KEYS = ("host",)
TASK_KEYS = ("text", "hint", "time_limit")
FAULT_KINDS = (*m.HOST_ACTIONS, "shape", "block", "unblock", "dns", "reply", "unreply", "disk_full", "disk_free")
# The store each server writes a message to before its 250, by what the host does: the one a
# full disk fault fills, made a RAM disk of DISK_SIZE for the scenario (topology `tmpfs:` can say
# another size).
STORES = {MX: str(svc.MAIL_DIR), MTA: str(svc.SPOOL_DIR)}
DISK_SIZE = "size=16m"
REPLY_KEYS = ("host", "stage", "code", "status", "text", "times", "for", "from", "to")
SHAPE_KEYS = ("host", "delay", "loss", "rate", "direction")
BLOCK_KEYS = ("host", "port", "how")
BLOCK_HOW = ("refuse", "drop")
EXPECT_KINDS = ("mailbox", "queue", "bounce", "traffic", "file")
FILE_KEYS = ("host", "path", "match")
MAILBOX_KEYS = ("user", "where", "subject", "from", "count", "headers", "body", "received_via", "attachments", "seen")
MAILBOX_ON = ("server", "client")
QUEUE_KEYS = ("host", "empty", "to", "status", "attempts", "error", "retry_gap")
RETRY_GAP_KEYS = ("attempt", "seconds")
ATTACHMENT_EXPECT_KEYS = ("name", "size", "sha256")
QUEUE_STATUS = ("pending", "delivered", "bounced")
FACT_KINDS = ("mx_query", "refused", "cleartext", "encrypted", "connection", "dns", "relayed", "pop3_session",
              "imap_session")
DNS_FACT_KEYS = ("from", "name", "type", "answer")
RELAYED_KEYS = ("to", "via", "subject")
DNS_TYPES = ("A", "AAAA", "MX", "NS", "SOA", "TXT", "CNAME", "PTR", "SRV")
DNS_ANSWER_WORDS = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "NODATA")
MX_QUERY_KEYS = ("from", "domain")
REFUSED_KEYS = ("host", "port")
CLEARTEXT_KEYS = ("proto", "command", "subject")
CONNECTION_KEYS = ("from", "to", "port")
POP3_SESSION_KEYS = ("user", "retr", "dele")
IMAP_SESSION_KEYS = ("user", "fetched", "expunged")
PROTO_PORTS = {"smtp": 25, "pop3": 110, "imap": 143}

DEFAULT_WAIT = 30.0  # seconds: far more than a delivery takes, short enough to fail fast
MAX_WAIT = 600.0
DEFAULT_TIME_LIMIT = 600.0  # seconds a student has for a task: ten minutes for one activity
MAX_TIME_LIMIT = 3 * 3600.0  # a lab session
MAX_ATTACHMENT = 10 * 1024 * 1024  # the MTA's message size limit is about this

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(kbit|mbit)\s*$", re.IGNORECASE)
# A count or a span: 2, ">= 2", "<= 3", "2..3" (the same in every wait and expect).
_RANGE = re.compile(r"^\s*(?:(>=|<=)\s*(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)\s*\.\.\s*(\d+(?:\.\d+)?))\s*$")
_SMTP_EXPECT = re.compile(r"^[2-5]\d\d(?:[ -].*)?$")
_POP3_EXPECT = re.compile(r"^(?:\+OK|-ERR)(?: .*)?$")
# IMAP: the tagged status (or the greeting's, or a "+" continuation), services.talk.status_line.
_IMAP_EXPECT = re.compile(r"^(?:OK|NO|BAD|BYE|PREAUTH|\+)(?: .*)?$")
_EXPECT_SHAPES = {"smtp": (_SMTP_EXPECT, "250, 354 or 250 2.1.5"), "pop3": (_POP3_EXPECT, "+OK or -ERR"),
                  "imap": (_IMAP_EXPECT, "OK, NO or BAD (the tagged status; OK for the greeting)")}


def load(path: Path, text: str | None = None, base: Topology | None = None) -> m.Scenario:
    """Read and check one scenario file; raise :class:`SourceError` at the first problem."""
    doc = yamlsource.load(path, text)
    return _Parser(doc, base or topology.load()).scenario()


class _Parser:
    def __init__(self, doc: Document, base: Topology) -> None:
        self.doc = doc
        self.r = Reader(doc)  # the checked reading every labctl file shares
        self.topo = base  # the lab as the steps so far leave it (a DNS change alters it)
        self.disks: set[tuple[str, str]] = set()  # (host, store) a disk_full step fills: a tmpfs in the lab

    # -- helpers ------------------------------------------------------------------------------

    def require(self, spec: dict[str, Any], at: PathKey, key: str, what: str) -> Any:
        if key not in spec or spec[key] is None:
            raise self.r.fail(at, f"{what} needs {key!r}")
        return spec[key]

    def text(self, value: Any, at: PathKey, what: str, *, empty: bool = False) -> str:
        return self.r.text(value, at, what, empty=empty, numbers=True)  # a subject like 2024 is text

    def flag(self, value: Any, at: PathKey, what: str) -> bool:
        if not isinstance(value, bool):
            raise self.r.fail(at, f"{what} must be true or false, not {value!r}")
        return value

    def count(self, value: Any, at: PathKey, what: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.r.fail(at, f"{what} must be a whole number of at least {minimum}, not {value!r}")
        return value

    def amount(self, value: Any, at: PathKey, what: str, *, minimum: int = 0, fraction: bool = False) -> m.Count:
        """A count (or with ``fraction`` a span of seconds): N exactly, ">= N", "<= N", "N..M"."""
        number = (int | float) if fraction else int
        if isinstance(value, number) and not isinstance(value, bool) and value >= minimum:
            return m.Count(value, value)
        match = _RANGE.match(value) if isinstance(value, str) else None
        if match is not None:
            op, bound, low, high = match.groups()
            parts = [float(x) for x in (bound, low, high) if x is not None]
            if fraction or all(x.is_integer() for x in parts):
                count = (m.Count(parts[0]) if op == ">=" else m.Count(minimum, parts[0]) if op == "<="
                         else m.Count(parts[0], parts[1]))
                if count.low >= minimum and (count.high is None or count.low <= count.high):
                    return count
        kind = "seconds" if fraction else "a whole number"
        raise self.r.fail(at, f"{what} must be {kind} of at least {minimum} (exactly), or a range in quotes: "
                              f"\">= 2\", \"<= 3\" or \"2..3\"; not {value!r}")

    def seconds(self, value: Any, at: PathKey, what: str, *, most: float = MAX_WAIT) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = _DURATION.match(str(value)) if isinstance(value, str) else None
            if match is None:
                raise self.r.fail(at, f"{what} must be seconds like 30, 2.5 or 500ms, not {value!r}")
            seconds = float(match[1]) / (1000 if match[2] == "ms" else 1)
        if not 0 < seconds <= most:
            raise self.r.fail(at, f"{what} must be more than 0 and at most {most:.0f} seconds, not {value!r}")
        return seconds

    def pattern(self, value: Any, at: PathKey, what: str) -> re.Pattern[str]:
        text = self.text(value, at, what)
        try:
            return re.compile(text, re.MULTILINE)
        except re.error as exc:
            raise self.r.fail(at, f"{what} {text!r} is not a valid regular expression: {exc}") from exc

    def host(self, value: Any, at: PathKey, *, kinds: tuple[str, ...] = (), ours: bool = False) -> str:
        """A lab host by short name or FQDN, doing one of ``kinds`` if given (with ``ours``, with our
        software rather than a reference peer's); returns the short name."""
        name = self.text(value, at, "host")
        candidates = self.topo.hosts_of(*kinds) if kinds else self.topo.hosts
        if ours:
            candidates = tuple(h for h in candidates if not h.is_reference)
        for h in candidates:
            if name.lower() in (h.name, h.fqdn):
                return h.name
        kind = f" {'/'.join(kinds)}" if kinds else ""
        raise self.r.fail(at, f"{name!r} is not a{kind} host of this lab; valid choices: "
                          f"{', '.join(h.name for h in candidates)}")

    def mua(self, value: Any, at: PathKey) -> str:
        """A MUA host by name, FQDN or its user's address; returns the host name."""
        who = self.text(value, at, "user").lower()
        host = self.topo.mua_for(who)
        if host is not None:
            return host.name
        choices = ", ".join(f"{h.name} ({h.user})" for h in self.topo.mua_hosts)
        raise self.r.fail(at, f"{who!r} is not a mail user with a MUA host; valid choices: {choices}")

    def address(self, value: Any, at: PathKey, *, account: bool = True) -> str:
        """A mail address; with ``account``, one of the lab's (a MUA host name also names its user)."""
        text = self.text(value, at, "address").strip()
        accounts = set(self.topo.accounts)
        for h in self.topo.mua_hosts:
            if text.lower() in (h.name, h.fqdn) and h.user is not None:
                return h.user
        if "@" not in text:
            raise self.r.fail(at, f"{text!r} is not a mail address (user@domain) or a MUA host name")
        if account and text.lower() not in accounts:
            raise self.r.fail(at, f"{text!r} is not an account of this lab; valid choices: "
                                  f"{', '.join(sorted(accounts))}")
        return text

    def addresses(self, value: Any, at: PathKey) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.r.fail(at, "give at least one recipient")
        return tuple(self.address(v, at + (i,) if isinstance(value, list) else at, account=False)
                     for i, v in enumerate(items))

    def mta_host(self, value: Any, at: PathKey, *, queue: bool = False) -> str:
        """An MTA host (the first one if ``value`` is None); with ``queue``, one whose queue labctl
        reads: ours (a reference Postfix keeps its own, seen with ``postqueue -p``)."""
        if value is None:
            mtas = [h for h in self.topo.hosts_of(MTA) if not (queue and h.is_reference)]
            if not mtas:
                raise self.r.fail(at, "this lab has no mta host" + (" of ours (Postfix keeps its own queue)"
                                                                    if queue and self.topo.hosts_of(MTA) else ""))
            return mtas[0].name
        return self.host(value, at, kinds=(MTA,), ours=queue)

    # -- the document -------------------------------------------------------------------------

    def scenario(self) -> m.Scenario:
        top = self.r.mapping(self.doc.value if self.doc.value is not None else {}, (), TOP_KEYS, "the scenario")
        for required in ("name", "description", "goal", "steps"):
            if required not in top:
                raise self.r.fail((), f"the scenario has no {required!r}; a scenario needs {', '.join(TOP_KEYS[:3])} "
                                    "and steps")
        name = self.text(top["name"], ("name",), "name").strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.,:()'-]{0,79}", name):
            raise self.r.fail(("name",), f"name {name!r}: one line of letters, digits, spaces and - _ . , : ( ) '")
        description = self.text(top["description"], ("description",), "description").strip()
        goal = self.text(top["goal"], ("goal",), "goal").strip()
        if "topology" in top:
            self.topo = topology.apply_overlay(self.topo, self.doc, ("topology",))
        lab_topology = self.topo
        steps = top["steps"]
        if not isinstance(steps, list) or not steps:
            raise self.r.fail(("steps",), "steps must be a non-empty list (- send: ..., - expect: ...)")
        parsed = tuple(self.step(i, s) for i, s in enumerate(steps))
        for host, path in sorted(self.disks):
            lab_topology = lab_topology.with_tmpfs(host, path, DISK_SIZE)
        return m.Scenario(self.doc.path, name, description, goal, lab_topology, parsed)

    def step(self, index: int, value: Any) -> m.Step:
        at: PathKey = ("steps", index)
        line = self.doc.line(at)
        if not isinstance(value, Mapping):
            raise self.r.fail(at, f"step {index + 1} must be a mapping with one of: {', '.join(STEP_KINDS)}")
        kinds = [k for k in value if k in STEP_KINDS]
        unknown = [k for k in value if k not in STEP_KINDS and k not in STEP_EXTRA_KEYS]
        if unknown:
            owner = next((k for k in kinds if unknown[0] in STEP_KEYS[k]), None)
            if owner is not None:
                # `- send:` with its keys in the column of `send` itself: YAML reads them as the
                # step's own keys and `send:` as empty.
                raise self.r.fail(at + (unknown[0],), f"{unknown[0]!r} is a key of {owner!r} but stands beside it, "
                                  f"not under it: probably wrong indentation; indent the lines of {owner!r}'s "
                                  f"keys further than {owner + ':'!r} (e.g. two more spaces), or write "
                                  f"{owner}: {{{unknown[0]}: ...}}")
            raise self.r.fail(at + (unknown[0],), f"unknown step kind {unknown[0]!r}; valid kinds: "
                                                f"{', '.join(STEP_KINDS)} (and {', '.join(STEP_EXTRA_KEYS)})")
        if len(kinds) != 1:
            found = f"{len(kinds)} ({', '.join(kinds)})" if kinds else "none"
            raise self.r.fail(at, f"a step does exactly one thing: one of {', '.join(STEP_KINDS)}, not {found}")
        kind = kinds[0]
        where = at + (kind,)
        action, title = STEP_PARSERS[kind](self, value[kind], where)
        if "name" in value:
            title = self.text(value["name"], at + ("name",), "name").strip()
        note = self.text(value["note"], at + ("note",), "note").strip() if "note" in value else ""
        return m.Step(index + 1, line, kind, title, action, note)

    # -- steps --------------------------------------------------------------------------------

    def step_send(self, value: Any, at: PathKey) -> tuple[m.Send, str]:
        spec = self.r.mapping(value, at, SEND_KEYS, "send")
        sender = self.mua(self.require(spec, at, "from", "send"), at + ("from",))
        to = self.addresses(self.require(spec, at, "to", "send"), at + ("to",))
        subject = self.text(self.require(spec, at, "subject", "send"), at + ("subject",), "subject")
        body = self.text(spec.get("body", ""), at + ("body",), "body", empty=True)
        attach = spec.get("attach", [])
        if not isinstance(attach, list):
            raise self.r.fail(at + ("attach",), "attach must be a list of {name: FILE, text|bytes|file: ...}")
        files = tuple(self.attachment(a, at + ("attach", i)) for i, a in enumerate(attach))
        submission = self.flag(spec.get("submission", False), at + ("submission",), "submission")
        tls = spec.get("tls", "")
        if tls != "" and tls not in m.SEND_TLS:
            raise self.r.fail(at + ("tls",), f"tls must be one of {', '.join(m.SEND_TLS)} (or left out for the "
                                             f"MUA's default: STARTTLS when the lab has TLS), not {tls!r}")
        action = m.Send(sender, to, subject, body, files, submission, tls)
        extra = f" with {len(files)} attachment{'s' if len(files) > 1 else ''}" if files else ""
        return action, f"{sender} sends {subject!r} to {', '.join(to)}{extra}"

    def attachment(self, value: Any, at: PathKey) -> m.Attachment:
        spec = self.r.mapping(value, at, ATTACH_KEYS, "an attachment")
        name = self.text(self.require(spec, at, "name", "an attachment"), at + ("name",), "name").strip()
        if "/" in name or name in (".", ".."):
            raise self.r.fail(at + ("name",), f"attachment name {name!r} must be a plain file name")
        sources = [k for k in ("text", "bytes", "file") if k in spec]
        if len(sources) != 1:
            raise self.r.fail(at, "give the attachment's content in exactly one of: text, bytes (a size: random "
                                "bytes), file (a path relative to the scenario)")
        key = sources[0]
        if key == "text":
            data = self.text(spec["text"], at + ("text",), "text", empty=True).encode("utf-8")
        elif key == "bytes":
            size = self.count(spec["bytes"], at + ("bytes",), "bytes", minimum=1)
            if size > MAX_ATTACHMENT:
                raise self.r.fail(at + ("bytes",), f"bytes: at most {MAX_ATTACHMENT} (the MTA's size limit)")
            data = _pseudo_random(name, size)
        else:
            rel = self.text(spec["file"], at + ("file",), "file")
            path = (self.doc.path.parent / rel).resolve()
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise self.r.fail(at + ("file",), f"cannot read {path}: {exc.strerror}") from exc
        return m.Attachment(name, data)

    def step_fetch(self, value: Any, at: PathKey) -> tuple[m.Fetch, str]:
        spec = self.r.mapping(value, at, FETCH_KEYS, "fetch")
        user = self.mua(self.require(spec, at, "user", "fetch"), at + ("user",))
        delete = self.flag(spec.get("delete", False), at + ("delete",), "delete")
        imap = self.flag(spec.get("imap", False), at + ("imap",), "imap")
        how = "IMAP" if imap else "POP3"
        return m.Fetch(user, delete, imap), f"{user} fetches by {how} ({'delete' if delete else 'keep'} on the server)"

    def step_smtp(self, value: Any, at: PathKey) -> tuple[m.Dialogue, str]:
        return self.dialogue("smtp", value, at)

    def step_pop3(self, value: Any, at: PathKey) -> tuple[m.Dialogue, str]:
        return self.dialogue("pop3", value, at)

    def step_imap(self, value: Any, at: PathKey) -> tuple[m.Dialogue, str]:
        return self.dialogue("imap", value, at)

    def dialogue(self, proto: str, value: Any, at: PathKey) -> tuple[m.Dialogue, str]:
        spec = self.r.mapping(value, at, DIALOGUE_KEYS, proto)
        client = self.host(self.require(spec, at, "from", proto), at + ("from",))
        # Any host running the protocol's server: ours or a reference peer swapped in (postfix-mx).
        server = self.host(self.require(spec, at, "server", proto), at + ("server",), kinds=MAIL_KINDS)
        fqdn = self.topo.host(server).fqdn
        port = self.r.port(spec.get("port", PROTO_PORTS[proto]), at + ("port",))
        lines = spec.get("dialogue")
        if not isinstance(lines, list) or not lines:
            raise self.r.fail(at + ("dialogue",), "dialogue must be a non-empty list of {send: LINE, expect: REPLY}")
        exchanges = tuple(self.exchange(proto, item, at + ("dialogue", i), first=i == 0)
                          for i, item in enumerate(lines))
        title = f"{proto.upper()} by hand from {client} to {fqdn}:{port}"
        return m.Dialogue(proto, client, fqdn, port, exchanges), title

    def exchange(self, proto: str, value: Any, at: PathKey, *, first: bool) -> m.Exchange:
        spec = self.r.mapping(value, at, EXCHANGE_KEYS, "a dialogue line")
        send = None
        if "send" in spec:
            send = self.text(spec["send"], at + ("send",), "send").rstrip("\n")
        elif not first:
            raise self.r.fail(at, "only the first dialogue entry may have no 'send' (it reads the greeting)")
        expect = None
        if "expect" in spec:
            expect = self.text(spec["expect"], at + ("expect",), "expect").strip()
            shape, example = _EXPECT_SHAPES[proto]
            if not shape.match(expect):
                raise self.r.fail(at + ("expect",), f"expect {expect!r} is not the start of a {proto.upper()} reply, "
                                                  f"like {example} (use match: for a pattern)")
        match = self.pattern(spec["match"], at + ("match",), "match") if "match" in spec else None
        return m.Exchange(self.doc.line(at), send, expect, match)

    def step_task(self, value: Any, at: PathKey) -> tuple[m.Task, str]:
        spec = self.r.mapping(value, at, TASK_KEYS, "task")
        text = self.text(self.require(spec, at, "text", "task"), at + ("text",), "text").strip()
        hint = self.text(spec["hint"], at + ("hint",), "hint").strip() if "hint" in spec else ""
        limit = self.seconds(spec.get("time_limit", DEFAULT_TIME_LIMIT), at + ("time_limit",), "time_limit",
                             most=MAX_TIME_LIMIT)
        return m.Task(text, hint, limit), f"your task: {text.splitlines()[0]}"

    def step_wait(self, value: Any, at: PathKey) -> tuple[m.Wait, str]:
        spec = self.r.mapping(value, at, WAIT_KEYS, "wait")
        kinds = [k for k in spec if k != "timeout"]
        if len(kinds) != 1:
            raise self.r.fail(at, f"wait for exactly one of: {', '.join(WAIT_KEYS[:-1])} (and an optional timeout)")
        kind = kinds[0]
        where = at + (kind,)
        timeout = self.seconds(spec.get("timeout", DEFAULT_WAIT), at + ("timeout",), "timeout")
        until: m.Condition
        if kind == "seconds":
            until = m.Seconds(self.seconds(spec[kind], where, "seconds"))
            return m.Wait(until, until.seconds), f"wait {until.seconds:g} s"
        if kind in ("delivered", "read"):
            s = self.r.mapping(spec[kind], where, DELIVERED_KEYS, kind)
            to = self.address(self.require(s, where, "to", kind), where + ("to",))
            subject = self.text(s["subject"], where + ("subject",), "subject") if "subject" in s else None
            count = self.amount(s["count"], where + ("count",), "count") if "count" in s else m.AT_LEAST_ONE
            if kind == "delivered":
                until = m.Delivered(to, subject, count)
                title = f"until {to} has {_about(subject)}" + (f" ({count})" if "count" in s else "")
            else:
                until = m.Read(to, subject, count)
                title = f"until {to} has read {_about(subject)}" + (f" ({count})" if "count" in s else "")
        elif kind == "queued":
            s = self.r.mapping(spec[kind], where, QUEUED_KEYS, "queued")
            to = self.address(self.require(s, where, "to", "queued"), where + ("to",), account=False)
            host = self.mta_host(s.get("host"), where + ("host",), queue=True)
            attempts = (self.amount(s["attempts"], where + ("attempts",), "attempts") if "attempts" in s
                        else m.AT_LEAST_ONE)
            until = m.Queued(host, to, attempts)
            title = f"until {host} queues {to} after {attempts} attempt(s)"
        elif kind == "bounced":
            until = self.bounced(spec[kind], where)
            title = f"until {until.to} gets a bounce" + (f" about {until.about}" if until.about else "")
        else:
            s = self.r.mapping(spec[kind] if spec[kind] is not None else {}, where, QUEUE_EMPTY_KEYS, "queue_empty")
            until = m.QueueEmpty(self.mta_host(s.get("host"), where + ("host",), queue=True))
            title = f"until {until.host}'s queue is empty"
        return m.Wait(until, timeout), f"wait {title} (at most {timeout:g} s)"

    def bounced(self, value: Any, at: PathKey) -> m.Bounced:
        s = self.r.mapping(value, at, BOUNCED_KEYS, "bounced")
        to = self.address(self.require(s, at, "to", "bounced"), at + ("to",))
        about = self.address(s["about"], at + ("about",), account=False) if "about" in s else None
        status = None
        if "status" in s:
            status = self.text(s["status"], at + ("status",), "status").strip()
            if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status):
                raise self.r.fail(at + ("status",), f"status {status!r} is not an RFC 3463 code like 5.1.1")
        return m.Bounced(to, about, status)

    def step_fault(self, value: Any, at: PathKey) -> tuple[m.Fault, str]:
        spec = self.r.mapping(value, at, FAULT_KINDS, "fault")
        if len(spec) != 1:
            raise self.r.fail(at, f"a fault step does one of: {', '.join(FAULT_KINDS)}")
        (kind, arg), = spec.items()
        where = at + (kind,)
        if kind in m.HOST_ACTIONS:
            host = self.host(arg, where)
            return m.HostFault(kind, host), f"{kind} {host}"
        if kind == "shape":
            s = self.r.mapping(arg, where, SHAPE_KEYS, "shape")
            host = self.host(self.require(s, where, "host", "shape"), where + ("host",))
            if not any(k in s for k in ("delay", "loss", "rate")):
                raise self.r.fail(where, "shape needs at least one of: delay (e.g. 200ms), loss (e.g. 10%), "
                                       "rate (e.g. 256kbit)")
            delay = self.seconds(s["delay"], where + ("delay",), "delay") * 1000 if "delay" in s else None
            loss = self.percent(s["loss"], where + ("loss",)) if "loss" in s else None
            rate = self.rate(s["rate"], where + ("rate",)) if "rate" in s else None
            direction = s.get("direction", "both")
            if direction not in m.DIRECTIONS:
                raise self.r.fail(where + ("direction",), f"direction {direction!r}: valid choices: "
                                                          f"{', '.join(m.DIRECTIONS)} (what {host} receives, sends)")
            shape = m.Shape(host, delay, loss, rate, direction)
            parts = [f"delay {delay:g} ms" if delay else "", f"loss {loss:g}%" if loss else "",
                     f"rate {rate:g} kbit/s" if rate else ""]
            way = {"both": "both ways", "in": "what it receives", "out": "what it sends"}[direction]
            return shape, f"shape {host}'s link ({way}): {', '.join(p for p in parts if p)}"
        if kind in ("block", "unblock"):
            s = self.r.mapping(arg, where, BLOCK_KEYS, kind)
            host = self.host(self.require(s, where, "host", kind), where + ("host",))
            port = self.r.port(self.require(s, where, "port", kind), where + ("port",))
            how = s.get("how", "refuse")
            if how not in BLOCK_HOW:
                raise self.r.fail(where + ("how",), f"how {how!r}: valid choices: {', '.join(BLOCK_HOW)}")
            verb = "unblock" if kind == "unblock" else f"block ({how})"
            return m.Block(host, port, how, undo=kind == "unblock"), f"{verb} port {port} on {host}"
        if kind == "reply":
            fault = self.reply_fault(arg, where)
            return fault, f"{fault.host} answers {fault.rule.describe()}"
        if kind in ("disk_full", "disk_free"):
            host = self.host(arg, where, kinds=MAIL_KINDS, ours=True)
            path = STORES[self.topo.host(host).kind]
            self.disks.add((host, path))
            verb = "fill" if kind == "disk_full" else "free"
            return m.DiskFull(host, path, undo=kind == "disk_free"), f"{verb} the disk of {host}'s {path}"
        if kind == "unreply":
            host = self.smtp_server(arg, where)
            return m.ClearReplies(host), f"{host} answers as itself again (reply faults cleared)"
        if not isinstance(arg, Mapping):
            raise self.r.fail(where, "dns needs a mapping: {domain: NAME, mx: [...], address: HOST, records: [...]}")
        self.topo = topology.change_domain(self.topo, self.doc, where)
        domain = str(arg["domain"]).lower().rstrip(".")
        changed = next(d for d in self.topo.domains if d.name == domain)
        mx = ", ".join(f"{r.preference} {r.exchange}" for r in changed.mx) or "none"
        return m.DnsChange(domain, self.topo), f"change DNS of {domain} live (MX: {mx})"

    def smtp_server(self, value: Any, at: PathKey) -> str:
        """A host running our SMTP server (a reply fault's): a reference Postfix is refused, saying why."""
        name = self.host(value, at)
        problem = serverfaults.refusal(self.topo.host(name), self.topo.hosts)
        if problem:
            raise self.r.fail(at, problem)
        return name

    def reply_fault(self, value: Any, at: PathKey) -> m.ReplyFault:
        s = self.r.mapping(value, at, REPLY_KEYS, "reply")
        host = self.smtp_server(self.require(s, at, "host", "reply"), at + ("host",))
        stage = self.text(self.require(s, at, "stage", "reply"), at + ("stage",), "stage").strip().lower()
        code = self.count(self.require(s, at, "code", "reply"), at + ("code",), "code", minimum=400)
        status = self.text(s["status"], at + ("status",), "status").strip() if "status" in s else ""
        text = self.text(s.get("text", replyfaults.default_text(code)), at + ("text",), "text").strip()
        times = self.count(s["times"], at + ("times",), "times", minimum=1) if "times" in s else None
        seconds = self.seconds(s["for"], at + ("for",), "for") if "for" in s else None
        sender = self.text(s["from"], at + ("from",), "from").strip() if "from" in s else None
        recipient = self.text(s["to"], at + ("to",), "to").strip() if "to" in s else None
        problem = replyfaults.rule_problem(stage, code, status, sender=sender, recipient=recipient,
                                           times=times, seconds=seconds)
        if problem:
            field, message = problem
            key = {"sender": "from", "recipient": "to", "seconds": "for"}.get(field, field)
            raise self.r.fail(at + (key,) if key in s else at, f"reply: {message}")
        rule = replyfaults.ReplyRule("", stage, code, status or replyfaults.default_status(code), text,
                                     times, seconds, sender, recipient)
        return m.ReplyFault(host, rule)

    def percent(self, value: Any, at: PathKey) -> float:
        match = _PERCENT.match(str(value)) if isinstance(value, str | int | float) and not isinstance(value, bool) \
            else None
        if match is None or not 0 < float(match[1]) < 100:
            raise self.r.fail(at, f"loss must be a percentage above 0 and below 100, like 10%, not {value!r}")
        return float(match[1])

    def rate(self, value: Any, at: PathKey) -> float:
        match = _RATE.match(value) if isinstance(value, str) else None
        if match is None or float(match[1]) <= 0:
            raise self.r.fail(at, f"rate must be like 256kbit or 2mbit, not {value!r}")
        return float(match[1]) * (1000 if match[2].lower() == "mbit" else 1)

    def step_expect(self, value: Any, at: PathKey) -> tuple[m.Expect, str]:
        spec = self.r.mapping(value, at, EXPECT_KINDS, "expect")
        if not spec:
            raise self.r.fail(at, f"expect what? one or more of: {', '.join(EXPECT_KINDS)}")
        checks: list[m.Expectation] = []
        titles: list[str] = []
        for kind, arg in spec.items():
            where = at + (kind,)
            if kind == "mailbox":
                mb = self.mailbox(arg, where)
                checks.append(mb)
                what = f"{mb.count} message(s)" if mb.count != m.AT_LEAST_ONE else _about(mb.subject)
                titles.append(f"{mb.user}'s {'local ' if mb.on == 'client' else ''}mailbox has {what}")
            elif kind == "queue":
                q = self.queue(arg, where)
                checks.append(q)
                titles.append(f"{q.host}'s queue " + ("is empty" if q.empty else f"holds {q.to or 'mail'}"
                                                      + (f" ({q.status})" if q.status else "")))
            elif kind == "bounce":
                b = self.bounced(arg, where)
                checks.append(b)
                titles.append(f"{b.to} has a bounce" + (f" about {b.about}" if b.about else ""))
            elif kind == "file":
                f = self.file(arg, where)
                checks.append(f)
                titles.append(f"{f.host}:{f.path} " + (f"matches /{f.match.pattern}/" if f.match else "exists"))
            else:
                t = self.traffic(arg, where)
                checks.append(t)
                titles.append(f"the capture shows {len(t.facts)} fact(s)")
        return m.Expect(tuple(checks)), "expect " + "; ".join(titles)

    def mailbox(self, value: Any, at: PathKey) -> m.MailboxExpect:
        s = self.r.mapping(value, at, MAILBOX_KEYS, "mailbox")
        on = s.get("where", "server")
        if on not in MAILBOX_ON:
            raise self.r.fail(at + ("where",), f"where {on!r}: valid choices: {', '.join(MAILBOX_ON)}")
        user = self.address(self.require(s, at, "user", "mailbox"), at + ("user",))
        if on == "client":
            self.mua(user, at + ("user",))  # the local mailbox is on the user's MUA host
        subject = self.text(s["subject"], at + ("subject",), "subject") if "subject" in s else None
        sender = self.text(s["from"], at + ("from",), "from") if "from" in s else None
        count = self.amount(s["count"], at + ("count",), "count") if "count" in s else m.AT_LEAST_ONE
        headers: list[tuple[str, re.Pattern[str]]] = []
        if "headers" in s:
            raw = s["headers"]
            if not isinstance(raw, Mapping) or not raw:
                raise self.r.fail(at + ("headers",), "headers must map header names to patterns, e.g. "
                                                   "{Return-Path: '<andy@ouhk.example>'}")
            for name, pat in raw.items():
                if not isinstance(name, str) or not re.fullmatch(r"[!-9;-~]+", name):
                    raise self.r.fail(at + ("headers", name), f"{name!r} is not a header field name")
                headers.append((name, self.pattern(pat, at + ("headers", name), f"the pattern for {name}")))
        body = self.pattern(s["body"], at + ("body",), "body") if "body" in s else None
        via: tuple[str, ...] = ()
        if "received_via" in s:
            items = s["received_via"]
            if not isinstance(items, list) or not items:
                raise self.r.fail(at + ("received_via",), "received_via must list hosts, oldest hop first")
            via = tuple(self.topo.host(self.host(h, at + ("received_via", i), kinds=MAIL_KINDS)).fqdn
                        for i, h in enumerate(items))
        attachments: tuple[m.AttachmentExpect, ...] = ()
        if "attachments" in s:
            items = s["attachments"]
            if not isinstance(items, list) or not items:
                raise self.r.fail(at + ("attachments",), "attachments must list file names, or "
                                                       "{name: FILE, size: BYTES, sha256: HEX}")
            attachments = tuple(self.attachment_expect(a, at + ("attachments", i)) for i, a in enumerate(items))
        seen = self.flag(s["seen"], at + ("seen",), "seen") if "seen" in s else None
        if seen is not None and on != "server":
            raise self.r.fail(at + ("seen",), "seen: is a flag the server keeps (IMAP's \\Seen); the local "
                                             "mailbox has none: write where: server")
        if count.high == 0 and (headers or body or via or attachments or seen is not None):
            raise self.r.fail(at + ("count",), "count: 0 expects no such message; there is nothing to check headers of")
        return m.MailboxExpect(user, on, subject, sender, count, tuple(headers), body, via, attachments, seen)

    def dns_fact(self, value: Any, at: PathKey) -> m.DnsLooked:
        s = self.r.mapping(value, at, DNS_FACT_KEYS, "dns")
        host = self.host(s["from"], at + ("from",)) if "from" in s else None
        name = self.text(self.require(s, at, "name", "dns"), at + ("name",), "name").strip().lower().rstrip(".")
        rtype = self.text(s.get("type", "A"), at + ("type",), "type").strip().upper()
        if rtype not in DNS_TYPES:
            raise self.r.fail(at + ("type",), f"type {rtype!r}: valid choices: {', '.join(DNS_TYPES)}")
        answer = None
        if "answer" in s:
            answer = self.text(s["answer"], at + ("answer",), "answer").strip()
            if answer.upper() in DNS_ANSWER_WORDS:
                answer = answer.upper()
        return m.DnsLooked(host, name, rtype, answer)

    def attachment_expect(self, value: Any, at: PathKey) -> m.AttachmentExpect:
        if not isinstance(value, Mapping):
            return m.AttachmentExpect(self.text(value, at, "a file name"))
        spec = self.r.mapping(value, at, ATTACHMENT_EXPECT_KEYS, "an attachment")
        name = self.text(self.require(spec, at, "name", "an attachment"), at + ("name",), "name")
        size = self.count(spec["size"], at + ("size",), "size") if "size" in spec else None
        digest = None
        if "sha256" in spec:
            digest = self.text(spec["sha256"], at + ("sha256",), "sha256").strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise self.r.fail(at + ("sha256",), f"sha256 {digest!r} is not 64 hex digits (as sha256sum prints)")
        return m.AttachmentExpect(name, size, digest)

    def file(self, value: Any, at: PathKey) -> m.FileExpect:
        s = self.r.mapping(value, at, FILE_KEYS, "file")
        host = self.host(self.require(s, at, "host", "file"), at + ("host",))
        path = self.text(self.require(s, at, "path", "file"), at + ("path",), "path").strip()
        if not path.startswith(("/", "~/")):
            raise self.r.fail(at + ("path",), f"path {path!r} must be absolute (/root/answer.txt) or in the home "
                                             "directory (~/answer.txt)")
        match = self.pattern(s["match"], at + ("match",), "match") if "match" in s else None
        return m.FileExpect(host, path, match)

    def queue(self, value: Any, at: PathKey) -> m.QueueExpect:
        s = self.r.mapping(value, at, QUEUE_KEYS, "queue")
        host = self.mta_host(s.get("host"), at + ("host",), queue=True)
        empty = self.flag(s["empty"], at + ("empty",), "empty") if "empty" in s else None
        to = self.address(s["to"], at + ("to",), account=False) if "to" in s else None
        status = s.get("status")
        if status is not None and status not in QUEUE_STATUS:
            raise self.r.fail(at + ("status",), f"status {status!r}: valid choices: {', '.join(QUEUE_STATUS)}")
        attempts = self.amount(s["attempts"], at + ("attempts",), "attempts") if "attempts" in s else None
        error = self.pattern(s["error"], at + ("error",), "error") if "error" in s else None
        gap = None
        if "retry_gap" in s:
            g = self.r.mapping(s["retry_gap"], at + ("retry_gap",), RETRY_GAP_KEYS, "retry_gap")
            w = at + ("retry_gap",)
            gap = m.RetryGap(self.count(self.require(g, w, "attempt", "retry_gap"), w + ("attempt",), "attempt",
                                        minimum=2),
                             self.amount(self.require(g, w, "seconds", "retry_gap"), w + ("seconds",), "seconds",
                                         fraction=True))
        if empty is None and to is None:
            raise self.r.fail(at, "say what the queue holds: empty: true, or to: ADDRESS "
                                  "(with status, attempts, error, retry_gap)")
        if empty and (to or status or attempts is not None or error or gap):
            raise self.r.fail(at, "an empty queue holds no recipient; drop empty: or the recipient checks")
        return m.QueueExpect(host, empty, to, status, attempts, error, gap)

    def traffic(self, value: Any, at: PathKey) -> m.TrafficExpect:
        items = value if isinstance(value, list) else [value]
        facts: list[m.Fact] = []
        for i, item in enumerate(items):
            where = at + (i,) if isinstance(value, list) else at
            spec = self.r.mapping(item, where, FACT_KINDS, "a traffic fact")
            if len(spec) != 1:
                raise self.r.fail(where, f"one fact per entry: one of {', '.join(FACT_KINDS)}")
            (kind, arg), = spec.items()
            w = where + (kind,)
            if kind == "mx_query":
                s = self.r.mapping(arg, w, MX_QUERY_KEYS, kind)
                host = self.host(s.get("from", self.mta_host(None, w)), w + ("from",))
                domain = self.text(self.require(s, w, "domain", kind), w + ("domain",), "domain").lower().rstrip(".")
                facts.append(m.MxQueried(host, domain))
            elif kind == "refused":
                s = self.r.mapping(arg, w, REFUSED_KEYS, kind)
                host = self.host(self.require(s, w, "host", kind), w + ("host",))
                facts.append(m.ConnectionRefused(host, self.r.port(s.get("port", 25), w + ("port",))))
            elif kind in ("cleartext", "encrypted"):
                s = self.r.mapping(arg, w, CLEARTEXT_KEYS, kind)
                proto = s.get("proto", "pop3")
                if proto not in PROTO_PORTS:
                    raise self.r.fail(w + ("proto",), f"proto {proto!r}: valid choices: {', '.join(PROTO_PORTS)}")
                command = self.text(self.require(s, w, "command", kind), w + ("command",), "command").upper()
                subject = self.text(s["subject"], w + ("subject",), "subject") if "subject" in s else None
                facts.append(m.Cleartext(proto, command, subject) if kind == "cleartext"
                             else m.Encrypted(proto, command, subject))
            elif kind == "dns":
                facts.append(self.dns_fact(arg, w))
            elif kind == "relayed":
                s = self.r.mapping(arg, w, RELAYED_KEYS, kind)
                to = self.address(self.require(s, w, "to", kind), w + ("to",), account=False)
                hops = self.require(s, w, "via", kind)
                if not isinstance(hops, list) or len(hops) < 2:
                    raise self.r.fail(w + ("via",), "via must list the hosts the message passed, at least two, "
                                                  "e.g. [smtp, mx2, mail]")
                via = tuple(self.host(h, w + ("via", i)) for i, h in enumerate(hops))
                subject = self.text(s["subject"], w + ("subject",), "subject") if "subject" in s else None
                facts.append(m.Relayed(to, via, subject))
            elif kind == "pop3_session":
                s = self.r.mapping(arg, w, POP3_SESSION_KEYS, kind)
                user = self.address(self.require(s, w, "user", kind), w + ("user",))
                retr = self.count(s["retr"], w + ("retr",), "retr") if "retr" in s else None
                dele = self.count(s["dele"], w + ("dele",), "dele") if "dele" in s else None
                facts.append(m.Pop3Session(user.partition("@")[0], retr, dele))
            elif kind == "imap_session":
                s = self.r.mapping(arg, w, IMAP_SESSION_KEYS, kind)
                user = self.address(self.require(s, w, "user", kind), w + ("user",))
                fetched = self.count(s["fetched"], w + ("fetched",), "fetched") if "fetched" in s else None
                expunged = self.count(s["expunged"], w + ("expunged",), "expunged") if "expunged" in s else None
                facts.append(m.ImapSession(user.partition("@")[0], fetched, expunged))
            else:
                s = self.r.mapping(arg, w, CONNECTION_KEYS, kind)
                source = self.host(self.require(s, w, "from", kind), w + ("from",))
                target = self.host(self.require(s, w, "to", kind), w + ("to",))
                facts.append(m.Connected(source, target, self.r.port(s.get("port", 25), w + ("port",))))
        return m.TrafficExpect(tuple(facts))


# Each step kind of a scenario file and the method reading it, in the order error messages list them.
STEP_PARSERS: Mapping[str, Callable[[_Parser, Any, PathKey], tuple[m.Action, str]]] = {
    "send": _Parser.step_send,
    "fetch": _Parser.step_fetch,
    "smtp": _Parser.step_smtp,
    "pop3": _Parser.step_pop3,
    "imap": _Parser.step_imap,
    "task": _Parser.step_task,
    "wait": _Parser.step_wait,
    "fault": _Parser.step_fault,
    "expect": _Parser.step_expect,
}
STEP_KINDS = tuple(STEP_PARSERS)
# The keys each step kind takes: a key of one found beside it is an indentation slip.
STEP_KEYS: Mapping[str, tuple[str, ...]] = {
    "send": SEND_KEYS, "fetch": FETCH_KEYS, "smtp": DIALOGUE_KEYS, "pop3": DIALOGUE_KEYS, "imap": DIALOGUE_KEYS,
    "task": TASK_KEYS,
    "wait": WAIT_KEYS, "fault": FAULT_KINDS, "expect": EXPECT_KINDS,
}


def _about(subject: str | None) -> str:
    return f"a message {subject!r}" if subject else "a message"


def _pseudo_random(name: str, size: int) -> bytes:
    """Bytes that look random (every value, CR, LF, dots) but are the same on every run."""
    out = bytearray()
    seed = name.encode()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])

