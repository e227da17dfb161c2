"""Crash-safe output files: write to a temporary name, fsync, rename.

A crash at any moment leaves either no file or a complete one.  Temporary files are
named ``.<name>.<token>.partial`` in the destination folder so that start-up
reconciliation can find and delete them (:func:`remove_partials`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

PARTIAL_SUFFIX = ".partial"


def fsync_directory(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_directory(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_mrc(
    path: str | Path,
    data: np.ndarray,
    *,
    pixel_size_a: float,
    float16: bool = True,
    is_stack: bool | None = None,
) -> Path:
    """Write ``data`` (``(ny, nx)`` or ``(n, ny, nx)``) as MRC atomically.

    float16 is mode 12, which RELION 4 and cryoSPARC read; ``float16=False`` writes
    float32 (mode 2).  A 3D array is written as an image stack (ispg 0, ``.mrcs``)
    unless ``is_stack`` is False (a volume).
    """
    import mrcfile

    dtype = np.float16 if float16 else np.float32
    source = np.asarray(data)
    if source.ndim not in (2, 3) or source.size == 0:  # mrcfile's own way
        with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(source.astype(dtype))
            mrc.voxel_size = pixel_size_a
        return Path(path)
    # mapped and filled in place, the header's statistics computed here: mrcfile's
    # set_data computes them on the float16 data (numpy has no fast float16
    # arithmetic: 0.3 CPU s for a 4096² micrograph, twice per movie)
    with (
        atomic_path(path) as tmp,
        mrcfile.new_mmap(
            tmp, source.shape, mrc_mode=12 if float16 else 2, overwrite=True
        ) as mrc,
    ):
        mrc.data[...] = source
        # min and max as stored (rounding is monotonic); mean and RMS of the
        # values before their rounding to the file's type
        mrc.header.dmin = np.float32(dtype(source.min()))
        mrc.header.dmax = np.float32(dtype(source.max()))
        mrc.header.dmean = np.float32(source.mean(dtype=np.float64))
        mrc.header.rms = np.float32(source.std(dtype=np.float64))
        if source.ndim == 3:
            if is_stack is False:
                mrc.set_volume()
            else:
                mrc.set_image_stack()
        mrc.voxel_size = pixel_size_a
    return Path(path)


def write_star(path: str | Path, blocks: Mapping[str, Any]) -> Path:
    """Write STAR data blocks (name -> DataFrame or dict) atomically via starfile."""
    import starfile

    with atomic_path(path) as tmp:
        starfile.write(dict(blocks), tmp, overwrite=True)
    return Path(path)


def _star_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if (not value or any(c.isspace() for c in value)) else value
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.6f}"


def star_text(blocks: Mapping[str, Mapping[str, Any]]) -> str:
    """STAR text of ``blocks`` (name -> columns) without pandas: a block whose
    values are scalars is a key-value block; one whose values are 1-D arrays or
    lists (all of one length) is a ``loop_``.  Floats as ``%.6f`` and strings
    quoted when empty or holding whitespace, as :func:`write_star` (starfile)
    writes them."""
    lines: list[str] = []
    for name, columns in blocks.items():
        lines += [f"data_{name}", ""]
        loop = any(isinstance(v, np.ndarray | list | tuple) for v in columns.values())
        if not loop:
            lines += [f"_{key}\t\t\t{_star_value(v)}" for key, v in columns.items()]
            lines.append("")
            continue
        values = [np.asarray(v) for v in columns.values()]
        lengths = {len(v) for v in values}
        if len(lengths) != 1 or any(v.ndim != 1 for v in values):
            raise ValueError(f"STAR loop {name!r}: columns of lengths {lengths}")
        lines.append("loop_")
        lines += [f"_{key} #{i + 1}" for i, key in enumerate(columns)]
        cells = [[_star_value(x) for x in v.tolist()] for v in values]
        lines += ["\t".join(row) for row in zip(*cells, strict=True)]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_star_text(path: str | Path, blocks: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write :func:`star_text` of ``blocks`` atomically (no pandas import: the
    motion stage's per-movie STAR)."""
    return write_text_atomic(path, star_text(blocks))


def remove_partials(folder: str | Path) -> list[Path]:
    """Delete every temporary ``*.partial`` file below ``folder``; return them."""
    removed: list[Path] = []
    root = Path(folder)
    if not root.exists():
        return removed
    for tmp in root.rglob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed
