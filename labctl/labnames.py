"""Many lab names from one argument: ``student-{001..300}`` brace ranges, commas, ``@file`` lists.

Pure: the file reader is passed in, so the rules are tested without a disk. Every name is checked
against the lab-name rule once here, so ``up --labs`` fails before it creates anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from labctl.errors import LabctlError, SourceError
from labctl.lab import LAB_NAME

# A range of a thousand labs is already past what one machine's engines hold; more is a typo.
MAX_LABS = 1000
RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand(spec: str, read: Callable[[str], str]) -> list[str]:
    """The lab names ``spec`` stands for, in order; a bad spec raises with what to write instead."""
    names: list[str] = []
    where: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise LabctlError(f"--labs {spec!r}: an empty name between commas; write e.g. "
                              "'student-{001..030}' or 'a,b,c' or '@labs.txt'")
        if part.startswith("@"):
            found = _from_file(part[1:], read)
        else:
            found = [(n, f"--labs {part!r}") for n in _expand_one(part)]
        for name, origin in found:
            if name in where:
                raise LabctlError(f"{origin}: lab {name!r} is named twice (first by {where[name]}); name each lab once")
            where[name] = origin
            names.append(name)
            if len(names) > MAX_LABS:
                raise LabctlError(f"--labs {spec!r}: more than {MAX_LABS} labs; split the course into smaller batches")
    return names


def _expand_one(part: str) -> list[str]:
    ranges = RANGE.findall(part)
    if len(ranges) > 1:
        raise LabctlError(f"--labs {part!r}: one {{A..B}} range per name; list the others with commas")
    if part.count("{") != len(ranges) or part.count("}") != len(ranges):
        raise LabctlError(f"--labs {part!r}: a range is written {{A..B}} with digits, e.g. student-{{001..030}}")
    if not ranges:
        return [_checked(part, f"--labs {part!r}")]
    low, high = ranges[0]
    if int(low) > int(high):
        raise LabctlError(f"--labs {part!r}: the range runs backwards; write {{{high}..{low}}}")
    if int(high) - int(low) + 1 > MAX_LABS:
        raise LabctlError(f"--labs {part!r}: more than {MAX_LABS} labs; split the course into smaller batches")
    width = len(low) if low.startswith("0") else 0  # {001..300}: zero-padded like the bash brace expansion
    return [_checked(RANGE.sub(str(i).zfill(width), part, count=1), f"--labs {part!r}")
            for i in range(int(low), int(high) + 1)]


def _from_file(path: str, read: Callable[[str], str]) -> list[tuple[str, str]]:
    try:
        text = read(path)
    except OSError as exc:
        raise LabctlError(f"--labs @{path}: cannot read it ({exc.strerror or exc}); give a file of lab names, "
                          "one a line") from exc
    found: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not LAB_NAME.fullmatch(name):
            raise SourceError(path, number, f"{name!r} is not a lab name: use up to 48 letters, digits, '-', '_' "
                                            "or '.', beginning with a letter or digit; one name a line")
        found.append((name, f"{path}:{number}"))
    if not found:
        raise SourceError(path, None, "no lab names in it; write one name a line ('#' begins a comment)")
    return found


def _checked(name: str, origin: str) -> str:
    if not LAB_NAME.fullmatch(name):
        raise LabctlError(f"{origin}: {name!r} is not a lab name: use up to 48 letters, digits, '-', '_' or '.', "
                          "beginning with a letter or digit")
    return name
