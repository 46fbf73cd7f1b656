"""The one root exception of labctl, and its kinds.

Every error a user can act on is a :class:`LabctlError` whose message says what is wrong and
what to do; the CLI prints it without a traceback. Anything else is our bug.
"""

from __future__ import annotations

from pathlib import Path


class LabctlError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole explanation."""


class SourceError(LabctlError):
    """Something wrong at a place in a file the user wrote (topology, scenario)."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else str(self.path)
        super().__init__(f"{where}: {message}")


class DockerUnavailable(LabctlError):
    """The Docker engine cannot be reached."""


class AddressClash(LabctlError):
    """The lab's subnet overlaps a network that already exists."""


class ImageError(LabctlError):
    """The lab image cannot be built."""


class LabNotRunning(LabctlError):
    """The command needs a lab that is not up."""


class ReadinessError(LabctlError):
    """A lab service did not come up."""
