"""Waiting on a lab: one way to look again until a condition holds, with a deadline on every wait.

A lab is asynchronous everywhere (the relay, the retry schedule, the capture files that lag the
wire), so its tests wait on conditions, never for a fixed time (style.md: no ``sleep()`` in tests
where a wait on readiness works). The timeouts the tests pass are tuned for a loaded two-core CI
machine: a wait that ends early here is the normal case, the timeout is the bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.2  # seconds between looks, unless a wait says otherwise
SHOWN = 2000  # characters of the last value seen that a timeout shows (a queue listing can be long)


def eventually(check: Callable[[], T | None], timeout: float, what: str, *, interval: float = INTERVAL) -> T:
    """Call ``check`` until it returns a true value, and return that value.

    ``check`` says "not yet" by returning a false value or by raising AssertionError; whatever it
    does on each look (re-send, re-fetch, flush a queue) belongs inside it. Any other exception,
    ``pytest.fail`` included, ends the wait at once: use that for what must never happen, not even
    once. After ``timeout`` seconds the test fails naming ``what`` it waited for and the last
    value or assertion seen, so a timeout says how far the lab got.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except AssertionError as exc:
            last = f"last assertion: {exc}"
        else:
            if value:
                return value
            last = f"last seen: {value!r}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s; {last[:SHOWN]}")
        time.sleep(interval)
