"""Gain reference orientation and application, defect and hot-pixel masking.

Gain references are multiplicative (counting detectors: corrected = raw * gain), as
RELION and MotionCor2 use them.  Their orientation relative to the movie comes from
the detector profile: a counter-clockwise rotation by ``rotation_deg`` (0, 90, 180,
270; ``np.rot90`` on ``(y, x)`` arrays) and then a flip, ``"x"`` (mirror the x
axis: left-right) or ``"y"`` (mirror the y axis: up-down).  Defects are replaced by
the mean of their good neighbours in every frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.motion import _kernels as _motion_kernels

__all__ = [
    "apply_gain",
    "detect_dead_pixels",
    "detect_hot_pixels",
    "mask_defects",
    "orient_gain",
]


def orient_gain(
    gain: np.ndarray,
    rotation_deg: int = 0,
    flip: str | None = None,
    *,
    path: str | Path = "<gain>",
) -> np.ndarray:
    """Rotate (counter-clockwise, multiples of 90°) then flip a ``(ny, nx)`` gain."""
    if gain.ndim != 2:
        raise StageInputError(path, "gain.shape", gain.shape, "gain must be 2D")
    if rotation_deg % 90 != 0:
        raise StageInputError(
            path, "gain_rotation_deg", rotation_deg, "must be a multiple of 90"
        )
    out = np.rot90(gain, k=(rotation_deg // 90) % 4)
    if flip in (None, "", "none"):
        pass
    elif flip == "x":
        out = out[:, ::-1]
    elif flip == "y":
        out = out[::-1, :]
    else:
        raise StageInputError(path, "gain_flip", flip, "must be None, 'x' or 'y'")
    return np.ascontiguousarray(out, dtype=np.float32)


def apply_gain(
    frames: np.ndarray, gain: np.ndarray, *, path: str | Path = "<movie>"
) -> NDArray[np.bool_]:
    """Multiply ``(n, ny, nx)`` float32 frames by the gain in place; return the
    ``(ny, nx)`` mask of pixels the gain marks as defects (not finite or ≤ 0)."""
    if gain.shape != frames.shape[1:]:
        raise StageInputError(
            path,
            "gain.shape",
            gain.shape,
            f"does not match the frame shape {frames.shape[1:]} (check the rotation)",
        )
    bad: NDArray[np.bool_] = ~np.isfinite(gain) | (gain <= 0)
    clean = np.where(bad, 0.0, gain).astype(np.float32)
    frames *= clean[None]
    return bad


def detect_hot_pixels(
    frame_sum: np.ndarray, *, n_sigma: float = 10.0
) -> NDArray[np.bool_]:
    """Pixels of the frame sum far above the rest: ``(ny, nx)`` bool.

    Threshold ``median + n_sigma * max(1.4826 * MAD, sqrt(max(median, 1)))``: the
    larger of the robust spread and the Poisson spread, so specimen contrast and
    sparse counts are never flagged.
    """
    sample = frame_sum.ravel()[:: max(1, frame_sum.size // 1_000_000)]
    median = float(np.median(sample))
    mad = float(np.median(np.abs(sample - median))) * 1.4826
    sigma = max(mad, np.sqrt(max(median, 1.0)))
    hot: NDArray[np.bool_] = frame_sum > median + n_sigma * sigma
    return hot


def detect_dead_pixels(
    frame_sum: np.ndarray, *, max_probability: float = 1e-9
) -> np.ndarray:
    """Pixels that counted nothing where a working pixel almost surely would have.

    A pixel is dead when its frame sum is 0 and a Poisson count with the median
    mean is 0 with probability below ``max_probability`` (median > ~21 counts at
    1e-9); at lower doses no pixel is called dead.
    """
    sample = frame_sum.ravel()[:: max(1, frame_sum.size // 1_000_000)]
    median = float(np.median(sample))
    if median <= -np.log(max_probability):
        return np.zeros(frame_sum.shape, dtype=bool)
    return frame_sum <= 0


def mask_defects(frames: np.ndarray, defects: np.ndarray, *, radius: int = 2) -> int:
    """Replace defect pixels in every frame by the mean of good neighbours.

    ``frames`` is ``(n, ny, nx)`` float32 C-contiguous (modified in place);
    ``defects`` is ``(ny, nx)`` bool.  Returns the number of pixels replaced.
    """
    if frames.dtype != np.float32 or frames.ndim != 3 or not frames.flags.c_contiguous:
        raise TypeError("frames must be a C-contiguous float32 (n, ny, nx) array")
    if defects.shape != frames.shape[1:]:
        raise ValueError(f"defects {defects.shape} vs frames {frames.shape[1:]}")
    ys, xs = np.nonzero(defects)
    if ys.size:
        _motion_kernels.fill_defects(
            frames, ys.astype(np.int64), xs.astype(np.int64), ~defects, int(radius)
        )
    return int(ys.size)
