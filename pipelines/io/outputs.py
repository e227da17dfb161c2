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

    array = np.asarray(data, dtype=np.float16 if float16 else np.float32)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(array)
        if array.ndim == 3:
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
