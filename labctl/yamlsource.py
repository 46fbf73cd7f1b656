"""YAML documents that remember where each value came from.

PyYAML turns a file into plain dicts and lists and forgets the lines. Users of labctl need
``lab.yml:23: unknown key 'hostnmae'``, so we compose the node graph ourselves and keep, for every
path into the document, the line it starts on. Duplicate keys, which PyYAML silently lets the last
one win, are an error here: in a topology they are always a mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labctl.errors import SourceError

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """A parsed YAML document: its plain value plus the line of every sub-value."""

    path: Path
    value: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line(self, at: PathKey) -> int | None:
        """The line of the value at ``at``, or of the nearest enclosing value that has one."""
        while True:
            if at in self.lines:
                return self.lines[at]
            if not at:
                return None
            at = at[:-1]

    def error(self, at: PathKey, message: str) -> SourceError:
        return SourceError(self.path, self.line(at), message)


def load(path: Path, text: str | None = None) -> Document:
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SourceError(path, None, f"cannot read the file: {exc.strerror}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SourceError(path, line, f"not valid YAML: {exc.problem or exc.context}{_hint(exc)}") from exc
    lines: dict[PathKey, int] = {}
    if node is None:
        return Document(path, None, lines)
    return Document(path, _convert(node, (), lines, path), lines)


def _hint(exc: yaml.MarkedYAMLError) -> str:
    """What PyYAML's parser words for a misplaced line probably mean: the indentation is off."""
    here, block = exc.problem_mark, exc.context_mark
    problem = exc.problem or ""
    if here is None:
        return ""
    if problem.startswith("expected <block end>") and block is not None:
        # A line that ends neither the block above it nor lines up with its keys.
        return (f" - probably wrong indentation: this line starts in column {here.column + 1}, but the block "
                f"it belongs to (line {block.line + 1}) has its entries in column {block.column + 1}; "
                "line up keys of one mapping (and the dashes of one list) in the same column, with spaces")
    if problem.startswith("mapping values are not allowed"):
        return (" - probably wrong indentation: this key is indented further than the key above it, which "
                "already has a value; line it up with that key, or indent the key above's value on lines of "
                "its own (or quote a text holding ': ')")
    return ""


def _convert(node: yaml.Node, at: PathKey, lines: dict[PathKey, int], path: Path) -> Any:
    lines[at] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, path)
            if key == "<<":
                raise SourceError(path, key_node.start_mark.line + 1, "merge keys (<<) are not supported")
            if key in out:
                raise SourceError(
                    path, key_node.start_mark.line + 1, f"duplicate key {key!r} (first at line {lines[at + (key,)]})"
                )
            lines[at + (key,)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, at + (key,), lines, path)
            # The key's own line is the more useful place to point at for a bad value too.
            lines[at + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, at + (i,), lines, path) for i, item in enumerate(node.value)]
    return _scalar(node, path)


def _scalar(node: yaml.Node, path: Path) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise SourceError(path, node.start_mark.line + 1, "a key must be a plain value")
    # SafeConstructor gives YAML 1.1's plain-scalar typing (ints, booleans, null) and nothing
    # that could run code.
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
