"""How the particle pool reads what it is fed: the rows of a RELION particles
STAR as raw lines (so that a feed can read only what was appended) and the
headers of the ``.mrcs`` stacks its rows point to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import StageInputError

__all__ = [
    "MRC_DTYPES",
    "StackHeader",
    "header_lines",
    "particles_start",
    "read_stack_header",
    "row_lines",
    "rows_end",
    "split_image_names",
    "stack_paths",
]

MRC_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def split_image_names(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """``rlnImageName`` ``n@stack`` as 0-based numbers and stack names."""
    parts = table["rlnImageName"].astype(str).str.split("@", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        raise StageInputError(
            "<particles>",
            "rlnImageName",
            str(table["rlnImageName"].iloc[0]),
            "must be n@stack",
        )
    return parts[0].astype(int).to_numpy() - 1, parts[1].to_numpy(dtype=str)


def stack_paths(
    names: np.ndarray, roots: list[Path]
) -> tuple[np.ndarray, list[StageInputError]]:
    """Absolute stack path of each row (the first root holding its stack; ``""``
    and a problem for a stack found in no root)."""
    unique, inverse = np.unique(names, return_inverse=True)
    resolved, problems = [], []
    for name in unique:  # one lookup per stack file
        found = [root / name for root in roots if (root / name).exists()]
        if not found:
            problems.append(
                StageInputError(roots[0], "rlnImageName", name, "stack not found")
            )
        resolved.append(str(found[0].resolve()) if found else "")
    return np.asarray(resolved, dtype=object)[inverse], problems


@dataclass(frozen=True, slots=True)
class StackHeader:
    """Where a stack's images are: data type, byte offset, count and box."""

    path: str
    dtype: Any
    offset: int
    n: int
    shape: tuple[int, int]


def read_stack_header(path: str) -> StackHeader:
    """The MRC header's mode, extended header size and dimensions."""
    import mrcfile

    with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
        header = mrc.header
        mode = int(header.mode)
        if mode not in MRC_DTYPES:
            raise ValueError(f"MRC mode {mode} is not an image mode")
        dtype = np.dtype(MRC_DTYPES[mode]).newbyteorder(header.mode.dtype.byteorder)
        return StackHeader(
            path=path,
            dtype=dtype,
            offset=1024 + int(header.nsymbt),
            n=int(header.nz),
            shape=(int(header.ny), int(header.nx)),
        )


def particles_start(raw: bytes) -> int:
    """Byte offset of the first row of ``data_particles`` (after its labels)."""
    block = raw.find(b"data_particles")
    if block < 0:
        raise ValueError("no data_particles block")
    loop = raw.find(b"loop_", block)
    if loop < 0:
        raise ValueError("data_particles is not a loop")
    position = raw.index(b"\n", loop) + 1
    while position < len(raw):
        end = raw.find(b"\n", position)
        end = len(raw) if end < 0 else end + 1
        line = raw[position:end].strip()
        if line and not line.startswith(b"_"):
            return position
        position = end
    return position


def header_lines(raw: bytes) -> list[bytes]:
    """The header's lines without comments (a writer's time stamp)."""
    return [line for line in raw.splitlines() if not line.startswith(b"#")]


def row_lines(raw: bytes) -> np.ndarray:
    """The lines of ``raw`` that ``pandas.read_csv(sep=r"\\s+", comment="#")``
    reads as rows (blank and comment lines left out), as ``bytes`` objects."""
    lines = np.asarray(raw.split(b"\n"), dtype=object)
    kept = np.asarray([line.lstrip()[:1] not in b"#" for line in lines], dtype=bool)
    chosen: np.ndarray = lines[kept]
    return chosen


def rows_end(raw: bytes) -> int:
    """Where the complete rows of ``raw`` end: after the last non-blank complete
    line (a half-written row waits for its newline; trailing blank lines, which
    the next rows may replace, are not consumed)."""
    complete = raw[: raw.rfind(b"\n") + 1]
    body = complete.rstrip()
    return len(body) + 1 if body else 0
