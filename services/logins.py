"""How the lab's servers answer a wrong password: one rule for POP3 ``PASS`` and SMTP ``AUTH``.

Each refusal is held back, longer after each failure in a session (1, 2, 4, ... s, capped), so a
guesser pays in time while a typo costs a second. The rule is a pure function of the failure
count; the servers' asyncio shells do the waiting, the protocol cores only say how long.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTH_DELAY_FIRST = 1.0  # seconds before the first refusal; each further failure doubles it
AUTH_DELAY_MAX = 16.0  # the delay stops growing here, so a typo never costs a minute


@dataclass(frozen=True)
class LoginDelay:
    """The delay rule, with its two timings (tests shrink them)."""

    first: float = AUTH_DELAY_FIRST
    cap: float = AUTH_DELAY_MAX

    def after(self, failures: int) -> float:
        """How long to hold back the refusal of the ``failures``-th failed login (1, 2, 4, ... s)."""
        growth: float = 2.0 ** min(max(failures - 1, 0), 32)  # past the cap anyway; no overflow
        return min(self.first * growth, self.cap)


LOGIN_DELAY = LoginDelay()  # the servers' own


@dataclass(frozen=True)
class LoginLimits:
    """What an access server's session limits say about logins (POP3's and IMAP's extend it): the
    delay's timings and how many failures a connection gets before the server hangs up."""

    max_auth_failures: int = 5  # failed logins per connection (guessing costs a reconnect)
    auth_delay_first: float = AUTH_DELAY_FIRST
    auth_delay_max: float = AUTH_DELAY_MAX

    def auth_delay(self, failures: int) -> float:
        """How long to hold back the refusal of the ``failures``-th failed login."""
        return LoginDelay(self.auth_delay_first, self.auth_delay_max).after(failures)
