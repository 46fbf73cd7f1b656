"""Fixtures for the whole-lab tests: a real Docker engine, the real image, real labs.

On a developer's laptop without an engine these tests skip; in CI (CI=true) an unreachable
engine is a failure, never a skip (style.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import testinfra

from labctl import engine
from labctl.backend.docker_engine import DockerEngine
from labctl.errors import DockerUnavailable
from labctl.image import ImageBuilder
from labctl.lab import Lab
from labctl.mail import MailCommandResult
from labctl.plan import container_name

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def client() -> DockerEngine:
    try:
        return engine.connect()
    except DockerUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true but no Docker engine: {exc}")
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="session")
def image(client: DockerEngine) -> str:
    """The lab image for the code under test (built, or rebuilt after a change, if needed)."""
    return ImageBuilder(client).ensure()


def raw_api() -> docker.APIClient:
    """The Engine API itself, for what a test checks behind labctl's back (inspect a network, run a stranger)."""
    return docker.from_env().api


def labctl(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"labctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def parse_json(outcome: MailCommandResult) -> Any:
    """What a mail command printed with --json (a mailbox listing, a message, the MTA's queue)."""
    try:
        return json.loads(outcome.output)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{outcome.host}: no JSON: {outcome.output[:200]!r}{outcome.errors[:200]}") from exc


@dataclass
class RunningLab:
    name: str
    client: DockerEngine
    up_output: str

    def host(self, name: str) -> testinfra.host.Host:
        return testinfra.get_host(f"docker://{container_name(self.name, name)}")

    @property
    def lab(self) -> Lab:
        return Lab(self.client, self.name)


def unique_lab(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def running_lab(client: DockerEngine, image: str) -> Iterator[RunningLab]:
    name = unique_lab("t")
    proc = labctl("up", "--lab", name)
    try:
        yield RunningLab(name, client, proc.stdout + proc.stderr)
    finally:
        labctl("down", "--lab", name, check=False)


# The cluster of tests/lab/test_cluster_nodes.py (and of the multi-engine lab tests): a name of its
# own per test run, so neither a user's own `labctl cluster create` (maillab-node) on this machine
# nor another test run at the same time is touched.
TEST_CLUSTER = f"maillab-node-t{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def cluster(client: DockerEngine, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two docker-in-docker nodes in a Swarm with the lab image (`labctl cluster create --nodes 2`);
    yields the engines file naming them (node1 the manager, node2 a worker). Deleted afterwards."""
    engines = tmp_path_factory.mktemp("cluster") / "engines.yml"
    labctl("cluster", "create", "--nodes", "2", "--name", TEST_CLUSTER, "--engines", str(engines))
    try:
        yield engines
    finally:
        labctl("cluster", "delete", "--name", TEST_CLUSTER, "--engines", str(engines), check=False)
