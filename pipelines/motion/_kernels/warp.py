"""numba kernels of the local warp (private; see :mod:`pipelines.motion.summing`).

A frame, or a block's sums, resampled at ``(x - Lx, y - Ly)`` with cubic (Keys,
a = -0.5) interpolation in two one-dimensional passes, ``L`` RELION's spatial
polynomial.  Callers check dtype, shape and contiguity; the kernels trust their
inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _keys_weights(
    f: float,
) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """The four cubic (Keys, a = -0.5) weights at fractional offset ``f``, in
    float32 (the frames' precision)."""
    g = np.float32(f)
    g2 = g * g
    half, one, one_half, two, two_half = (
        np.float32(0.5),
        np.float32(1.0),
        np.float32(1.5),
        np.float32(2.0),
        np.float32(2.5),
    )
    return (
        (-half * g + one) * g2 - half * g,
        (one_half * g - two_half) * g2 + one,
        (-one_half * g + two) * g2 + half * g,
        (half * g - half) * g2,
    )


# pixels along x that share one integer source offset in the warps'
# fast path (the local field moves < 1e-3 px per px: runs are thousands long)
WARP_CHUNK = 128


@njit(cache=True, fastmath=True, inline="always")
def _chunk_weights(
    a: tuple[float, float, float],
    s0: int,
    along: int,
    x0: int,
    nx: int,
    w: np.ndarray,
    index: np.ndarray,
) -> tuple[np.int64, np.int64]:
    """Cubic weights ``w[:, i]`` and integer source positions ``index[i]`` (less
    ``along * x``) of pixels ``x = x0 + i`` (``i < w.shape[1]``) of a row: source
    ``s0 + along * x - (a0 + a1 u + a2 u²)``, ``u = x / nx - 0.5``.  Returns the
    least and the largest index."""
    lo, hi = np.int64(1 << 40), np.int64(-(1 << 40))
    for i in range(w.shape[1]):
        x = x0 + i
        u = x / nx - 0.5
        s = s0 + along * x - (a[0] + (a[1] + a[2] * u) * u)
        floor = np.floor(s)
        w[0, i], w[1, i], w[2, i], w[3, i] = _keys_weights(s - floor)
        index[i] = np.int64(floor) - along * x
        lo, hi = min(lo, index[i]), max(hi, index[i])
    return lo, hi


@njit(cache=True, fastmath=True, inline="always")
def _row_coefficients(coeff: np.ndarray, v: float) -> tuple[float, float, float]:
    """The polynomial along a row at ``v``: ``L = a0 + a1 u + a2 u²``."""
    return (
        coeff[0] + coeff[3] * v + coeff[4] * v * v,
        coeff[1] + coeff[5] * v,
        coeff[2],
    )


# output rows per strip of :func:`warp_polynomial_add` (a thread's row
# buffer holds the strip's source rows: ~(STRIP + field span + 4) x nx floats)
WARP_STRIP = 64


@njit(cache=True, inline="always")
def _span(c1: float, c2: float, va: float, vb: float) -> tuple[float, float]:
    """Bounds of ``c1 t + c2 t²`` for ``t`` in ``[va, vb]`` (interval arithmetic)."""
    t2_lo = 0.0 if va <= 0.0 <= vb else min(va * va, vb * vb)
    t2_hi = max(va * va, vb * vb)
    return (
        min(c1 * va, c1 * vb) + min(c2 * t2_lo, c2 * t2_hi),
        max(c1 * va, c1 * vb) + max(c2 * t2_lo, c2 * t2_hi),
    )


@njit(cache=True)
def _source_rows(coeff_y: np.ndarray, y0: int, y1: int, ny: int) -> tuple[int, int]:
    """First and last source row (clamped to the frame) that the column pass
    reads for output rows ``y0 .. y1 - 1``: ``y - Ly(u, v)`` bounded by interval
    arithmetic over ``u`` in ``[-0.5, 0.5]`` and the strip's ``v``, the four
    cubic taps and one row of margin for rounding."""
    va, vb = y0 / ny - 0.5, (y1 - 1) / ny - 0.5
    u_lo, u_hi = _span(coeff_y[1], coeff_y[2], -0.5, 0.5)
    v_lo, v_hi = _span(coeff_y[3], coeff_y[4], va, vb)
    cross = abs(coeff_y[5]) * 0.5 * max(abs(va), abs(vb))
    low = coeff_y[0] + u_lo + v_lo - cross
    high = coeff_y[0] + u_hi + v_hi + cross
    first = int(np.floor(y0 - high)) - 2
    last = int(np.floor(y1 - 1 - low)) + 3
    return min(max(first, 0), ny - 1), min(max(last, 0), ny - 1)


@njit(cache=True, fastmath=True)
def _row_pass(
    images: np.ndarray, y: int, coeff_x: np.ndarray, rows: np.ndarray, r: int
) -> None:
    """Row ``y`` of every image moved along x into ``rows[:, r]``: the first
    pass of :func:`warp_polynomial_add`."""
    k, ny, nx = images.shape
    a = _row_coefficients(coeff_x, y / ny - 0.5)
    w = np.empty((4, WARP_CHUNK), dtype=np.float32)
    offset = np.empty(WARP_CHUNK, dtype=np.int64)
    for x0 in range(0, nx, WARP_CHUNK):
        m = min(WARP_CHUNK, nx - x0)
        lo, hi = _chunk_weights(a, 0, 1, x0, nx, w[:, :m], offset)
        if lo == hi and x0 + lo >= 1 and x0 + m + lo + 1 < nx:  # contiguous taps
            for c in range(k):
                src = images[c, y, x0 + lo - 1 : x0 + lo + m + 2]
                out = rows[c, r, x0 : x0 + m]
                for i in range(m):
                    out[i] = (
                        w[0, i] * src[i]
                        + w[1, i] * src[i + 1]
                        + w[2, i] * src[i + 2]
                        + w[3, i] * src[i + 3]
                    )
            continue
        for i in range(m):  # an offset changes in the chunk, or a border
            j = x0 + i + offset[i]
            i0, i1 = min(max(j - 1, 0), nx - 1), min(max(j, 0), nx - 1)
            i2, i3 = min(max(j + 1, 0), nx - 1), min(max(j + 2, 0), nx - 1)
            for c in range(k):
                rows[c, r, x0 + i] = (
                    w[0, i] * images[c, y, i0]
                    + w[1, i] * images[c, y, i1]
                    + w[2, i] * images[c, y, i2]
                    + w[3, i] * images[c, y, i3]
                )


@njit(cache=True, fastmath=True)
def _column_pass(
    rows: np.ndarray,
    base: int,
    top: int,
    out: np.ndarray,
    y: int,
    coeff_y: np.ndarray,
) -> None:
    """Row ``y`` of every output plus the buffered rows ``rows`` ``(k, capacity,
    nx)`` (source rows ``base .. top``) moved along y: the second pass of :func:`warp_polynomial_add`."""
    k, nx = rows.shape[0], rows.shape[2]
    ny = out.shape[1]
    a = _row_coefficients(coeff_y, y / ny - 0.5)
    w = np.empty((4, WARP_CHUNK), dtype=np.float32)
    row = np.empty(WARP_CHUNK, dtype=np.int64)
    for x0 in range(0, nx, WARP_CHUNK):
        m = min(WARP_CHUNK, nx - x0)
        lo, hi = _chunk_weights(a, y, 0, x0, nx, w[:, :m], row)
        if lo == hi and lo - 1 >= base and lo + 2 <= top:  # four buffered rows
            r = lo - base
            for c in range(k):
                r0, r1 = rows[c, r - 1, x0 : x0 + m], rows[c, r, x0 : x0 + m]
                r2, r3 = rows[c, r + 1, x0 : x0 + m], rows[c, r + 2, x0 : x0 + m]
                dst = out[c, y, x0 : x0 + m]
                for i in range(m):
                    dst[i] += (
                        w[0, i] * r0[i]
                        + w[1, i] * r1[i]
                        + w[2, i] * r2[i]
                        + w[3, i] * r3[i]
                    )
            continue
        for i in range(m):  # a border (clamped), or the offset changes
            j = row[i]
            j0 = min(max(j - 1, 0), ny - 1) - base
            j1 = min(max(j, 0), ny - 1) - base
            j2 = min(max(j + 1, 0), ny - 1) - base
            j3 = min(max(j + 2, 0), ny - 1) - base
            x = x0 + i
            for c in range(k):
                out[c, y, x] += (
                    w[0, i] * rows[c, j0, x]
                    + w[1, i] * rows[c, j1, x]
                    + w[2, i] * rows[c, j2, x]
                    + w[3, i] * rows[c, j3, x]
                )


@njit(cache=True, parallel=True)
def warp_polynomial_add(
    images: np.ndarray,
    out: np.ndarray,
    coeff_x: np.ndarray,
    coeff_y: np.ndarray,
    groups: int,
) -> None:
    """``out[i] += warp(images[i])`` for a stack ``(k, ny, nx)`` float32 warped by
    one field (the block's dose-weighted and plain sums; a single frame as a
    stack of one): each pixel's source position and cubic weights computed once
    for all ``k`` images, ``WARP_CHUNK`` pixels of a row at a time (where the
    chunk's integer source offset is one and inside the frame its taps are
    contiguous, vectorised loads; elsewhere gathered with clamping).  The first
    pass moves each row by ``Lx(x, y)``, the second each column by ``Ly(x, y)``:
    it reads rows ``y - Ly`` whose x move was taken at their own ``y``, which
    differs from the exact 2-D warp by ``dLx/dy * Ly`` -- ~1e-4 px for a local
    field of a few pixels -- at 8 taps a pixel instead of 16.  The output is taken
    in strips of ``WARP_STRIP`` rows; each thread moves the strip's source rows
    (bounded from the field's coefficients, :func:`_source_rows`) along x into
    its own buffer, then the buffer's columns along y into the strip: the
    intermediate image stays in cache instead of a write and a read of ``k``
    full-size images, at the price of moving the rows shared by two strips
    twice (the field's span over a row plus four taps, per strip).  ``groups``
    threads (``numba.get_num_threads()``) take contiguous runs of strips, each
    with one buffer."""
    k, ny, nx = images.shape
    n_strips = (ny + WARP_STRIP - 1) // WARP_STRIP
    firsts = np.empty(n_strips, dtype=np.int64)
    lasts = np.empty(n_strips, dtype=np.int64)
    capacity = 1
    for s in range(n_strips):
        y0, y1 = s * WARP_STRIP, min(ny, (s + 1) * WARP_STRIP)
        firsts[s], lasts[s] = _source_rows(coeff_y, y0, y1, ny)
        capacity = max(capacity, lasts[s] - firsts[s] + 1)
    groups = max(1, min(groups, n_strips))
    for g in prange(groups):
        rows = np.empty((k, capacity, nx), dtype=np.float32)
        for s in range(g * n_strips // groups, (g + 1) * n_strips // groups):
            base, top = firsts[s], lasts[s]
            for r in range(top - base + 1):
                _row_pass(images, base + r, coeff_x, rows, r)
            for y in range(s * WARP_STRIP, min(ny, (s + 1) * WARP_STRIP)):
                _column_pass(rows, base, top, out, y, coeff_y)
