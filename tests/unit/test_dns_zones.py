"""Loading the lab's zone files: what a good file gives, and what a bad one says (file:line: why)."""

from __future__ import annotations

from pathlib import Path

import dns.name
import dns.rdatatype
import pytest

from services.dns.zones import Zone, ZoneError, Zones, load_dir, load_file, parse

ZONES_DIR = Path(__file__).parent / "data" / "zones"

HEAD = """\
$ORIGIN s.example.
$TTL 300
@\tIN\tSOA\tns.lab.example. hostmaster.s.example. (1 3600 600 86400 120)
@\tIN\tNS\tns.lab.example.
"""  # four lines: a bad line appended to it is line 5


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def records(zone: Zone, owner: str, rdtype: str) -> list[str]:
    found = zone.rdataset(name(owner), dns.rdatatype.from_text(rdtype))
    return sorted(r.to_text() for r in found) if found else []


def write(tmp_path: Path, filename: str, text: str) -> Path:
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    return path


# -- good files ----------------------------------------------------------------------------------


def test_the_lab_zone_set_loads_with_its_records() -> None:
    zones = load_dir(ZONES_DIR)
    assert sorted(z.origin.to_text() for z in zones) == [
        "0.89.10.in-addr.arpa.", "edge.example.", "lab.example.", "ouhk.example.", "stevenchoy.example.",
    ]
    steven = zones.by_origin[name("stevenchoy.example.")]
    assert records(steven, "stevenchoy.example.", "MX") == ["10 mail.stevenchoy.example."]
    assert records(steven, "stevenchoy.example.", "NS") == ["ns.lab.example."]
    assert records(steven, "mail.stevenchoy.example.", "A") == ["10.89.0.110"]
    ouhk = zones.by_origin[name("ouhk.example.")]
    assert records(ouhk, "ouhk.example.", "MX") == ["10 smtp.ouhk.example."]
    assert steven.source == str(ZONES_DIR / "stevenchoy.example.zone")


def test_the_zone_files_labctl_writes_load(tmp_path: Path) -> None:
    from labctl import topology, zonefiles

    for filename, body in zonefiles.render(topology.load()).items():
        write(tmp_path, filename, body)
    zones = load_dir(tmp_path)
    assert len(zones) == len(list(tmp_path.glob("*.zone")))
    mail = zones.find(name("mail.stevenchoy.example."))
    assert mail is not None and records(mail, "mail.stevenchoy.example.", "A") == ["10.89.0.110"]


def test_a_reverse_zone_is_a_zone_like_any_other() -> None:
    zones = load_dir(ZONES_DIR)
    reverse = zones.find(name("25.0.89.10.in-addr.arpa."))
    assert reverse is not None and reverse.origin == name("0.89.10.in-addr.arpa.")
    assert records(reverse, "25.0.89.10.in-addr.arpa.", "PTR") == ["smtp.ouhk.example."]


def test_every_supported_type_loads() -> None:
    zone = parse(HEAD + "a\tIN\tA\t10.89.0.1\n"
                        "a\tIN\tAAAA\tfd00::1\n"
                        "@\tIN\tMX\t10 a\n"
                        "@\tIN\tTXT\t\"v=spf1 -all\"\n"
                        "www\tIN\tCNAME\ta\n"
                        "p\tIN\tPTR\ta.s.example.\n", "s.example.zone")
    assert records(zone, "a.s.example.", "AAAA") == ["fd00::1"]
    assert records(zone, "s.example.", "MX") == ["10 a.s.example."]  # relative names made absolute
    assert records(zone, "s.example.", "TXT") == ['"v=spf1 -all"']
    assert records(zone, "www.s.example.", "CNAME") == ["a.s.example."]
    assert records(zone, "p.s.example.", "PTR") == ["a.s.example."]


def test_names_include_empty_non_terminals_but_not_what_is_below_a_leaf() -> None:
    zone = parse(HEAD + "leaf.branch\tIN\tA\t10.89.0.1\n", "s.example.zone")
    assert zone.exists(name("branch.s.example."))  # no records, yet it exists (RFC 8020)
    assert zone.node(name("branch.s.example.")) is None
    assert zone.exists(name("LEAF.Branch.s.example."))  # names compare without case
    assert not zone.exists(name("below.leaf.branch.s.example."))
    assert not zone.exists(name("other.s.example."))


def test_negative_answers_use_the_smaller_of_soa_ttl_and_minimum() -> None:
    assert parse(HEAD, "s.example.zone").negative_soa.ttl == 120  # RFC 2308 §3
    assert parse(HEAD.replace("$TTL 300", "$TTL 60"), "s.example.zone").negative_soa.ttl == 60


def test_find_is_the_longest_match() -> None:
    parent = parse(HEAD, "s.example.zone")
    child = parse(HEAD.replace("s.example.", "sub.s.example."), "sub.s.example.zone")
    zones = Zones.of([parent, child])
    assert zones.find(name("a.b.sub.s.example.")) is child
    assert zones.find(name("SUB.S.Example.")) is child
    assert zones.find(name("other.s.example.")) is parent
    assert zones.find(name("s.example.")) is parent
    assert zones.find(name("example.")) is None
    assert zones.find(name("xs.example.")) is None  # a suffix of text is not a parent domain
    assert zones.find(dns.name.root) is None
    assert len(zones) == 2


def test_two_files_for_one_zone_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "s.example.zone", HEAD)
    write(tmp_path, "S.Example.zone", HEAD)
    with pytest.raises(ZoneError, match="zone s.example. is already loaded from"):
        load_dir(tmp_path)


# -- bad files -----------------------------------------------------------------------------------

BAD_RECORDS = [
    # (appended as line 5, what the error must say)
    ("mail\tIN\tA\t10.89.0.300", "malformed"),
    ("mail\tIN\tFOO\t1", "unknown rdatatype 'FOO'"),
    ("@\tIN\tMX\tmail", "expecting an integer"),
    ("x\tIN\tMX\t10 mail )", "malformed"),
    ('x\tIN\tTXT\t"open', "newline in quoted string"),
    ("a" * 64 + "\tIN\tA\t10.89.0.1", "label is > 63 octets"),
    ("x\tCH\tA\t10.89.0.1", "class"),
    ("$INCLUDE /etc/passwd", "'$INCLUDE' is not allowed"),
    ("$GENERATE 1-3 h$ A 10.0.0.$", "'$GENERATE' is not allowed"),
    ("_sip._tcp\tIN\tSRV\t0 0 5060 sip", "type SRV is not served"),
    ("*\tIN\tA\t10.89.0.1", "wildcard"),
    ("sub\tIN\tNS\tns.sub", "NS at sub.s.example. is a delegation"),
    ("sub\tIN\tSOA\tns. h. 1 2 3 4 5", "SOA at sub.s.example. is misplaced: it belongs at the zone apex s.example."),
    ("@\tIN\tSOA\tns. h. 2 3 4 5 6", "a second SOA record"),
    ("mail.other.example.\tIN\tA\t10.89.0.1", "mail.other.example. is outside the zone s.example."),
]


@pytest.mark.parametrize(("line", "says"), BAD_RECORDS)
def test_a_bad_record_is_reported_at_its_own_line(tmp_path: Path, line: str, says: str) -> None:
    path = write(tmp_path, "s.example.zone", HEAD + line + "\nok\tIN\tA\t10.89.0.2\n")
    with pytest.raises(ZoneError) as caught:
        load_file(path)
    err = caught.value
    assert (err.source, err.line) == (str(path), 5)
    assert says in err.detail
    assert str(err).startswith(f"{path}:5: ")
    assert line.strip()[:20] in str(err)  # the offending text is quoted, for a student to find


def test_a_cname_beside_other_data_names_the_second_record(tmp_path: Path) -> None:
    path = write(tmp_path, "s.example.zone", HEAD + "www\tIN\tCNAME\tmail\nwww\tIN\tA\t10.89.0.1\n")
    with pytest.raises(ZoneError, match=r":6: a name with a CNAME can have no other records"):
        load_file(path)


def test_an_error_inside_a_multi_line_record_names_its_line(tmp_path: Path) -> None:
    text = HEAD + 'x\tIN\tTXT\t( "one"\n\t"two" )\ny\tIN\tA\t10.89.0\n'
    with pytest.raises(ZoneError) as caught:
        load_file(write(tmp_path, "s.example.zone", text))
    assert caught.value.line == 7
    with pytest.raises(ZoneError, match=r"zone:5: unbalanced parentheses"):  # still open at the end
        load_file(write(tmp_path, "s.example.zone", HEAD + "x\tIN\tMX\t( 10\n\n"))


def test_a_bad_ttl_directive(tmp_path: Path) -> None:
    with pytest.raises(ZoneError, match=r"s\.example\.zone:2: DNS TTL value is not well-formed"):
        load_file(write(tmp_path, "s.example.zone", HEAD.replace("$TTL 300", "$TTL soon")))


def test_records_before_any_origin(tmp_path: Path) -> None:
    text = HEAD.replace("$ORIGIN s.example.\n", "; no origin\n")
    with pytest.raises(ZoneError, match=r"zone:3: a record before any \$ORIGIN"):
        load_file(write(tmp_path, "s.example.zone", text))


def test_no_soa_or_no_ns_at_the_apex(tmp_path: Path) -> None:
    no_soa = "\n".join(line for line in HEAD.splitlines() if "SOA" not in line) + "\n"
    with pytest.raises(ZoneError, match="no SOA record at the zone apex s.example.") as caught:
        load_file(write(tmp_path, "s.example.zone", no_soa))
    assert caught.value.line is None
    no_ns = "\n".join(line for line in HEAD.splitlines() if "\tNS\t" not in line) + "\n"
    with pytest.raises(ZoneError, match="no NS record at the zone apex s.example."):
        load_file(write(tmp_path, "s.example.zone", no_ns))


def test_the_file_name_must_match_the_origin(tmp_path: Path) -> None:
    with pytest.raises(ZoneError, match=r"\$ORIGIN is s.example. but the file is named for t.example.; "
                                        r"rename the file s.example.zone"):
        load_file(write(tmp_path, "t.example.zone", HEAD))


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "s.example.zone"
    path.write_bytes(HEAD.encode() + b"x\tIN\tTXT\t\"caf\xe9\"\n")
    with pytest.raises(ZoneError, match=r"zone:5: not UTF-8 text"):
        load_file(path)


def test_an_empty_or_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ZoneError, match=r"no \*\.zone files"):
        load_dir(tmp_path)
    with pytest.raises(ZoneError, match="no such directory"):
        load_dir(tmp_path / "missing")


def test_load_dir_reports_the_first_bad_file(tmp_path: Path) -> None:
    write(tmp_path, "s.example.zone", HEAD)
    write(tmp_path, "t.example.zone", HEAD.replace("s.example.", "t.example.") + "x\tIN\tA\tnope\n")
    with pytest.raises(ZoneError) as caught:
        load_dir(tmp_path)
    assert caught.value.source == str(tmp_path / "t.example.zone")
    assert caught.value.line == 5
