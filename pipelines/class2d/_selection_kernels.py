"""numba kernel of particle-level selection (private: call it through
:func:`pipelines.class2d.particle_measures.pose_class_images`).

- :func:`pose_gather`: each particle's class images (average and support) at its
  pose, bilinear, zero outside the box.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True, parallel=True)
def pose_gather(  # pragma: no cover - compiled
    stack: NDArray[np.float64],
    classes: NDArray[np.int64],
    cos_a: NDArray[np.float64],
    sin_a: NDArray[np.float64],
    shift_x: NDArray[np.float64],
    shift_y: NDArray[np.float64],
    out: NDArray[np.float64],
) -> None:
    """``out[b, ch, y, x] = stack[classes[b], ch](Rot(a_b) ((x, y) - c - s_b) + c)``.

    ``stack`` ``(K, C, N, N)`` float64, ``out`` ``(B, C, N, N)`` float64; ``c`` is
    the centre pixel ``N // 2``; ``Rot(a)`` turns (x, y) counter-clockwise.
    """
    n_out = out.shape[0]
    n_ch = out.shape[1]
    box = out.shape[2]
    centre = box // 2
    for b in prange(n_out):
        k = classes[b]
        c = cos_a[b]
        s = sin_a[b]
        for iy in range(box):
            dy = iy - centre - shift_y[b]
            for ix in range(box):
                dx = ix - centre - shift_x[b]
                xr = c * dx - s * dy + centre
                yr = s * dx + c * dy + centre
                x0 = int(np.floor(xr))
                y0 = int(np.floor(yr))
                fx = xr - x0
                fy = yr - y0
                for ch in range(n_ch):
                    total = 0.0
                    for oy in range(2):
                        yy = y0 + oy
                        if yy < 0 or yy >= box:
                            continue
                        wy = fy if oy == 1 else 1.0 - fy
                        for ox in range(2):
                            xx = x0 + ox
                            if xx < 0 or xx >= box:
                                continue
                            wx = fx if ox == 1 else 1.0 - fx
                            total += wy * wx * stack[k, ch, yy, xx]
                    out[b, ch, iy, ix] = total
