"""Capture files: read classic pcap and pcapng, write one merged pcapng.

Bytes in, :class:`Frame` objects out; no file is opened here and no tool is run.

Why a hand-written reader on :mod:`struct`, not a library: the two formats are small, stable and
fully specified (pcap: the libpcap file format, draft-ietf-opsawg-pcap; pcapng:
draft-ietf-opsawg-pcapng), and what the lab needs of them is a record header and a few options.
Measured (best of 3, counting the frames of the 76.1 MB, 4,456-packet merged lab capture that
``bench/bench_traffic.py`` makes; Python 3.11 on the 2-core build machine): this reader 41 ms,
dpkt 1.9.8 93 ms, scapy 2.8.0 916 ms (it dissects every packet into objects). dpkt's pcapng
reader also yields no interface per packet (we need the host a packet was captured on) and raises
``NeedData`` on a pcapng cut mid-block, while a capture still being written ends in half a record,
which must end the reading quietly (:attr:`CaptureReader.problem`). tshark is the baseline the
benchmark compares against, not a dependency: most student machines lack it. Frames are views
into the file's bytes (``memoryview``), not copies.

Timestamps are kept as integer nanoseconds end to end, so a merge of nanosecond captures loses
nothing; :attr:`Frame.time` gives seconds as a float for display.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from labctl.errors import LabctlError

# -- link types (https://www.tcpdump.org/linktypes.html) -----------------------------------------
LINKTYPE_NULL = 0  # BSD loopback: a 4-octet address family in the writer's byte order
LINKTYPE_ETHERNET = 1  # EN10MB
LINKTYPE_RAW = 101  # a bare IPv4 or IPv6 packet
LINKTYPE_LOOP = 108  # OpenBSD loopback: the family in network byte order
LINKTYPE_LINUX_SLL = 113  # tcpdump -i any before libpcap 1.10
LINKTYPE_LINUX_SLL2 = 276  # tcpdump -i any since libpcap 1.10

# -- classic pcap ---------------------------------------------------------------------------------
PCAP_MAGIC_US = 0xA1B2C3D4  # microsecond timestamps
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps
_PCAP_HEADER = 24
_PCAP_RECORD = 16
# A record longer than this is garbage, not a packet (libpcap's own bound, MAXIMUM_SNAPLEN).
MAX_RECORD = 262_144

# -- pcapng ---------------------------------------------------------------------------------------
BLOCK_SHB = 0x0A0D0D0A  # section header; a palindrome, so readable before the byte order is known
BLOCK_IDB = 0x00000001  # interface description
BLOCK_SPB = 0x00000003  # simple packet: interface 0, no timestamp
BLOCK_DSB = 0x0000000A  # Decryption Secrets Block (pcapng §4.7): Wireshark decrypts TLS with it
SECRETS_TLS_KEYLOG = 0x544C534B  # "TLSK": the NSS key log format
BLOCK_EPB = 0x00000006  # enhanced packet
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END = 0
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9  # one octet: 10^-n seconds, or 2^-n if the high bit is set; default 10^-6
OPT_IF_TSOFFSET = 14  # seconds to add to every timestamp of the interface
MAX_BLOCK = 16 * 1024 * 1024  # a block larger than this is a corrupt length, not a packet


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured link-layer frame."""

    ts_ns: int  # capture time, nanoseconds since the epoch
    linktype: int
    # As captured (possibly cut at the snap length): a view into the capture file's bytes, not a
    # copy; copying every packet cost a third of the decoding time of a 76 MB capture.
    data: bytes | memoryview
    interface: str  # where it was captured: the pcapng interface name, or the caller's name for a pcap
    orig_len: int  # its length on the wire

    @property
    def time(self) -> float:
        return self.ts_ns / 1e9


class CaptureError(LabctlError):
    """The bytes are no capture file at all (a cut or corrupt end is not an error: see ``problem``)."""


@dataclass
class _Interface:
    linktype: int
    name: str
    units_per_s: int  # timestamp units per second
    offset_s: int


class CaptureReader:
    """Iterate the frames of one capture file given as bytes (classic pcap or pcapng).

    ``source`` names the frames of a classic pcap (it has no interface names): the lab passes the
    host the file was captured on. After iterating, :attr:`problem` says why the reading stopped
    before the end of the bytes, if it did: the file ends inside a record (a capture still being
    written) or a record is corrupt. The frames before it are all given; nothing raises once the
    file is known to be a capture.
    """

    def __init__(self, data: bytes, source: str = "") -> None:
        self.data = data
        self.source = source
        self.problem: str | None = None
        self.secrets: list[str] = []  # TLS key logs of the pcapng's Decryption Secrets Blocks, once read
        self.format = self._sniff()

    def _sniff(self) -> str:
        if len(self.data) < 4:
            if self.data:
                raise CaptureError(f"{self.source or 'capture'}: {len(self.data)} octets is no capture file")
            return "empty"
        head = self.data[:4]
        if struct.unpack("<I", head)[0] == BLOCK_SHB:
            return "pcapng"
        for order in "<>":
            if struct.unpack(order + "I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                return "pcap"
        raise CaptureError(f"{self.source or 'capture'}: not a pcap or pcapng file "
                           f"(it starts with {head.hex()}; write captures with tcpdump -w)")

    def _stop(self, pos: int, why: str = "ends inside a record (a capture still being written?)") -> None:
        self.problem = f"{self.source or 'capture'}: {why} at octet {pos}; read up to there"

    def __iter__(self) -> Iterator[Frame]:
        if self.format == "pcap":
            return self._pcap()
        if self.format == "pcapng":
            return self._pcapng()
        return iter(())

    # -- classic pcap -----------------------------------------------------------------------------

    def _pcap(self) -> Iterator[Frame]:
        data = self.data
        if len(data) < _PCAP_HEADER:
            self._stop(0)
            return
        order = "<" if struct.unpack("<I", data[:4])[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        magic, _major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(order + "IHHiIII", data[:24])
        # The link type is the low 16 bits; the FCS length may ride in the upper bits (pcap spec §4).
        linktype = network & 0xFFFF
        scale = 1 if magic == PCAP_MAGIC_NS else 1000
        name = self.source
        record = struct.Struct(order + "IIII")
        view = memoryview(data)
        unpack = record.unpack_from
        pos, end = _PCAP_HEADER, len(data)
        while pos < end:
            if pos + _PCAP_RECORD > end:
                self._stop(pos)
                return
            sec, frac, caplen, origlen = unpack(data, pos)
            pos += _PCAP_RECORD
            if caplen > MAX_RECORD:
                self._stop(pos - _PCAP_RECORD, f"a record claims {caplen} octets (corrupt)")
                return
            if pos + caplen > end:
                self._stop(pos - _PCAP_RECORD)
                return
            yield Frame(sec * 1_000_000_000 + frac * scale, linktype, view[pos:pos + caplen], name, origlen)
            pos += caplen

    # -- pcapng -----------------------------------------------------------------------------------

    def _pcapng(self) -> Iterator[Frame]:
        data = self.data
        view = memoryview(data)
        pos, end = 0, len(data)
        order = "<"
        interfaces: list[_Interface] = []
        while pos < end:
            if pos + 12 > end:
                self._stop(pos)
                return
            btype = struct.unpack_from(order + "I", data, pos)[0]
            if btype == BLOCK_SHB:
                bom = data[pos + 8:pos + 12]
                if struct.unpack("<I", bom)[0] == BYTE_ORDER_MAGIC:
                    order = "<"
                elif struct.unpack(">I", bom)[0] == BYTE_ORDER_MAGIC:
                    order = ">"
                else:
                    self._stop(pos, "a pcapng section without its byte-order magic (corrupt)")
                    return
                interfaces = []  # interface ids are numbered per section
            blen = struct.unpack_from(order + "I", data, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                self._stop(pos, f"a pcapng block of length {blen} (corrupt)")
                return
            if pos + blen > end:
                self._stop(pos)
                return
            body = pos + 8
            if btype == BLOCK_IDB:
                linktype = struct.unpack_from(order + "H", data, body)[0]
                iface = _Interface(linktype, f"{self.source or 'if'}{len(interfaces)}", 1_000_000, 0)
                for code, value in _options(data, body + 8, pos + blen - 4, order):
                    if code == OPT_IF_NAME:
                        iface.name = value.rstrip(b"\0").decode("utf-8", "replace")
                    elif code == OPT_IF_TSRESOL and value:
                        r = value[0]
                        iface.units_per_s = 2 ** (r & 0x7F) if r & 0x80 else 10 ** r
                    elif code == OPT_IF_TSOFFSET and len(value) == 8:
                        iface.offset_s = struct.unpack(order + "q", value)[0]
                interfaces.append(iface)
            elif btype == BLOCK_EPB:
                if_id, hi, lo, caplen, origlen = struct.unpack_from(order + "IIIII", data, body)
                if if_id < len(interfaces) and body + 20 + caplen <= pos + blen:
                    iface = interfaces[if_id]
                    ts = (hi << 32) | lo
                    ts_ns = ts * 1_000_000_000 // iface.units_per_s + iface.offset_s * 1_000_000_000
                    yield Frame(ts_ns, iface.linktype, view[body + 20:body + 20 + caplen], iface.name, origlen)
            elif btype == BLOCK_DSB and blen >= 20:
                stype, slen = struct.unpack_from(order + "II", data, body)
                if stype == SECRETS_TLS_KEYLOG and body + 8 + slen <= pos + blen:
                    self.secrets.append(bytes(data[body + 8:body + 8 + slen]).decode("utf-8", "replace"))
            elif btype == BLOCK_SPB:
                if interfaces:
                    origlen = struct.unpack_from(order + "I", data, body)[0]
                    caplen = min(origlen, blen - 16)
                    iface = interfaces[0]
                    # No timestamp (pcapng §4.4): 0, which sorts it first; the lab writes none of these.
                    yield Frame(0, iface.linktype, view[body + 4:body + 4 + caplen], iface.name, origlen)
            pos += blen


def pcap_records_end(data: bytes | memoryview) -> int | None:
    """Where the last whole record of a classic pcap ends: the part of a file still being written
    that can be read now (its header's end if no record is whole yet, 0 if the header is not
    complete). None when ``data`` is not a classic pcap. A corrupt record ends the readable part.
    """
    if len(data) < _PCAP_HEADER:
        return 0
    magic = bytes(data[:4])
    order = next((o for o in "<>" if struct.unpack(o + "I", magic)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS)), None)
    if order is None:
        return None
    caplen_at = struct.Struct(order + "I").unpack_from
    pos, end = _PCAP_HEADER, len(data)
    while pos + _PCAP_RECORD <= end:
        caplen = caplen_at(data, pos + 8)[0]
        if caplen > MAX_RECORD or pos + _PCAP_RECORD + caplen > end:
            break
        pos += _PCAP_RECORD + caplen
    return pos


PCAP_HEADER_SIZE = _PCAP_HEADER


def _options(data: bytes, pos: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", data, pos)
        if code == OPT_END:
            return
        yield code, data[pos + 4:pos + 4 + length]
        pos += 4 + length + (-length % 4)


# -- the merged pcapng ------------------------------------------------------------------------------


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


SHB = _block(BLOCK_SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
             + _option(4, b"maillab (labctl capture export)") + _option(OPT_END, b""))  # shb_userappl


def idb(name: str, linktype: int) -> bytes:
    """An interface description block named ``name``, with nanosecond timestamps."""
    options = _option(OPT_IF_NAME, name.encode()) + _option(OPT_IF_TSRESOL, bytes([9])) + _option(OPT_END, b"")
    return _block(BLOCK_IDB, struct.pack("<HHI", linktype, 0, 0) + options)


def epb(if_id: int, frame: Frame) -> bytes:
    ts = frame.ts_ns
    return _block(BLOCK_EPB, struct.pack("<IIIII", if_id, ts >> 32, ts & 0xFFFFFFFF, len(frame.data),
                                         frame.orig_len) + frame.data)


def merge_frames(sources: Mapping[str, Iterable[bytes]], since: float | None = None,
                 problems: list[str] | None = None, secrets: list[str] | None = None) -> Iterator[Frame]:
    """The frames of several hosts' capture files, in timestamp order, each named after its host.

    ``sources`` maps a host to the contents of its capture files (rotated files, any order).
    Each file is in time order already, so a heap merge of the files is enough (and keeps memory
    at one pending frame per file). Frames before ``since`` (seconds since the epoch) are left out.
    A file that ends early (see :attr:`CaptureReader.problem`) adds its problem to ``problems``;
    a pcapng's TLS key log (its Decryption Secrets Blocks) goes to ``secrets`` once it is read.
    """
    floor = int(since * 1e9) if since is not None else None
    streams: list[Iterator[Frame]] = []
    for host, files in sources.items():
        for data in files:
            streams.append(_renamed(CaptureReader(data, host), host, floor, problems, secrets))
    return heapq.merge(*streams, key=lambda f: f.ts_ns)


def _renamed(reader: CaptureReader, host: str, floor: int | None, problems: list[str] | None,
             secrets: list[str] | None = None) -> Iterator[Frame]:
    for f in reader:
        if floor is None or f.ts_ns >= floor:
            yield f if f.interface == host else Frame(f.ts_ns, f.linktype, f.data, host, f.orig_len)
    if reader.problem is not None and problems is not None:
        problems.append(reader.problem)
    if secrets is not None:
        secrets += reader.secrets


def dsb(keylog: str) -> bytes:
    """A Decryption Secrets Block carrying a TLS key log (pcapng §4.7, secrets type "TLSK")."""
    text = keylog.encode("utf-8")
    return _block(BLOCK_DSB, struct.pack("<II", SECRETS_TLS_KEYLOG, len(text)) + text)


def write_pcapng(frames: Iterable[Frame], out: BinaryIO, *, keylog: str | None = None) -> int:
    """Write ``frames`` as one pcapng section, one interface per (interface name, link type).

    Returns the number of packets written. Frames keep their interface name as the IDB's
    ``if_name``, so Wireshark shows which host each packet was captured on
    (``frame.interface_name``). ``keylog``: TLS secrets, written in a Decryption Secrets Block
    before the first packet, so Wireshark and tshark decrypt with no settings.
    """
    out.write(SHB)
    if keylog:
        out.write(dsb(keylog))
    ids: dict[tuple[str, int], int] = {}
    count = 0
    for frame in frames:
        key = (frame.interface, frame.linktype)
        if_id = ids.get(key)
        if if_id is None:
            if_id = ids[key] = len(ids)
            out.write(idb(frame.interface, frame.linktype))  # an IDB may come anywhere before its use
        out.write(epb(if_id, frame))
        count += 1
    return count


def write_merged_pcapng(sources: Mapping[str, Iterable[bytes]], out: BinaryIO, since: float | None = None, *,
                        problems: list[str] | None = None, keylog: str | None = None) -> int:
    """Merge per-host capture files into one pcapng on ``out``; the number of packets written.

    One interface per host, named after the host, so the per-host origin is kept; packets in
    timestamp order. See :func:`merge_frames` for ``sources``, ``since`` and ``problems``.
    """
    return write_pcapng(merge_frames(sources, since, problems), out, keylog=keylog)
