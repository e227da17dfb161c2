"""Read movie frames as float32 ``(n_frames, ny, nx)``: MRC, TIFF and EER.

* MRC (``.mrc``, ``.mrcs``): the header read by mrcfile, the frames with
  ``readinto`` (not mapped); a 2D image is one frame.
* TIFF (``.tif``, ``.tiff``; LZW or any codec tifffile reads): every page a frame.
* EER (``.eer``; Falcon 4 electron events): raw frames are summed in groups of
  ``eer_frames_per_group`` (trailing raw frames that do not fill a group are
  dropped, as RELION does) and rendered at ``eer_upsampling`` 1 (the sensor's
  4096²) or 2 (8192², from the events' sub-pixel bits).  Use
  :func:`eer_frames_per_group` to pick the group size for a target dose per group.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mdcatch.errors import MetadataError
from mdcatch.headers.movie import check_movie_header
from pipelines.errors import StageInputError

__all__ = ["eer_frames_per_group", "read_movie"]

MRC_SUFFIXES = (".mrc", ".mrcs")
TIFF_SUFFIXES = (".tif", ".tiff")
EER_SUFFIXES = (".eer", ".ecc")


def eer_frames_per_group(
    dose_per_raw_frame_e_per_a2: float, group_dose_e_per_a2: float
) -> int:
    """Number of raw EER frames whose summed dose is closest to the target (≥ 1)."""
    if dose_per_raw_frame_e_per_a2 <= 0 or not math.isfinite(
        dose_per_raw_frame_e_per_a2
    ):
        raise ValueError(
            f"dose_per_raw_frame_e_per_a2 must be positive, got {dose_per_raw_frame_e_per_a2!r}"
        )
    if group_dose_e_per_a2 <= 0:
        raise ValueError(
            f"group_dose_e_per_a2 must be positive, got {group_dose_e_per_a2!r}"
        )
    return max(1, round(group_dose_e_per_a2 / dose_per_raw_frame_e_per_a2))


def _as_frames(array: np.ndarray, path: Path, native: bool = False) -> np.ndarray:
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) == 0:
        raise StageInputError(path, "shape", array.shape, "expected (n_frames, ny, nx)")
    keep = native and (array.dtype.kind in "iu" or array.dtype == np.float32)
    out = np.empty(
        array.shape, dtype=array.dtype.newbyteorder("=") if keep else np.float32
    )
    out[...] = array
    return out


def _read_mrc(path: Path, native: bool = False) -> np.ndarray:
    """The MRC's frames read with ``readinto``, a few at a time, never mapped: a
    mapped movie's file pages count in the process's resident set while the
    frames are copied (0.67 GB for a 4096² × 40 int8 movie on top of the heap;
    ``docs/motion.md``)."""
    import mrcfile
    import mrcfile.utils

    try:
        with mrcfile.open(path, mode="r", permissive=False, header_only=True) as mrc:
            header = mrc.header
            offset = header.nbytes + int(header.nsymbt)
            dtype = mrcfile.utils.data_dtype_from_header(header)
            shape = mrcfile.utils.data_shape_from_header(header)
    except (ValueError, OSError) as exc:
        raise StageInputError(path, "header", type(exc).__name__, str(exc)) from exc
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) == 0:
        raise StageInputError(path, "shape", shape, "expected (n_frames, ny, nx)")
    frame_bytes = dtype.itemsize * shape[1] * shape[2]
    size = path.stat().st_size
    if size < offset + frame_bytes * shape[0]:
        raise StageInputError(
            path,
            "data",
            size,
            f"file is {size} bytes, the header says {offset + frame_bytes * shape[0]}",
        )
    keep = native and (dtype.kind in "iu" or dtype == np.float32)
    out = np.empty(shape, dtype=dtype.newbyteorder("=") if keep else np.float32)
    direct = out.dtype == dtype
    # without conversion each frame is read straight into ``out``; otherwise a
    # few frames at a time (≤ 64 MB) into one reused buffer, converted from there
    step = 1 if direct else max(1, min(shape[0], (64 << 20) // frame_bytes))
    buffer = None if direct else np.empty((step, *shape[1:]), dtype)
    with path.open("rb", buffering=0) as handle:
        handle.seek(offset)
        for start in range(0, shape[0], step):
            stop = min(start + step, shape[0])
            target = out[start:stop] if buffer is None else buffer[: stop - start]
            view = target.reshape(-1).view(np.uint8).data
            done = 0
            while done < len(view):
                got = handle.readinto(view[done:])
                if not got:
                    raise StageInputError(
                        path, "data", start, "file ended inside this frame"
                    )
                done += got
            if buffer is not None:
                out[start:stop] = target
    return out


def _read_tiff(path: Path, native: bool = False) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_eer:
                return _read_eer(path, 1, 1, native)
            data = tif.asarray(key=range(len(tif.pages)))
    except (ValueError, OSError) as exc:
        raise StageInputError(path, "tiff", type(exc).__name__, str(exc)) from exc
    return _as_frames(data, path, native)


def _read_eer(
    path: Path, frames_per_group: int, upsampling: int, native: bool = False
) -> np.ndarray:
    import tifffile

    if upsampling not in (1, 2):
        raise StageInputError(path, "eer_upsampling", upsampling, "must be 1 or 2")
    if frames_per_group < 1:
        raise StageInputError(
            path, "eer_frames_per_group", frames_per_group, "must be >= 1"
        )
    superres = 0 if upsampling == 1 else 1
    try:
        with tifffile.TiffFile(path, superres=superres) as tif:
            n_raw = len(tif.pages)
            n_groups = n_raw // frames_per_group
            if n_groups == 0:
                raise StageInputError(
                    path,
                    "eer_frames_per_group",
                    frames_per_group,
                    f"larger than the {n_raw} raw frames in the file",
                )
            first = tif.pages.first
            # an EER readout holds at most one event per (sub-)pixel, so a group
            # of up to 255 readouts fits one byte per pixel
            dtype: type[np.generic] = np.float32
            if native:
                dtype = np.uint8 if frames_per_group <= 255 else np.uint16
            out = np.zeros((n_groups, *first.shape[-2:]), dtype=dtype)
            for group in range(n_groups):
                start = group * frames_per_group
                for raw in range(start, start + frames_per_group):
                    np.add(out[group], tif.pages[raw].asarray(), out=out[group])
    except (ValueError, OSError) as exc:
        if isinstance(exc, StageInputError):
            raise
        raise StageInputError(path, "eer", type(exc).__name__, str(exc)) from exc
    return out


def _check_header(path: Path) -> None:
    """mdcatch's header sanity check, before any frame is allocated; its error
    becomes a :class:`StageInputError` with the same file, field and value."""
    try:
        check_movie_header(path)
    except MetadataError as exc:
        raise StageInputError(path, exc.field, exc.value, exc.reason) from exc


def read_movie(
    path: str | Path,
    *,
    eer_frames_per_group: int = 1,
    eer_upsampling: int = 1,
    native: bool = False,
) -> np.ndarray:
    """All frames of the movie at ``path`` as float32 ``(n_frames, ny, nx)``.

    With ``native`` integer (and float32) frames keep the file's type, in native
    byte order (int8 for MRC mode 0, uint8 for most TIFFs, uint8 group sums for
    EER): a 4096² × 40 counting movie is 0.67 GB instead of 2.7 GB as float32;
    :func:`pipelines.motion.correct.correct_motion` converts one frame at a time.

    Raises :class:`StageInputError` naming the file for a missing, truncated or
    unreadable movie or an unknown suffix.
    """
    movie = Path(path)
    if not movie.is_file():
        raise StageInputError(movie, "path", str(movie), "movie file does not exist")
    suffix = movie.suffix.lower()
    if suffix in (*MRC_SUFFIXES, *TIFF_SUFFIXES, *EER_SUFFIXES):
        _check_header(movie)
    if suffix in MRC_SUFFIXES:
        return _read_mrc(movie, native)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(movie, native)
    if suffix in EER_SUFFIXES:
        return _read_eer(movie, eer_frames_per_group, eer_upsampling, native)
    raise StageInputError(
        movie, "suffix", suffix, "expected .mrc, .mrcs, .tif, .tiff or .eer"
    )
