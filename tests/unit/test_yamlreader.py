"""The checked reader every labctl file is read with: each rule once, each error at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import yamlsource
from labctl.errors import SourceError
from labctl.yamlreader import Reader, describe


def reader(text: str) -> Reader:
    return Reader(yamlsource.load(Path("f.yml"), text))


def test_a_mapping_names_the_wrong_key_and_the_valid_ones() -> None:
    r = reader("a:\n  b: 1\n  c: 2\n")
    assert r.mapping(r.value_at(("a",)), ("a",), ("b", "c"), "a") == {"b": 1, "c": 2}
    with pytest.raises(SourceError, match=r"f.yml:3: unknown key 'c' in a; valid keys: b"):
        r.mapping(r.value_at(("a",)), ("a",), ("b",), "a")
    with pytest.raises(SourceError, match="f.yml:1: a must be a mapping .key: value., not nothing"):
        r.mapping(None, ("a",), None, "a")
    assert r.mapping(None, ("a",), None, "a", optional=True) == {}
    with pytest.raises(SourceError, match="keys must be text, not 5"):
        reader("5: x\n").mapping(reader("5: x\n").doc.value, (), None, "top")


def test_text_numbers_and_emptiness() -> None:
    r = reader("x: 1\n")
    with pytest.raises(SourceError, match="subject must be non-empty text, not a number"):
        r.text(2024, ("x",), "subject")
    assert r.text(2024, ("x",), "subject", numbers=True) == "2024"
    assert r.text(" ", ("x",), "body", empty=True) == " "
    with pytest.raises(SourceError, match="body must be non-empty text, not text"):
        r.text(" ", ("x",), "body")


def test_names_ports_and_seconds() -> None:
    r = reader("x: 1\n")
    assert r.fqdn("Mail.Example.", ("x",), "host") == "mail.example"
    with pytest.raises(SourceError, match="is not under a reserved test name"):
        r.fqdn("mail.example.com.au", ("x",), "host")
    with pytest.raises(SourceError, match="is not a valid domain name"):
        r.fqdn("localhost", ("x",), "host")
    assert r.port(25, ("x",)) == 25
    for bad in (0, 65536, True, "25"):
        with pytest.raises(SourceError, match="port must be a number from 1 to 65535"):
            r.port(bad, ("x",))
    assert r.number(2, ("x",), "wait") == 2.0
    with pytest.raises(SourceError, match="wait must be a positive number of seconds"):
        r.number(0, ("x",), "wait")


def test_describe_speaks_yaml() -> None:
    assert [describe(v) for v in (None, {}, [], "", True, 1, 1.5)] == [
        "nothing", "a mapping", "a list", "text", "true/false", "a number", "a number"]
