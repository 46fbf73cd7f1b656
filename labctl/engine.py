"""Which engine labctl talks to: today the Docker engine DOCKER_HOST names (or the local one)."""

from __future__ import annotations

from labctl.backend import Engine


def connect() -> Engine:
    """The engine, answering; DockerUnavailable (with what to do) when it does not."""
    from labctl.backend.docker_engine import connect as docker_connect

    return docker_connect()
