"""Reading a reassembled stream line by line, with the capture time of each line."""

from __future__ import annotations

from dataclasses import dataclass

from labctl.traffic.tcp import StreamView


@dataclass(frozen=True, slots=True)
class Line:
    start: int  # stream offset of its first octet
    end: int  # stream offset just after its LF (or the stream's end for an unfinished line)
    text: bytes  # without CR LF
    time: float
    complete: bool  # ended by LF
    missing: int  # octets the capture missed within it


class LineReader:
    """A cursor over a :class:`StreamView` for line-based protocols (SMTP, POP3)."""

    def __init__(self, view: StreamView, start: int = 0) -> None:
        self.view = view
        self.data = view.data
        self.pos = start

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def time(self, offset: int) -> float:
        return self.view.time_at(offset) / 1e9

    def next(self) -> Line | None:
        """The next line, or None at the end of the stream."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            return None
        nl = data.find(b"\n", pos)
        complete = nl >= 0
        end = nl + 1 if complete else len(data)
        text = data[pos:nl - 1 if nl > pos and data[nl - 1] == 13 else nl] if complete else data[pos:end]
        self.pos = end
        return Line(pos, end, text, self.time(pos), complete, self.view.gap_in(pos, end))

    def skip_partial(self) -> None:
        """Joined mid-way: drop the rest of the line the capture started in."""
        nl = self.data.find(b"\n", self.pos)
        self.pos = len(self.data) if nl < 0 else nl + 1

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk
