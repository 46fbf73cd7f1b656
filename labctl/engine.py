"""Connecting to the Docker Engine, with an error a user can act on when it is not there."""

from __future__ import annotations

import os

import docker
import docker.errors
import requests.exceptions

from labctl.errors import DockerUnavailable

# One pooled connection per host started in parallel; the SDK's default of 10 would make a
# 50-host lab wait on the pool.
POOL_SIZE = 64
API_TIMEOUT = 120  # seconds; building an image streams, but `stop` of a stuck host can take a while


def connect() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=API_TIMEOUT, max_pool_size=POOL_SIZE)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise DockerUnavailable(
            f"cannot reach the Docker engine at {where} ({_first_line(exc)}).\n"
            "Start it and try again:\n"
            "  - on Debian/Ubuntu: `sudo systemctl start docker`, or `sudo dockerd &` where there is no systemd\n"
            "  - from this repository: `sudo tools/ensure-host` installs and starts one\n"
            "  - Docker Desktop: start the application\n"
            "  - a remote engine: set DOCKER_HOST"
        ) from exc
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:160]
