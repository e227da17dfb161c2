"""Movie headers (MRC, TIFF, EER), read without loading a single frame.

Example::

    from pathlib import Path
    from mdcatch.headers.movie import movie_is_complete, read_movie_header
    if movie_is_complete(Path("movie_EER.eer")):
        header = read_movie_header(Path("movie_EER.eer"))
        print(header.n_frames, header.shape, header.compression)

The format comes from the file name (``.mrc``/``.mrcs``, ``.tif``/``.tiff``,
``.eer``), or from the first bytes for other names.  A truncated or incomplete
file raises :class:`~mdcatch.errors.MetadataError` naming it;
:func:`movie_is_complete` answers False instead, for the live watcher that waits
for a movie to settle.
"""

from __future__ import annotations

from pathlib import Path

from mdcatch.errors import MetadataError
from mdcatch.headers.mrc import check_mrc_complete, check_mrc_layout, read_mrc_header
from mdcatch.headers.tiff import check_tiff_layout, read_tiff_header
from mdcatch.records import MovieFormat, MovieHeader

__all__ = [
    "check_movie_complete",
    "check_movie_header",
    "detect_movie_format",
    "movie_is_complete",
    "read_movie_header",
]

_SUFFIXES = {
    ".mrc": MovieFormat.MRC,
    ".mrcs": MovieFormat.MRC,
    ".tif": MovieFormat.TIFF,
    ".tiff": MovieFormat.TIFF,
    ".eer": MovieFormat.EER,
}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def detect_movie_format(path: Path) -> MovieFormat:
    """Format from the suffix, else from the file's first bytes."""
    known = _SUFFIXES.get(path.suffix.lower())
    if known is not None:
        return known
    try:
        with path.open("rb") as handle:
            head = handle.read(212)
    except OSError as error:
        raise MetadataError(path, "file", str(path), f"cannot read: {error}") from error
    if head[:4] in _TIFF_MAGIC:
        return MovieFormat.TIFF
    if head[208:212] == b"MAP ":
        return MovieFormat.MRC
    raise MetadataError(path, "format", path.suffix, "not an MRC, TIFF or EER movie")


def read_movie_header(path: Path) -> MovieHeader:
    """The header of the movie at ``path``; never decodes frames.

    MRC: shape ``(nz, ny, nx)``, mode as dtype, pixel size from the voxel size or
    an FEI extended header.  TIFF: frames counted along the IFD chain, compression
    name (``LZW``...).  EER: raw frame count, sensor shape (4096 x 4096 for a
    Falcon 4), compression ``EER_V0``/``EER_V1``/``EER_V2``.
    """
    path = Path(path)
    movie_format = detect_movie_format(path)
    try:
        if movie_format is MovieFormat.MRC:
            return read_mrc_header(path)
        return read_tiff_header(path, eer=movie_format is MovieFormat.EER)
    except FileNotFoundError as error:
        raise MetadataError(path, "file", str(path), "does not exist") from error
    except OSError as error:
        raise MetadataError(path, "file", str(path), f"cannot read: {error}") from error


def check_movie_header(path: Path) -> MovieFormat:
    """The one sanity check of a movie header against the file's size; returns the
    format.

    Run before anything is allocated from a header (:func:`read_movie_header`,
    the frame readers in :mod:`pipelines.io` and the live watcher all call it):
    MRC ``nsymbt`` and ``nx * ny * nz * bytes per value``, TIFF/EER IFDs, tag
    values and strip extents must all fit in the file.  Raises
    :class:`MetadataError` naming the file, the field and the value: empty file,
    not an MRC/TIFF/EER file (magic, MAP field, mode), or sizes the file does not
    hold.
    """
    path = Path(path)
    movie_format = detect_movie_format(path)
    try:
        if movie_format is MovieFormat.MRC:
            check_mrc_layout(path)
        else:
            check_tiff_layout(path)
    except FileNotFoundError as error:
        raise MetadataError(path, "file", str(path), "does not exist") from error
    except OSError as error:
        raise MetadataError(path, "file", str(path), f"cannot read: {error}") from error
    return movie_format


def check_movie_complete(path: Path, expected_frames: int | None = None) -> None:
    """Raise :class:`MetadataError` saying what is wrong unless the movie is whole.

    MRC: the size equals header + extended header + data.  TIFF/EER: the IFD
    chain ends properly and the last frame's data lies inside the file.  With
    ``expected_frames`` the frame count must match too.
    """
    path = Path(path)
    movie_format = detect_movie_format(path)
    try:
        if movie_format is MovieFormat.MRC:
            n_frames = check_mrc_complete(path).nz
        else:
            n_frames = read_tiff_header(path, eer=False).n_frames
    except FileNotFoundError as error:
        raise MetadataError(path, "file", str(path), "does not exist") from error
    except OSError as error:
        raise MetadataError(path, "file", str(path), f"cannot read: {error}") from error
    if expected_frames is not None and n_frames != expected_frames:
        raise MetadataError(
            path, "frames", n_frames, f"expected {expected_frames} frames"
        )


def movie_is_complete(path: Path, expected_frames: int | None = None) -> bool:
    """True once the movie is whole (:func:`check_movie_complete`); never raises
    for a file still being written."""
    try:
        check_movie_complete(path, expected_frames)
    except MetadataError:
        return False
    return True
