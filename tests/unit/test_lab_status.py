"""A host's condition: Docker's "exited" told apart as stopped (asked to end) or killed (SIGKILL)."""

from __future__ import annotations

import pytest

from labctl.backend import ContainerInfo
from labctl.backend.docker_engine import _exit_code
from labctl.lab import KILLED_EXIT, HostStatus, host_status
from labctl.plan import LABEL_ADDRESS, LABEL_FQDN, LABEL_HOST, LABEL_ROLE

LABELS = {LABEL_HOST: "mail", LABEL_FQDN: "mail.example", LABEL_ROLE: "mx", LABEL_ADDRESS: "10.89.0.20"}


def status(state: str, exit_code: int | None) -> HostStatus:
    return host_status("t", ContainerInfo("id", "t-mail", LABELS, state, "img", exit_code))


@pytest.mark.parametrize(("docker_status", "code"), [
    ("Exited (137) 3 seconds ago", 137),
    ("Exited (0) About a minute ago", 0),
    ("Exited (143) 2 hours ago", 143),
    ("Exited (-1) 1 second ago", -1),
    ("Up 5 seconds", None),
    ("Created", None),
    ("", None),
])
def test_exit_code_is_read_from_the_list_status(docker_status: str, code: int | None) -> None:
    assert _exit_code(docker_status) == code


@pytest.mark.parametrize(("state", "code", "condition"), [
    ("running", None, "running"),
    ("exited", KILLED_EXIT, "killed"),
    ("exited", 0, "stopped"),
    ("exited", 143, "stopped"),
    ("exited", None, "stopped"),
    ("created", None, "created"),
    ("restarting", None, "restarting"),
])
def test_condition(state: str, code: int | None, condition: str) -> None:
    h = status(state, code)
    assert h.name == "mail"
    assert h.condition == condition
    assert h.state == state  # Docker's own word stays for what asks Docker's question
