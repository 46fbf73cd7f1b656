"""The lab's mail accounts as the access servers check them: POP3, IMAP and SMTP AUTH alike.

Which account a user name and password open (:class:`AccountAuthenticator`), once for all of
them; how long a wrong password is answered late is :mod:`services.logins`.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from services.config import Domain


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
