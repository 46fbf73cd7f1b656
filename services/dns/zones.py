"""The lab's zones: ordinary master files (RFC 1035 §5.1), loaded once and only read afterwards.

Each ``NAME.zone`` file in the zone directory holds one zone whose ``$ORIGIN`` is ``NAME.`` (labctl
writes them so, see ``labctl/zonefiles.py``). dnspython parses the text; this module adds what a
server needs on top of a parsed zone: the names that exist (owners and empty non-terminals), the
SOA for negative answers, the enclosing zone of a query name, and errors that say
``file:line: what is wrong``.

The loader rejects what the answering code does not implement rather than serving it wrongly:
record types outside :data:`SUPPORTED_TYPES`, wildcards (no RFC 4592 synthesis), delegations
(NS below the apex: every lab zone is served here, each from its own file), and owner names outside
the zone (dnspython would drop those lines without a word, so a typo would just vanish).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import dns.exception
import dns.name
import dns.node
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.tokenizer
import dns.transaction
import dns.zone
import dns.zonefile

from services.errors import LocalError

T = dns.rdatatype.RdataType

# What the lab's zones may hold (the types protocols.md lists); each has its answer logic tested.
SUPPORTED_TYPES = frozenset({T.SOA, T.NS, T.A, T.AAAA, T.MX, T.TXT, T.CNAME, T.PTR})
ZONE_SUFFIX = ".zone"
# No $INCLUDE (it would read any file on the name server) and no $GENERATE (a BIND extension).
DIRECTIVES = ("$ORIGIN", "$TTL")


class ZoneError(LocalError):
    """A zone file cannot be served; ``str()`` is ``file:line: what is wrong``."""

    def __init__(self, source: str, line: int | None, detail: str) -> None:
        self.source = source
        self.line = line
        self.detail = detail
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {detail}")


@dataclass(frozen=True)
class Zone:
    """One authoritative zone. ``data`` is dnspython's zone, with absolute names; never mutated."""

    origin: dns.name.Name
    source: str  # the file it came from, for log lines
    data: dns.zone.Zone
    # Every name that exists in the zone: owners of records and the empty non-terminals between
    # them and the apex, which exist too and get NODATA, not NXDOMAIN (RFC 8020 §2, RFC 4592 §2.2.2).
    names: frozenset[dns.name.Name]
    # The SOA for negative answers, its TTL already min(SOA TTL, SOA MINIMUM) (RFC 2308 §3).
    negative_soa: dns.rdataset.Rdataset

    def exists(self, name: dns.name.Name) -> bool:
        return name in self.names

    def node(self, name: dns.name.Name) -> dns.node.Node | None:
        return self.data.get_node(name)

    def rdataset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.rdataset.Rdataset | None:
        node = self.data.get_node(name)
        return None if node is None else node.get_rdataset(dns.rdataclass.IN, rdtype)


@dataclass(frozen=True)
class Zones:
    """The set of zones the server is authoritative for, by origin."""

    by_origin: Mapping[dns.name.Name, Zone]

    @classmethod
    def of(cls, zones: Iterable[Zone]) -> Zones:
        by_origin: dict[dns.name.Name, Zone] = {}
        for z in zones:
            if z.origin in by_origin:
                raise ZoneError(z.source, None, f"zone {z.origin} is already loaded from {by_origin[z.origin].source}")
            by_origin[z.origin] = z
        return cls(MappingProxyType(by_origin))

    def find(self, name: dns.name.Name) -> Zone | None:
        """The zone that holds ``name``: the closest enclosing one (longest match), or None."""
        while True:
            zone = self.by_origin.get(name)
            if zone is not None:
                return zone
            if name == dns.name.root or len(name) == 0:
                return None
            name = name.parent()

    def __iter__(self) -> Iterator[Zone]:
        return iter(self.by_origin.values())

    def __len__(self) -> int:
        return len(self.by_origin)


# -- loading ---------------------------------------------------------------------------------------


def load_dir(directory: Path) -> Zones:
    """Every ``*.zone`` file in ``directory``; a server with no zone would only ever say REFUSED."""
    if not directory.is_dir():
        raise ZoneError(str(directory), None, "no such directory")
    paths = sorted(directory.glob("*" + ZONE_SUFFIX))
    if not paths:
        raise ZoneError(str(directory), None, f"no *{ZONE_SUFFIX} files")
    return Zones.of(load_file(p) for p in paths)


def load_file(path: Path) -> Zone:
    """One zone file, whose ``$ORIGIN`` must be its file name without ``.zone``."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ZoneError(source, None, f"cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ZoneError(source, raw[: exc.start].count(b"\n") + 1, "not UTF-8 text") from exc
    zone = parse(text, source)
    stem = path.name.removesuffix(ZONE_SUFFIX)
    try:
        named = dns.name.from_text(stem)
    except dns.exception.DNSException as exc:
        raise ZoneError(source, None, f"the file name {stem!r} is not a domain name: {exc}") from exc
    if zone.origin != named:
        raise ZoneError(
            source, None,
            f"$ORIGIN is {zone.origin} but the file is named for {named}; "
            f"rename the file {zone.origin.to_text(omit_final_dot=True)}{ZONE_SUFFIX}",
        )
    return zone


def parse(text: str, source: str = "<zone>") -> Zone:
    """Parse the text of one zone file; errors name ``source`` and the line."""
    tok = _Tokenizer(text, source)
    data = dns.zone.Zone(None, dns.rdataclass.IN, relativize=False)
    with data.writer(True) as txn:
        reader = _Reader(tok, txn)
        try:
            reader.read()
        except dns.exception.SyntaxError as exc:
            # The reader has already prefixed "source:line: "; take it apart to add the line's text.
            line, detail = _split_location(str(exc), source)
            raise _located(source, text, line if line is not None else tok.where()[1], detail) from None
        except dns.zonefile.UnknownOrigin:
            raise _located(source, text, tok.where()[1],
                           "a record before any $ORIGIN; start the file with `$ORIGIN <zone name>.`") from None
        except dns.zonefile.CNAMEAndOtherData:
            raise _located(source, text, tok.where()[1],
                           "a name with a CNAME can have no other records (RFC 1034 §3.6.2)") from None
        except Exception as exc:  # noqa: BLE001 - whatever dnspython objects to is in the file
            detail = str(exc) or type(exc).__name__
            if "non-origin SOA" in detail:  # dnspython's transaction refuses it before _check_record sees it
                detail = f"SOA at {reader.last_name} is misplaced: it belongs at the zone apex {reader.zone_origin}"
            raise _located(source, text, tok.where()[1], detail) from None
    try:
        data.check_origin()
    except dns.zone.NoSOA:
        raise ZoneError(source, None, f"no SOA record at the zone apex {data.origin}") from None
    except dns.zone.NoNS:
        raise ZoneError(source, None, f"no NS record at the zone apex {data.origin}") from None
    assert data.origin is not None  # check_origin() passed, so the reader found one
    soa = data.get_rdataset(data.origin, dns.rdatatype.SOA)
    assert soa is not None
    first: dns.rdtypes.ANY.SOA.SOA = soa[0]
    negative = dns.rdataset.from_rdata_list(min(soa.ttl, first.minimum), list(soa))
    return Zone(origin=data.origin, source=source, data=data, names=_existing_names(data.origin, data.nodes),
                negative_soa=negative)


def _existing_names(origin: dns.name.Name, owners: Iterable[dns.name.Name]) -> frozenset[dns.name.Name]:
    names = {origin}
    for name in owners:
        while name != origin and name not in names:
            names.add(name)
            name = name.parent()
    return frozenset(names)


_LOCATION = re.compile(r"(?P<line>\d+): (?P<detail>.*)", re.DOTALL)
# dnspython wraps errors from rdata parsing as "caught exception <class 'X'>: message".
_CAUGHT = re.compile(r"caught exception <class '[\w.]+'>: ")


def _split_location(message: str, source: str) -> tuple[int | None, str]:
    if message.startswith(source + ":"):
        m = _LOCATION.fullmatch(message[len(source) + 1:])
        if m:
            return int(m["line"]), _CAUGHT.sub("", m["detail"])
    return None, _CAUGHT.sub("", message)


def _located(source: str, text: str, line: int, detail: str) -> ZoneError:
    lines = text.splitlines()
    if 1 <= line <= len(lines) and lines[line - 1].strip():
        detail = f"{detail} (the line reads: {lines[line - 1].strip()})"
    return ZoneError(source, line, detail)


class _Tokenizer(dns.tokenizer.Tokenizer):
    """A tokenizer whose ``where()`` is the line of the last token read.

    dnspython's own counts a newline as soon as it peeks at it, so an error found in the last field
    of a record (a bad address, say) would be reported on the line after the record.
    """

    def __init__(self, text: str, filename: str) -> None:
        super().__init__(text, filename)
        self.token_line = 1

    def get(self, want_leading: bool = False, want_comment: bool = False) -> dns.tokenizer.Token:
        fresh = self.ungotten_token is None
        token = super().get(want_leading, want_comment)
        if fresh and not (token.is_eol_or_eof() or token.is_whitespace() or token.is_comment()):
            self.token_line = self.line_number - (1 if self.ungotten_char == "\n" else 0)
        return token

    def where(self) -> tuple[str, int]:
        return self.filename, self.token_line


class _Reader(dns.zonefile.Reader):
    """dnspython's master file reader, refusing what the lab's server does not implement.

    A SyntaxError raised here gets ``file:line:`` from the reader like any parse error.
    """

    def __init__(self, tok: dns.tokenizer.Tokenizer, txn: dns.transaction.Transaction) -> None:
        super().__init__(tok, dns.rdataclass.IN, txn, allow_directives=DIRECTIVES)
        txn.check_put_rdataset(self._check_record)

    def _eat_line(self) -> None:
        # dnspython calls this to skip, silently, a record whose owner is outside the zone.
        raise _refused(f"{self.last_name} is outside the zone {self.zone_origin}")

    def _check_record(self, txn: dns.transaction.Transaction, name: dns.name.Name,
                      rdataset: dns.rdataset.Rdataset) -> None:
        rdtype = rdataset.rdtype
        if rdtype not in SUPPORTED_TYPES:
            supported = " ".join(sorted(dns.rdatatype.to_text(t) for t in SUPPORTED_TYPES))
            raise _refused(
                f"type {dns.rdatatype.to_text(rdtype)} is not served by the lab DNS (it serves {supported})")
        if name.is_wild():
            raise _refused(
                "wildcard names are not supported (no RFC 4592 synthesis): list each name")
        if rdtype == T.NS and name != self.zone_origin:
            raise _refused(f"NS at {name} is a delegation: NS belongs at the zone apex {self.zone_origin}; "
                           "give a subzone its own file")
        # dnspython keeps one record of a singleton type, the last: a second would silently win.
        if dns.rdatatype.is_singleton(rdtype) and txn.get(name, rdtype) is not None:
            raise _refused(
                f"a second {dns.rdatatype.to_text(rdtype)} record for {name}; a name has only one")


def _refused(detail: str) -> dns.exception.SyntaxError:
    """A SyntaxError, which the reader prefixes with ``file:line:`` like its own."""
    return dns.exception.SyntaxError(detail)  # type: ignore[no-untyped-call]
