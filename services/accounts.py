"""The lab's mail accounts as the access servers check them: POP3, IMAP and SMTP AUTH alike.

Both rules that a login must follow live here once: which account a user name and password open
(:class:`AccountAuthenticator`), and how long a wrong password is answered late
(:func:`auth_delay`), so that POP3 and IMAP give a guesser the same cost.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from services.config import Domain

AUTH_DELAY_FIRST = 1.0  # seconds before the first failed-login reply; each further failure doubles it
AUTH_DELAY_MAX = 16.0  # the delay stops growing here, so a typo never costs a minute


def auth_delay(failures: int, first: float = AUTH_DELAY_FIRST, maximum: float = AUTH_DELAY_MAX) -> float:
    """How long to hold back the reply to the ``failures``-th failed login (1, 2, 4, ... s)."""
    growth: float = 2.0 ** min(max(failures - 1, 0), 32)  # past the cap anyway; no overflow
    return min(first * growth, maximum)


class AccountAuthenticator:
    """User name and password against the accounts of this host's domains; ``betty`` or ``betty@domain``.

    A bare name is accepted only when exactly one local domain has it, so that a host keeping two
    domains never opens the wrong mailbox.
    """

    def __init__(self, domains: Sequence[Domain]) -> None:
        self._accounts = [(d.name.lower(), a) for d in domains for a in d.accounts]

    def authenticate(self, user: str, password: str) -> str | None:
        local, at, domain = user.lower().rpartition("@")
        if not at:
            local, domain = domain, ""
        matches = [a for name, a in self._accounts
                   if a.user.lower() == local and (not domain or name == domain.rstrip("."))]
        if len(matches) != 1:
            return None
        account = matches[0]
        given = password.encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, account.password.encode("utf-8")):
            return f"{account.user}@{account.domain}".lower()
        return None
