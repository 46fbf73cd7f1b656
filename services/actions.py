"""What a pure session core asks its asyncio shell to do, in order (POP3 and IMAP alike).

The cores (:mod:`services.pop3.core`, :mod:`services.imap.core`) return lists of these, as
mitmproxy's layers yield commands: send these bytes, wait this long without blocking other
clients, log this line, close the connection, start TLS, call back now and then (an IMAP client's IDLE).
:class:`services.sessionserver.Connection` performs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Wait:
    """Hold back everything after this for ``seconds``, without blocking other clients."""

    seconds: float


@dataclass(frozen=True)
class Log:
    text: str
    level: int = logging.INFO


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Poll:
    """Until :class:`StopPolling`, call ``poll`` every ``interval`` seconds while no bytes arrive,
    and perform what it returns (RFC 2177: an idling client hears of new mail at once)."""

    interval: float
    poll: Callable[[], list[Action]]


@dataclass(frozen=True)
class StopPolling:
    pass


@dataclass(frozen=True)
class StartTls:
    """Upgrade the connection to TLS now, as the server (POP3 STLS, RFC 2595 §4; IMAP STARTTLS,
    RFC 3501 §6.2.1). The shell first drops whatever the client sent after the command in clear:
    those bytes came before the handshake and must never run under TLS (command injection,
    CVE-2011-0411 and kin). The core must have dropped its own buffer too. Once the handshake is
    done the shell calls the core's ``tls_started``; a failed handshake ends the session."""


Action = Send | Wait | Log | Close | Poll | StopPolling | StartTls
