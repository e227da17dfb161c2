"""STAR files read strictly, for particle sets that come from outside.

:func:`read_star_tables` keeps every value as the text it was written as (so a
subset or a split writes back exactly what it read) and refuses, naming the file,
the line and the column: a row with too few or too many values, a label RELION does
not know, a number that is not one (or is NaN or infinite) in a numeric label, a
loop outside a ``data_`` block.  The labels and their types are RELION's own
(``relion_labels.tsv``: the union of RELION 3.0.8's and 5.0.1's
``src/metadata_label.h``).

Rows are parsed by pandas' C tokenizer, one call per loop; nothing loops over rows
in Python.  (The extraction, class2d and reconstruction readers use ``starfile`` on
files this project wrote; this reader is for files a user brings.)
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import StageInputError
from pipelines.io.outputs import write_star

__all__ = [
    "StarTable",
    "main_table_name",
    "read_star_tables",
    "relion30_labels",
    "relion_label_types",
    "split_rows",
    "write_star_tables",
]

# a line that starts a block, a loop or a label / key
_HEADER = re.compile(r"^[ \t]*(?:data_|loop_|_)", re.M)
# the same, found from the newline before it: a literal first character lets the
# regex engine skip through long loops quickly
_NEXT_HEADER = re.compile(r"\n[ \t]*(?:data_|loop_|_)")
# a line with something other than blanks or a comment
_CONTENT = re.compile(r"^[ \t]*[^\s#]", re.M)
_NUMERIC_TYPES = frozenset({"double", "int", "bool"})


@functools.cache
def _label_table() -> tuple[dict[str, str], frozenset[str]]:
    text = resources.files("pipelines.particlesets").joinpath("relion_labels.tsv")
    types: dict[str, str] = {}
    in_30: set[str] = set()
    for line in text.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, kind, old = line.split("\t")
        types[name] = kind
        if old == "1":
            in_30.add(name)
    return types, frozenset(in_30)


def relion_label_types() -> dict[str, str]:
    """RELION label -> ``double``, ``int``, ``bool`` or ``string``."""
    return dict(_label_table()[0])


def relion30_labels() -> frozenset[str]:
    """The labels RELION 3.0 reads (it stops at any other)."""
    return _label_table()[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class StarTable:
    """One data block: ``frame`` (one column per label, values as written, str)
    and ``lines`` ``(n_rows,)`` int, the file line of each row (1-based)."""

    name: str
    frame: pd.DataFrame
    lines: np.ndarray
    is_loop: bool = True

    def as_block(self) -> pd.DataFrame | dict[str, str]:
        """What :func:`write_star_tables` writes back: a loop, or the pairs."""
        if self.is_loop:
            return self.frame
        return {label: str(self.frame[label].iloc[0]) for label in self.frame}

    def numbers(self, label: str) -> np.ndarray:
        """Column ``label`` as float64 (already checked finite when read)."""
        return np.asarray(pd.to_numeric(self.frame[label]), dtype=np.float64)


def read_star_tables(path: str | Path) -> dict[str, StarTable]:
    """Every data block of a STAR file, by block name (``particles`` for
    ``data_particles``; ``""`` for a bare ``data_``)."""
    star = Path(path)
    try:
        text = star.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StageInputError(
            star, "file", str(star), f"cannot be read: {exc}"
        ) from None
    return _Parser(star, text).parse()


def write_star_tables(
    path: str | Path, tables: Mapping[str, pd.DataFrame | dict[str, str]]
) -> Path:
    """Write data blocks (name -> DataFrame, or a dict for label-value pairs)
    atomically, in the given order."""
    return write_star(path, tables)


def main_table_name(path: Path, tables: Mapping[str, StarTable]) -> str:
    """The particle table: ``data_particles``, else the one loop there is besides
    ``data_optics`` (``data_micrographs``, a RELION 3.0 ``data_`` ...)."""
    if "particles" in tables:
        return "particles"
    loops = [
        name for name, table in tables.items() if table.is_loop and name != "optics"
    ]
    if len(loops) != 1:
        raise StageInputError(
            path,
            "data blocks",
            [f"data_{name}" for name in tables],
            "need data_particles or exactly one loop besides data_optics",
        )
    return loops[0]


def split_rows(region: str, first_line: int, comment: str) -> tuple[str, np.ndarray]:
    """The data rows of ``region`` (text starting at file line ``first_line``)
    without blank and comment lines, and each row's file line.

    Blank or comment lines among rows are rare; only then are lines visited one by
    one in Python."""
    body = region.rstrip()
    if not body:
        return "", np.zeros(0, dtype=np.int64)
    if re.search(rf"\n[ \t]*(?:{re.escape(comment)}|\n)", "\n" + body) is None:
        return body, first_line + np.arange(body.count("\n") + 1)
    raw = body.split("\n")
    kept = [
        i
        for i, line in enumerate(raw)
        if line.strip() and not line.lstrip().startswith(comment)
    ]
    return "\n".join(raw[i] for i in kept), first_line + np.asarray(kept, dtype=int)


class _Parser:
    """The block / loop / label structure is walked header line by header line;
    the rows between are handed to pandas in one piece per loop."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self.types = _label_table()[0]

    def line_of(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def line_at(self, offset: int) -> tuple[str, int]:
        """The stripped line starting at ``offset`` and the offset after it."""
        end = self.text.find("\n", offset)
        end = len(self.text) if end < 0 else end
        return self.text[offset:end].strip(), end + 1

    def fail(self, offset: int, field: str, value: object, reason: str) -> NoReturn:
        raise StageInputError(
            self.path, f"line {self.line_of(offset)}, {field}", value, reason
        )

    def parse(self) -> dict[str, StarTable]:
        tables: dict[str, StarTable] = {}
        block: str | None = None
        pos = 0
        while (match := _HEADER.search(self.text, pos)) is not None:
            self.check_blank(pos, match.start())
            line, after = self.line_at(match.start())
            if line.startswith("data_"):
                block = line.split()[0][len("data_") :]
                pos = after
                continue
            if block is None:
                self.fail(match.start(), "column 1", line[:40], "outside a data_ block")
            if block in tables:
                self.fail(match.start(), "column 1", line[:40], "second table in block")
            if line.startswith("loop_"):
                tables[block], pos = self.loop(block, after)
            else:
                tables[block], pos = self.pairs(block, match.start())
        self.check_blank(pos, len(self.text))
        if not tables:
            raise StageInputError(self.path, "data blocks", [], "no STAR table")
        return tables

    def check_blank(self, start: int, end: int) -> None:
        """Only blank lines and comments may sit between headers outside a loop."""
        found = _CONTENT.search(self.text, start, end)
        if found is not None:
            line, _ = self.line_at(found.start())
            self.fail(found.start(), "column 1", line[:40], "not inside a loop_")

    def label(self, offset: int, line: str, column: int) -> str:
        name = line.split()[0][1:]
        if name not in self.types:
            self.fail(
                offset, f"column {column}", f"_{name}", "not a RELION metadata label"
            )
        return name

    def loop(self, block: str, pos: int) -> tuple[StarTable, int]:
        labels: list[str] = []
        label_at: dict[str, int] = {}
        while pos < len(self.text):
            line, after = self.line_at(pos)
            if line.startswith("_"):
                name = self.label(pos, line, len(labels) + 1)
                if name in label_at:
                    self.fail(pos, f"column {len(labels) + 1}", name, "label repeated")
                label_at[name] = pos
                labels.append(name)
            elif line and not line.startswith("#"):
                break
            pos = after
        if not labels:
            self.fail(pos, "loop_", block, "loop without labels")
        nxt = _NEXT_HEADER.search(self.text, pos - 1)
        end = len(self.text) if nxt is None else nxt.start() + 1
        frame, lines = self.rows(labels, pos, end)
        return StarTable(name=block, frame=frame, lines=lines), end

    def pairs(self, block: str, pos: int) -> tuple[StarTable, int]:
        """A block of ``_label value`` lines: one row."""
        values: dict[str, str] = {}
        first = self.line_of(pos)
        while pos < len(self.text):
            line, after = self.line_at(pos)
            if line.startswith("_"):
                name = self.label(pos, line, 1)
                words = line.split(maxsplit=1)
                if len(words) != 2:
                    self.fail(pos, "column 2", name, "label without a value")
                values[name] = words[1].strip().strip('"')
                self.check_value(pos, 2, name, values[name])
            elif line and not line.startswith("#"):
                break  # the next block or loop, or stray text (check_blank)
            pos = after
        frame = pd.DataFrame({k: [v] for k, v in values.items()}, dtype=str)
        table = StarTable(
            name=block, frame=frame, lines=np.array([first]), is_loop=False
        )
        return table, pos

    def check_value(self, offset: int, column: int, label: str, value: str) -> None:
        if self.types[label] in _NUMERIC_TYPES:
            number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
            if not np.isfinite(number):
                self.fail(offset, f"column {column} ({label})", value, "not a number")

    def rows(
        self, labels: list[str], start: int, end: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        body, lines = split_rows(self.text[start:end], self.line_of(start), "#")
        n = len(labels)
        if not len(lines):
            return pd.DataFrame({k: pd.Series(dtype=str) for k in labels}), lines
        try:
            frame = pd.read_csv(
                io.StringIO(body),
                sep=r"\s+",
                header=None,
                names=[*labels, "\0extra"],
                dtype=str,
                na_filter=False,
                index_col=False,
                quotechar='"',
                engine="c",
            )
        except pd.errors.ParserError as exc:
            found = re.search(r"line (\d+), saw (\d+)", str(exc))
            if found is None:
                raise StageInputError(
                    self.path, f"data_ loop at line {lines[0]}", None, str(exc)
                ) from None
            self.wrong_width(lines[int(found.group(1)) - 1], int(found.group(2)), n)
        extra = frame.pop("\0extra").to_numpy() != ""
        short = frame[labels[-1]].to_numpy() == ""
        bad = np.flatnonzero(extra | short)
        if len(bad):
            row = int(bad[0])
            self.wrong_width(lines[row], len(body.split("\n")[row].split()), n)
        self.check_numbers(frame, lines)
        return frame, lines

    def wrong_width(self, line: int, count: int, n: int) -> NoReturn:
        raise StageInputError(
            self.path,
            f"line {line}, column {min(count, n) + 1}",
            count,
            f"values, the loop has {n} labels",
        )

    def check_numbers(self, frame: pd.DataFrame, lines: np.ndarray) -> None:
        for column, label in enumerate(frame.columns, start=1):
            if self.types[label] not in _NUMERIC_TYPES:
                continue
            text = frame[label].to_numpy()
            try:  # arrow's C++ parser; fails on a token that is not a number
                values = pc.cast(pa.array(frame[label]), pa.float64()).to_numpy()
            except pa.ArrowInvalid:
                values = pd.to_numeric(frame[label], errors="coerce").to_numpy(
                    dtype=np.float64
                )
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                row = int(bad[0])
                raise StageInputError(
                    self.path,
                    f"line {lines[row]}, column {column} ({label})",
                    str(text[row]),
                    "not a finite number",
                )
