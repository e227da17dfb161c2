"""numba kernels of motion correction's defect map (private; used by
:class:`pipelines.motion.defects.PreparedFrames`).

Each replaces a chain of full-size NumPy masks (a 4096² frame: 16.8 M pixels
per pass) by one parallel pass over the rows, with the same values.  Callers
check dtype, shape and contiguity; the kernels trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def clean_gain(gain: np.ndarray, out: np.ndarray, bad: np.ndarray) -> None:
    """``bad = ~isfinite(gain) | (gain <= 0)`` and ``out = where(bad, 0, gain)``
    in one pass.  ``gain`` and ``out`` ``(ny, nx)`` float32, ``bad`` bool."""
    ny, nx = gain.shape
    zero = np.float32(0.0)
    for y in prange(ny):
        for x in range(nx):
            g = gain[y, x]
            b = not (np.isfinite(g) and g > zero)
            bad[y, x] = b
            out[y, x] = zero if b else g


@njit(cache=True, parallel=True)
def mark_defects(
    frame_sum: np.ndarray,
    hot_above: np.float32,
    dead: bool,
    defects: np.ndarray,
    good: np.ndarray,
) -> int:
    """Add the hot pixels (``frame_sum > hot_above``, not already in
    ``defects``) and, with ``dead``, the dead ones (``frame_sum <= 0``) to
    ``defects`` in place, write ``good = ~defects`` and return the number of hot
    pixels, in one pass.  ``frame_sum`` ``(ny, nx)`` float32 (compared in
    float32, as NumPy compares a float32 array with a scalar), ``defects`` and
    ``good`` bool."""
    ny, nx = frame_sum.shape
    zero = np.float32(0.0)
    counts = np.zeros(ny, dtype=np.int64)
    for y in prange(ny):
        n_hot = 0
        for x in range(nx):
            v = frame_sum[y, x]
            d = defects[y, x]
            if not d and v > hot_above:
                n_hot += 1
                d = True
            if dead and v <= zero:
                d = True
            defects[y, x] = d
            good[y, x] = not d
        counts[y] = n_hot
    return int(counts.sum())
