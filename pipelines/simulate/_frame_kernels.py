"""numba kernels that render movie frames (private: use :mod:`pipelines.simulate.movie`).

- :func:`frame_spectrum`: damage filter and drift phase ramp on the half-spectrum.
- :func:`warp_frame`: local motion (Keys cubic) and transmission drift (linear).
- :func:`poisson_counts`: shot noise by inversion of one uniform per pixel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def frame_spectrum(  # pragma: no cover
    contrast_ft: NDArray[np.complex64],
    damage_rate: NDArray[np.float32],
    dose: float,
    ey: NDArray[np.complex64],
    ex: NDArray[np.complex64],
    out: NDArray[np.complex64],
) -> None:
    """``out = contrast_ft * exp(damage_rate * dose) * ey[:, None] * ex[None, :]``.

    ``damage_rate`` may be empty (no damage).  One pass over the half-spectrum.
    """
    ny, nx = contrast_ft.shape
    damaged = damage_rate.shape[0] > 0
    for y in prange(ny):
        wy = ey[y]
        for x in range(nx):
            value = contrast_ft[y, x] * wy * ex[x]
            if damaged:
                value = value * np.float32(np.exp(damage_rate[y, x] * dose))
            out[y, x] = value


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def warp_frame(  # pragma: no cover
    transmission: NDArray[np.float32],
    contrast: NDArray[np.float32],
    coef_x: NDArray[np.float64],
    coef_y: NDArray[np.float64],
    shift_x: float,
    shift_y: float,
    pad_y: float,
    pad_x: float,
    warp_contrast: bool,
    out: NDArray[np.float32],
) -> None:
    """One frame's intensity ``T(r - s - l(r)) * (1 + C(r - l(r)))`` on the movie grid.

    ``contrast`` is already moved by the whole-frame shift ``s``; ``l`` is the local
    polynomial field with this frame's spatial coefficients ``coef_x``/``coef_y`` on
    (u, v, u^2 - 1/12, uv, v^2 - 1/12), u = x/(nx-1) - 1/2, v = y/(ny-1) - 1/2.
    Both inputs are on the padded grid (offset ``pad_y``, ``pad_x``).  The smooth
    transmission is resampled linearly, the contrast with Keys' cubic kernel.
    """
    ny, nx = out.shape
    y_max = transmission.shape[0] - 1
    x_max = transmission.shape[1] - 1
    inv_y = 1.0 / max(ny - 1, 1)
    inv_x = 1.0 / max(nx - 1, 1)
    for y in prange(ny):
        v = y * inv_y - 0.5
        for x in range(nx):
            u = x * inv_x - 0.5
            b2 = u * u - 1.0 / 12.0
            b3 = u * v
            b4 = v * v - 1.0 / 12.0
            lx = (
                coef_x[0] * u
                + coef_x[1] * v
                + coef_x[2] * b2
                + coef_x[3] * b3
                + coef_x[4] * b4
            )
            ly = (
                coef_y[0] * u
                + coef_y[1] * v
                + coef_y[2] * b2
                + coef_y[3] * b3
                + coef_y[4] * b4
            )
            t = _linear_at(
                transmission,
                y + pad_y - ly - shift_y,
                x + pad_x - lx - shift_x,
                y_max,
                x_max,
            )
            if warp_contrast:
                c = _cubic_at(contrast, y + pad_y - ly, x + pad_x - lx, y_max, x_max)
            else:
                c = contrast[y + int(pad_y), x + int(pad_x)]
            out[y, x] = t * (1.0 + c)


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def _keys(t: float) -> float:  # pragma: no cover
    """Keys' cubic convolution kernel (a = -0.5)."""
    t = abs(t)
    if t < 1.0:
        return (1.5 * t - 2.5) * t * t + 1.0
    if t < 2.0:
        return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return 0.0


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def _linear_at(  # pragma: no cover
    image: NDArray[np.float32], sy: float, sx: float, y_max: int, x_max: int
) -> float:
    iy = min(max(int(np.floor(sy)), 0), y_max - 1)
    ix = min(max(int(np.floor(sx)), 0), x_max - 1)
    fy = min(max(sy - iy, 0.0), 1.0)
    fx = min(max(sx - ix, 0.0), 1.0)
    top: float = image[iy, ix] + fx * (image[iy, ix + 1] - image[iy, ix])
    bottom: float = image[iy + 1, ix] + fx * (image[iy + 1, ix + 1] - image[iy + 1, ix])
    return top + fy * (bottom - top)


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def _cubic_at(  # pragma: no cover
    image: NDArray[np.float32], sy: float, sx: float, y_max: int, x_max: int
) -> float:
    iy = int(np.floor(sy))
    ix = int(np.floor(sx))
    fy = sy - iy
    fx = sx - ix
    wx0 = _keys(fx + 1.0)
    wx1 = _keys(fx)
    wx2 = _keys(fx - 1.0)
    wx3 = _keys(fx - 2.0)
    if iy >= 1 and ix >= 1 and iy + 2 <= y_max and ix + 2 <= x_max:
        acc = 0.0
        for m in range(-1, 3):
            r = iy + m
            row = (
                wx0 * image[r, ix - 1]
                + wx1 * image[r, ix]
                + wx2 * image[r, ix + 1]
                + wx3 * image[r, ix + 2]
            )
            acc += _keys(fy - m) * row
        return acc
    acc = 0.0
    for m in range(-1, 3):
        yy = min(max(iy + m, 0), y_max)
        row = 0.0
        for n in range(-1, 3):
            xx = min(max(ix + n, 0), x_max)
            row += _keys(fx - n) * image[yy, xx]
        acc += _keys(fy - m) * row
    return acc


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def poisson_counts(  # pragma: no cover
    intensity: NDArray[np.float32],
    scale: NDArray[np.float32],
    uniforms: NDArray[np.float32],
    out: NDArray[np.uint8],
) -> None:
    """``out = Poisson(max(intensity, 0) * scale)`` by inversion of one uniform per pixel.

    Exact for any mean; counts above 255 saturate (``out`` is uint8).  Each row
    first computes means and ``exp(-mean)`` (a loop that vectorises), then inverts.
    """
    ny, nx = out.shape
    for y in prange(ny):
        lam = np.empty(nx)
        p0 = np.empty(nx)
        for x in range(nx):
            lam[x] = max(intensity[y, x], 0.0) * scale[y, x]
        for x in range(nx):
            p0[x] = np.exp(-lam[x])
        for x in range(nx):
            u = uniforms[y, x]
            p = p0[x]
            cdf = p
            k = 0
            while u > cdf and k < 255:
                k += 1
                p *= lam[x] / k
                cdf += p
            out[y, x] = k
