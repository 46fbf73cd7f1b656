"""The root of the exceptions the lab's services raise on purpose, and its two kinds.

As dnspython has one root (``dns.exception.DNSException``) and h11 tells a peer's fault
(``RemoteProtocolError``) from its caller's (``LocalProtocolError``): ``except ServiceError``
catches every failure the services mean, and the kind says who must act. A :class:`PeerError`
is the other side's doing (a client's garbage, a server that breaks the protocol or does not
answer): it gets a protocol reply or a retry, and a log line. A :class:`LocalError` is ours (the
lab's configuration, a zone file, the queue on disk): its message says what to fix. Anything
else that escapes is a bug, and is answered as one (``451 4.3.0``, ``-ERR [SYS/TEMP]``,
SERVFAIL, with the traceback in the log).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A failure the services raise on purpose; ``str()`` says what happened."""


class PeerError(ServiceError):
    """The peer's fault: what it sent, or that it would not talk."""


class LocalError(ServiceError):
    """Our side's fault: configuration or state on disk; the message says what to fix."""
