"""The SerialEM autodoc (``.mdoc``) text format: lines -> header, titles, sections.

An mdoc is a list of ``Key = value`` lines.  Lines before the first section form the
global header; ``[T = ...]`` lines (and, in frame mdocs, an unbracketed ``T = ...``
line in the header) are free-text titles; ``[FrameSet = n]``, ``[ZValue = n]`` and
``[MontSection = n]`` open sections.  This module only splits the text and converts
single values; :mod:`mdcatch.serialem.mdoc` gives them meaning.  Every problem is a
:class:`~mdcatch.errors.MetadataError` naming the file, the field and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from mdcatch.errors import MetadataError

__all__ = [
    "MdocDocument",
    "MdocSection",
    "parse_autodoc",
    "parse_bool",
    "parse_datetime",
    "parse_float",
    "parse_floats",
    "parse_frame_doses",
    "parse_int",
]

SECTION_KINDS = ("FrameSet", "ZValue", "MontSection")

_TITLE = re.compile(r"^\[\s*T\s*=(.*)\]$")
_SECTION = re.compile(r"^\[\s*([A-Za-z]+)\s*=\s*(.*?)\s*\]$")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_DATETIME = re.compile(
    r"^(\d{1,2})-([A-Za-z]{3})-(\d{2}|\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})$"
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        [
            "jan",
            "feb",
            "mar",
            "apr",
            "may",
            "jun",
            "jul",
            "aug",
            "sep",
            "oct",
            "nov",
            "dec",
        ],
        start=1,
    )
}


@dataclass(frozen=True, slots=True)
class MdocSection:
    """One ``[Kind = index]`` block; ``values`` keeps the file's key order."""

    kind: str
    index: int
    line: int
    values: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class MdocDocument:
    """An mdoc split into its global header, titles and sections."""

    path: Path
    header: Mapping[str, str]
    titles: tuple[str, ...]
    sections: tuple[MdocSection, ...]


def parse_autodoc(text: str, path: Path) -> MdocDocument:
    """Split mdoc ``text`` (read from ``path``) into header, titles and sections."""
    header: dict[str, str] = {}
    titles: list[str] = []
    sections: list[MdocSection] = []
    current: dict[str, str] = header
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        title = _TITLE.match(line)
        if title:
            titles.append(title.group(1).strip())
            continue
        if line.startswith("["):
            current = {}
            sections.append(_open_section(line, number, current, path))
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise MetadataError(
                path,
                f"line {number}",
                line,
                "expected 'Key = value' or '[Section = n]'",
            )
        if key == "T" and current is header and not sections:
            titles.append(value.strip())
            continue
        if key in current:
            raise MetadataError(
                path,
                key,
                value.strip(),
                f"key repeated in the same block (line {number})",
            )
        current[key] = value.strip()
    if not sections:
        raise MetadataError(
            path, "sections", 0, "no [FrameSet], [ZValue] or [MontSection] section"
        )
    return MdocDocument(
        path=path, header=header, titles=tuple(titles), sections=tuple(sections)
    )


def _open_section(
    line: str, number: int, values: dict[str, str], path: Path
) -> MdocSection:
    match = _SECTION.match(line)
    if not match:
        raise MetadataError(path, f"line {number}", line, "malformed section line")
    kind, index = match.group(1), match.group(2)
    if kind not in SECTION_KINDS:
        raise MetadataError(
            path,
            kind,
            index,
            f"unknown section kind (line {number}); expected one of "
            + ", ".join(SECTION_KINDS),
        )
    if not index.isdigit():
        raise MetadataError(path, kind, index, "section index must be an integer >= 0")
    return MdocSection(kind=kind, index=int(index), line=number, values=values)


def parse_float(path: Path, key: str, raw: str) -> float:
    """One finite decimal number."""
    text = raw.strip()
    if not _NUMBER.match(text):
        raise MetadataError(path, key, raw, "not a number")
    value = float(text)
    if not math.isfinite(value):
        raise MetadataError(path, key, raw, "number out of range")
    return value


def parse_floats(path: Path, key: str, raw: str, count: int) -> tuple[float, ...]:
    """Exactly ``count`` whitespace-separated numbers."""
    parts = raw.split()
    if len(parts) != count:
        raise MetadataError(path, key, raw, f"expected {count} numbers")
    return tuple(parse_float(path, key, part) for part in parts)


def parse_int(path: Path, key: str, raw: str) -> int:
    """One integer (SerialEM never writes ``3.0`` for an integer field)."""
    text = raw.strip()
    if not _INTEGER.match(text) or len(text) > 18:
        raise MetadataError(path, key, raw, "not an integer")
    return int(text)


def parse_bool(path: Path, key: str, raw: str) -> bool:
    """``True``/``False`` as SerialEM writes them (``1``/``0`` accepted)."""
    text = raw.strip().lower()
    if text in {"true", "1"}:
        return True
    if text in {"false", "0"}:
        return False
    raise MetadataError(path, key, raw, "expected True or False")


def parse_datetime(path: Path, key: str, raw: str, timezone: tzinfo) -> datetime:
    """SerialEM's ``dd-Mon-yy  HH:MM:SS`` (or 4-digit year), local ``timezone`` -> UTC.

    Two-digit years are 20yy: SerialEM wrote its first mdoc long after 2000.  Month
    names are English whatever the locale of this machine.
    """
    match = _DATETIME.match(raw.strip())
    if not match:
        raise MetadataError(
            path, key, raw, "expected a date like '11-Aug-19  14:13:22'"
        )
    day, month_name, year_text, hour, minute, second = match.groups()
    month = _MONTHS.get(month_name.lower())
    if month is None:
        raise MetadataError(path, key, raw, f"unknown month {month_name!r}")
    year = int(year_text) + (2000 if len(year_text) == 2 else 0)
    try:
        local = datetime(
            year, month, int(day), int(hour), int(minute), int(second), tzinfo=timezone
        )
    except ValueError as error:
        raise MetadataError(path, key, raw, f"impossible date: {error}") from error
    return local.astimezone(UTC)


def parse_frame_doses(path: Path, key: str, raw: str) -> tuple[tuple[int, float], ...]:
    """``FrameDosesAndNumber = dose n  dose n ...`` -> ``((n, dose), ...)``.

    The dose is per frame (e/Å²) for the ``n`` frames that follow.
    """
    parts = raw.split()
    if not parts or len(parts) % 2:
        raise MetadataError(path, key, raw, "expected pairs of 'dose number'")
    pairs: list[tuple[int, float]] = []
    for dose_text, count_text in zip(parts[::2], parts[1::2], strict=True):
        dose = parse_float(path, key, dose_text)
        count = parse_int(path, key, count_text)
        if dose < 0 or count < 1:
            raise MetadataError(
                path, key, raw, "frame dose must be >= 0 and frame count >= 1"
            )
        pairs.append((count, dose))
    return tuple(pairs)
