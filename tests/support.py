"""What several test modules share: an event loop on a thread for servers under test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
TIMEOUT = 10.0  # the longest a start, a stop or any call into the loop may take


class BackgroundLoop:
    """Servers run in this loop on a background thread, as in production; the tests talk to them
    with blocking clients (smtplib, poplib, raw sockets) from the test's own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, closers: list[Callable[[], Awaitable[None]]]) -> None:
        """Run the closers (each server's own close), cancel what is left, stop the loop.

        Cancelling the leftover connection tasks keeps Python from warning about tasks still
        pending when the loop closes.
        """
        async def stop() -> None:
            for close in closers:
                await close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


def server_closer(server: asyncio.Server) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        server.close()
        await server.wait_closed()
    return close
