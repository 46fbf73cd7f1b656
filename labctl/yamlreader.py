"""Checked reading of a :class:`~labctl.yamlsource.Document`: the value rules every labctl file shares.

A topology, an overlay and a scenario are read by different parsers, but a mapping with the wrong
keys, an empty text or a bad port must be reported the same way in all of them, with ``file:line``
and the valid choices. Each parser holds a :class:`Reader` for its document (composition: the
parsers share these rules, not a base class).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from labctl.errors import SourceError
from labctl.yamlsource import Document, PathKey

# RFC 2606 / RFC 6761: a lab must never use a name that exists on the real Internet.
RESERVED_SUFFIXES = (".example", ".test", ".invalid", ".localhost",
                     ".example.com", ".example.net", ".example.org")
LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")  # RFC 1035 §2.3.1, lower-cased


def describe(value: Any) -> str:
    """What a YAML value is, in the words of an error message ("a mapping", "text", ...)."""
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


class Reader:
    """The checked readers of one document; every error points at the line of ``at``."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def fail(self, at: PathKey, message: str) -> SourceError:
        return self.doc.error(at, message)

    def value_at(self, at: PathKey) -> Any:
        value = self.doc.value
        for key in at:
            value = value[key]
        return value

    def mapping(self, value: Any, at: PathKey, allowed: tuple[str, ...] | None, what: str, *,
                optional: bool = False) -> dict[str, Any]:
        """A mapping whose keys are text (and among ``allowed``, when given); ``optional``: a
        missing value (YAML null) reads as an empty mapping."""
        if value is None and optional:
            value = {}
        if not isinstance(value, Mapping):
            raise self.fail(at, f"{what} must be a mapping (key: value), not {describe(value)}")
        for key in value:
            if allowed is not None and key not in allowed:
                raise self.fail(at + (key,), f"unknown key {key!r} in {what}; valid keys: {', '.join(allowed)}")
            if not isinstance(key, str):
                raise self.fail(at + (key,), f"{what}: keys must be text, not {key!r}")
        return dict(value)

    def text(self, value: Any, at: PathKey, what: str, *, empty: bool = False, numbers: bool = False) -> str:
        """Text as written (not stripped); ``numbers``: a number counts as its text (a subject
        like 2024 is text to the author); ``empty``: blank text is allowed."""
        if numbers and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise self.fail(at, f"{what} must be {'' if empty else 'non-empty '}text, not {describe(value)}")
        return value

    def fqdn(self, value: Any, at: PathKey, what: str) -> str:
        """A domain name under a reserved test name, lower-case, without the trailing dot."""
        name = self.text(value, at, what).strip().lower().rstrip(".")
        labels = name.split(".")
        if len(labels) < 2 or not all(LABEL.match(lab) for lab in labels):
            raise self.fail(at, f"{what} {value!r} is not a valid domain name")
        if not name.endswith(RESERVED_SUFFIXES):
            raise self.fail(
                at,
                f"{what} {value!r} is not under a reserved test name; a lab may only use names "
                f"ending in {', '.join(RESERVED_SUFFIXES)} (RFC 2606) so that no mail can leak "
                "to a real domain",
            )
        return name

    def port(self, value: Any, at: PathKey) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self.fail(at, f"port must be a number from 1 to 65535, not {value!r}")
        return value

    def number(self, value: Any, at: PathKey, what: str) -> float:
        """A positive number of seconds."""
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(at, f"{what} must be a positive number of seconds, not {value!r}")
        return float(value)
