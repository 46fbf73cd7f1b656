"""The one exception of the mail client: a failure the user can act on."""

from __future__ import annotations

from services.errors import ServiceError


class MuaError(ServiceError):
    """A user error, a server refusal or an unreachable server; the message says what to do.

    The CLI prints it as one line and exits non-zero, without a traceback.
    """
