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
from pipelines.motion._kernels import core as _motion_kernels
from pipelines.motion._kernels import defects as _defect_kernels
from pipelines.motion._kernels import gain as _gain_kernels

__all__ = [
    "PreparedFrames",
    "apply_gain",
    "detect_dead_pixels",
    "detect_hot_pixels",
    "mask_defects",
    "orient_gain",
]

# detect_dead_pixels' default: the chance that a working pixel counted nothing
DEAD_MAX_PROBABILITY = 1e-9

# frame types prepared by the numba kernel (native byte order; others by NumPy)
_GAIN_KERNEL_TYPES = tuple(
    np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.float32)
)


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
    sample = _sample(frame_sum)
    median = float(np.median(sample))
    hot: NDArray[np.bool_] = frame_sum > _hot_threshold(sample, median, n_sigma)
    return hot


def _sample(frame_sum: np.ndarray) -> np.ndarray:
    """About a million evenly strided pixels of the frame sum (the detectors'
    median and spread)."""
    sample: np.ndarray = frame_sum.ravel()[:: max(1, frame_sum.size // 1_000_000)]
    return sample


def _hot_threshold(sample: np.ndarray, median: float, n_sigma: float) -> float:
    """:func:`detect_hot_pixels`' threshold from the sample and its median."""
    mad = float(np.median(np.abs(sample - median))) * 1.4826
    sigma = max(mad, np.sqrt(max(median, 1.0)))
    return float(median + n_sigma * sigma)


def _dead_detectable(median: float, max_probability: float) -> bool:
    """Whether :func:`detect_dead_pixels` calls any pixel dead at this median."""
    return bool(median > -np.log(max_probability))


def detect_dead_pixels(
    frame_sum: np.ndarray, *, max_probability: float = DEAD_MAX_PROBABILITY
) -> np.ndarray:
    """Pixels that counted nothing where a working pixel almost surely would have.

    A pixel is dead when its frame sum is 0 and a Poisson count with the median
    mean is 0 with probability below ``max_probability`` (median > ~21 counts at
    1e-9); at lower doses no pixel is called dead.
    """
    median = float(np.median(_sample(frame_sum)))
    if not _dead_detectable(median, max_probability):
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


class PreparedFrames:
    """Gain-corrected, defect-free float32 frames made one at a time from the
    movie's own (integer) frames, so a movie is held at one byte per pixel and
    only one full-size float32 frame exists at a time.

    The defect map is built once (gain defects, ``defect_mask``, hot and dead
    pixels of the gain-corrected frame sum, as :func:`detect_hot_pixels` and
    :func:`detect_dead_pixels`); ``prepared(i)`` returns frame ``i`` in a buffer
    that the next call overwrites.  ``frames`` ``(n, ny, nx)`` is never modified.
    """

    def __init__(
        self,
        frames: np.ndarray,
        *,
        gain: np.ndarray | None = None,
        defect_mask: np.ndarray | None = None,
        hot_pixel_sigma: float | None = 10.0,
        radius: int = 2,
    ) -> None:
        if frames.ndim != 3:
            raise ValueError(
                f"frames must be (n_frames, ny, nx), got shape {frames.shape}"
            )
        self.frames = frames
        shape = frames.shape[1:]
        defects = np.zeros(shape, dtype=bool)
        self.gain: np.ndarray | None = None
        if gain is not None:
            gain32 = np.asarray(gain, dtype=np.float32)
            if gain32.shape != shape:
                raise StageInputError(
                    "<movie>",
                    "gain.shape",
                    gain32.shape,
                    f"does not match the frame shape {shape} (check the rotation)",
                )
            # one pass: the gain's defects (not finite or <= 0) and the gain
            # with 0 there (docs/motion_speed.md, thirteenth revision)
            self.gain = np.empty(shape, dtype=np.float32)
            _defect_kernels.clean_gain(np.ascontiguousarray(gain32), self.gain, defects)
        if defect_mask is not None:
            mask = np.asarray(defect_mask, dtype=bool)
            if mask.shape != shape:
                raise ValueError(f"defect_mask {mask.shape} vs frames {shape}")
            defects |= mask
        self.n_hot = 0
        good: np.ndarray | None = None
        if hot_pixel_sigma is not None:
            frame_sum = np.empty(shape, dtype=np.float32)
            if frames.flags.c_contiguous and frames.dtype.isnative:
                _motion_kernels.frame_sum(frames, frame_sum)  # one parallel pass
            else:
                frame_sum[...] = 0
                for frame in frames:
                    np.add(frame_sum, frame, out=frame_sum)
            if self.gain is not None:
                frame_sum *= self.gain
            # detect_hot_pixels (not where already a defect) and
            # detect_dead_pixels with one median, marked in one pass
            sample = _sample(frame_sum)
            median = float(np.median(sample))
            good = np.empty(shape, dtype=bool)
            self.n_hot = _defect_kernels.mark_defects(
                frame_sum,
                np.float32(_hot_threshold(sample, median, hot_pixel_sigma)),
                _dead_detectable(median, DEAD_MAX_PROBABILITY),
                defects,
                good,
            )
        ys, xs = np.nonzero(defects)
        self.ys = ys.astype(np.int64)
        self.xs = xs.astype(np.int64)
        self.good = ~defects if good is None else good
        self.radius = int(radius)
        self.n_defects = int(ys.size)
        self._buffer = np.empty((1, *shape), dtype=np.float32)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __call__(self, index: int) -> np.ndarray:
        out = self._buffer
        frame_in = self.frames[index]
        if (
            self.gain is not None
            and frame_in.dtype in _GAIN_KERNEL_TYPES
            and frame_in.flags.c_contiguous
        ):
            # one parallel pass, the values of np.multiply (_gain_kernels)
            _gain_kernels.gain_multiply(frame_in, self.gain, out[0])
        elif self.gain is not None:
            np.multiply(frame_in, self.gain, out=out[0])
        else:
            out[0] = self.frames[index]
        if self.n_defects:
            _motion_kernels.fill_defects(out, self.ys, self.xs, self.good, self.radius)
        frame: np.ndarray = out[0]
        return frame
