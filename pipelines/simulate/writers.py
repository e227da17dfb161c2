"""Write simulated movies as a microscope would: MRC, LZW TIFF or EER.

- MRC: integer counts as int8 (mode 0) when they fit, else uint16 (mode 6); other
  data as float16 (mode 12) or float32 (mode 2) when float16 would overflow.
  An image stack (``ispg`` 0) with the pixel size in the header.
- TIFF: one LZW-compressed uint8 page per frame (counts saturate at 255).
- EER: see :mod:`pipelines.simulate.eer`.  Frames that already hold 0/1 are
  written one page each; otherwise each frame's counts are spread over
  ``eer_subframes_per_frame`` sub-frames (needs ``rng``).

Every file is written to a temporary name, fsynced and renamed
(:func:`pipelines.io.outputs.atomic_path`).  Reading is :func:`pipelines.io.movies.read_movie`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdcatch.records import MovieFormat
from pipelines.errors import StageInputError
from pipelines.io.outputs import atomic_path
from pipelines.simulate.eer import split_counts_into_subframes, write_eer

__all__ = ["MovieFormat", "write_gain_reference", "write_movie"]


def _mrc_array(frames: np.ndarray) -> np.ndarray:
    if np.issubdtype(frames.dtype, np.integer) or np.issubdtype(frames.dtype, np.bool_):
        low, high = int(frames.min(initial=0)), int(frames.max(initial=0))
        if low >= -128 and high <= 127:
            return frames.astype(np.int8)
        if low >= 0 and high <= 65535:
            return frames.astype(np.uint16)
        return frames.astype(np.float32)
    peak = float(np.abs(frames).max(initial=0.0))
    return frames.astype(np.float16 if peak < 6.0e4 else np.float32)


def _write_mrc(frames: np.ndarray, path: Path, pixel_size_a: float) -> None:
    import mrcfile

    data = _mrc_array(frames)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        if data.ndim == 3:
            mrc.set_image_stack()
        mrc.voxel_size = pixel_size_a


def _write_tiff(frames: np.ndarray, path: Path, pixel_size_a: float) -> None:
    import tifffile

    data = np.clip(frames, 0, 255).astype(np.uint8)
    pixels_per_cm = 1e8 / pixel_size_a
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            compression="lzw",
            photometric="minisblack",
            metadata=None,
            resolution=(pixels_per_cm, pixels_per_cm),
            resolutionunit="CENTIMETER",
        )


def write_movie(
    frames: np.ndarray,
    path: str | Path,
    *,
    fmt: MovieFormat,
    pixel_size_a: float,
    rng: np.random.Generator | None = None,
    eer_subframes_per_frame: int | None = None,
) -> Path:
    """Write ``frames`` ``(n_frames, ny, nx)`` (counts) to ``path`` as ``fmt``; return it."""
    path = Path(path)
    data = np.asarray(frames)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise StageInputError(path, "frames", data.shape, "must be (n_frames, ny, nx)")
    if pixel_size_a <= 0:
        raise StageInputError(path, "pixel_size_a", pixel_size_a, "must be > 0")
    if fmt is MovieFormat.MRC:
        _write_mrc(data, path, pixel_size_a)
    elif fmt is MovieFormat.TIFF:
        _write_tiff(data, path, pixel_size_a)
    elif fmt is MovieFormat.EER:
        if eer_subframes_per_frame is None:
            if data.size and (data.min() < 0 or data.max() > 1):
                raise StageInputError(
                    path,
                    "eer_subframes_per_frame",
                    None,
                    "frames hold more than 1 count per pixel: give the sub-frames per frame",
                )
            write_eer(data, path, pixel_size_a=pixel_size_a, rng=rng)
        else:
            if rng is None:
                raise StageInputError(
                    path, "rng", None, "splitting counts into sub-frames needs rng"
                )
            k = int(eer_subframes_per_frame)
            subframes = (
                sub
                for frame in data
                for sub in split_counts_into_subframes(frame, k, rng)
            )
            write_eer(
                subframes,
                path,
                pixel_size_a=pixel_size_a,
                rng=rng,
                n_frames=k * data.shape[0],
            )
    else:
        raise StageInputError(path, "fmt", fmt, "expected MovieFormat.MRC, TIFF or EER")
    return path


def write_gain_reference(
    gain_reference: np.ndarray, path: str | Path, *, pixel_size_a: float
) -> Path:
    """Write a gain reference ``(ny, nx)`` as float32 MRC (what EPU/SerialEM ship)."""
    import mrcfile

    data = np.asarray(gain_reference, dtype=np.float32)
    if data.ndim != 2:
        raise StageInputError(path, "gain_reference", data.shape, "must be (ny, nx)")
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = pixel_size_a
    return Path(path)
