"""Decoding shortcuts for the tests: frames of one file, conversations of whole captures."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from labctl.traffic.decode import TrafficDecoder, decode_sources
from labctl.traffic.model import Conversation
from labctl.traffic.pcap import CaptureReader, Frame


def read_frames(data: bytes, source: str = "") -> Iterator[Frame]:
    """The frames of one capture file (classic pcap or pcapng), in file order."""
    return iter(CaptureReader(data, source))


def decode_captures(captures: Mapping[str, bytes] | bytes, names: Mapping[str, str] | None = None, *,
                    show_bodies: bool = False) -> tuple[list[Conversation], TrafficDecoder]:
    """Decode whole capture files: one (merged pcapng, or a pcap), or {host: pcap bytes} merged by time."""
    if isinstance(captures, bytes):
        decoder = TrafficDecoder(names, show_bodies=show_bodies)
        decoder.feed_capture(captures)  # a pcapng's interfaces keep their names
        decoder.tcp.finish()
    else:
        decoder = decode_sources({host: [data] for host, data in captures.items()}, names, show_bodies=show_bodies)
    return decoder.conversations(), decoder


def only_conversation(capture: bytes, names: Mapping[str, str] | None = None, *,
                      show_bodies: bool = False) -> Conversation:
    """The one conversation of a capture file (a test's single connection)."""
    conversations, _decoder = decode_captures(capture, names, show_bodies=show_bodies)
    [conversation] = conversations
    return conversation
