"""Replies injected into our SMTP servers (services.smtp.replyfaults) of a running lab.

The rules live in the host, in :data:`~services.smtp.replyfaults.FAULTS_FILE`: labctl reads them,
changes them, writes them back (``Lab.put_files``) and sends SIGHUP, and the server loads them
without a restart, so its queue and its sessions stay. Both ``labctl fault`` and the scenario's
``fault: {reply: ...}`` come here. Only our MTA and MX consult the file: a host running a reference
Postfix is refused, saying so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Protocol

from labctl.errors import LabctlError
from labctl.lab import HostStatus, Lab
from services.smtp.replyfaults import FAULTS_FILE, FaultFileError, ReplyRule, parse_rules, render_rules

LOAD_TIMEOUT = 5.0  # seconds for the server to log that it loaded the new rules


class Host(Protocol):
    """A planned host (HostSpec) or a running one (HostStatus)."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def is_reference(self) -> bool: ...
    @property
    def runs_our_smtp(self) -> bool: ...


def refusal(host: Host, hosts: Iterable[Host]) -> str | None:
    """Why ``host`` (planned or running) cannot take reply faults, naming those that can; None if it can."""
    if host.runs_our_smtp:
        return None
    what = f"runs a reference {host.role}" if host.is_reference else f"is a {host.kind} host with no SMTP server"
    ours = ", ".join(h.name for h in hosts if h.runs_our_smtp) or "none in this lab"
    return f"{host.name} {what}: reply faults need our SMTP server (services.smtp); hosts that run it: {ours}"


def target(lab: Lab, host: str) -> HostStatus:
    """The host whose server will answer, if it runs ours: else why not, and what to do."""
    h = lab.find(host)
    problem = refusal(h, lab.hosts())
    if problem:
        raise LabctlError(problem)
    return h


def rules(lab: Lab, host: HostStatus) -> tuple[ReplyRule, ...]:
    """The rules in the host's file (none if it has none)."""
    files = lab.read_files(host, str(FAULTS_FILE.parent))
    data = next((f.data for f in files if f.name == FAULTS_FILE.name), b"")
    try:
        return parse_rules(data)
    except FaultFileError as exc:
        raise LabctlError(f"{host.name}:{FAULTS_FILE}: {exc}; clear it with `labctl fault clear {host.name}`") from exc


def _said(lab: Lab, host: HostStatus, line: str) -> int:
    return b"".join(lab.logs(host.name)).decode("utf-8", "replace").count(line)


def _write(lab: Lab, host: HostStatus, new: tuple[ReplyRule, ...], *, expect: str) -> None:
    """Write the host's rules and wait until its server logs ``expect`` once more: loaded."""
    before = _said(lab, host, expect)
    lab.put_files(host, str(FAULTS_FILE.parent), {FAULTS_FILE.name: render_rules(new)})
    lab.signal(host.name, "SIGHUP")  # services.smtp.replyfaults.from_labctl: reload now
    deadline = time.monotonic() + LOAD_TIMEOUT
    while time.monotonic() < deadline:
        if _said(lab, host, expect) > before:
            return
        time.sleep(0.1)
    raise LabctlError(f"{host.name}'s SMTP server did not load its reply faults within {LOAD_TIMEOUT:g} s "
                      f"(its log has no {expect!r}); see `labctl logs {host.name}`")


def add(lab: Lab, host: str, rule: ReplyRule) -> ReplyRule:
    """Put ``rule`` in force on ``host`` beside its others, under a new id; returns it."""
    h = target(lab, host)
    added = replace(rule, id=uuid.uuid4().hex[:8])
    _write(lab, h, (*rules(lab, h), added), expect=f"reply fault {added.id} in force")
    return added


def clear(lab: Lab, host: str) -> tuple[ReplyRule, ...]:
    """Take every injected reply off ``host``; returns the rules that were in force."""
    h = target(lab, host)
    old = rules(lab, h)
    if old:
        _write(lab, h, (), expect="no reply faults in force")
    return old
