"""Log lines batched on the event loop: fewer writes, nothing lost, order kept."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from services.logbuffer import CoalescingHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def make_logger(stream: CountingStream, delay: float) -> tuple[logging.Logger, CoalescingHandler]:
    handler = CoalescingHandler(stream, delay=delay)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test-logbuffer-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, handler


def test_lines_logged_on_the_loop_go_out_in_one_write_within_the_delay() -> None:
    stream = CountingStream()
    logger, _ = make_logger(stream, delay=0.05)

    async def run() -> tuple[str, str]:
        for i in range(100):
            logger.info("line %d", i)
        before = stream.getvalue()
        await asyncio.sleep(0.2)
        return before, stream.getvalue()

    before, after = asyncio.run(run())
    assert before == ""  # held, not yet written
    assert after == "".join(f"line {i}\n" for i in range(100))
    assert stream.writes == 1


def test_a_line_from_another_thread_is_written_at_once_after_those_held() -> None:
    stream = CountingStream()
    logger, _ = make_logger(stream, delay=10.0)

    async def run() -> str:
        logger.info("on the loop")
        t = threading.Thread(target=logger.info, args=("from a thread",))
        t.start()
        t.join()
        return stream.getvalue()

    assert asyncio.run(run()) == "on the loop\nfrom a thread\n"


def test_without_a_loop_every_line_is_written_at_once() -> None:
    stream = CountingStream()
    logger, _ = make_logger(stream, delay=10.0)
    logger.info("starting")
    assert stream.getvalue() == "starting\n"


def test_flush_writes_what_is_held_and_the_timer_then_writes_nothing_twice() -> None:
    stream = CountingStream()
    logger, handler = make_logger(stream, delay=0.01)

    async def run() -> None:
        logger.info("last words")
        handler.flush()  # as logging.shutdown() does at exit
        await asyncio.sleep(0.05)

    asyncio.run(run())
    assert stream.getvalue() == "last words\n" and stream.writes == 1
