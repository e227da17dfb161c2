"""Reading one micrograph: the single place the per-micrograph stages (CTF,
picking, extraction) turn an MRC file into a float32 image.

Example::

    image, pixel_size_a = read_micrograph("MotionCorr/job002/Movies/a.mrc")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdcatch.errors import MetadataError
from mdcatch.headers.movie import check_movie_header
from pipelines.errors import StageInputError

__all__ = ["read_micrograph"]


def read_micrograph(path: str | Path) -> tuple[np.ndarray, float]:
    """``(image (ny, nx) float32, header pixel size in Å)`` of an MRC micrograph.

    A one-section stack counts as a micrograph; anything else that is not 2D, an
    empty data block or an unreadable file raises :class:`StageInputError` naming
    the file.
    """
    import mrcfile

    try:  # the header checked against the file size before anything is allocated
        check_movie_header(Path(path))
    except MetadataError as exc:
        raise StageInputError(
            path, exc.field, exc.value, f"unreadable MRC: {exc.reason}"
        ) from exc
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise StageInputError(path, "data", None, "no image data in MRC file")
            data = np.asarray(mrc.data, dtype=np.float32)
            pixel_size_a = float(mrc.voxel_size.x)
    except (OSError, ValueError) as exc:
        raise StageInputError(
            path, "file", str(path), f"unreadable MRC: {exc}"
        ) from exc
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise StageInputError(path, "shape", data.shape, "expected a 2D micrograph")
    return data, pixel_size_a
