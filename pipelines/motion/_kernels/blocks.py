"""numba kernels of the local warp's block sum (private; see
:mod:`pipelines.motion.summing`).

Callers check dtype, shape and contiguity; the kernels trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pipelines.motion._kernels.core import (
    WARP_CHUNK,
    _chunk_weights,
    _row_coefficients,
)


@njit(cache=True, inline="always", fastmath=True)
def _frame_weight(
    weight: np.ndarray,
    half_e: np.float32,
    inv_ne_row: np.ndarray,
    inv_norm_row: np.ndarray,
) -> None:
    """``weight = exp(half_e inv_ne) inv_norm`` along a row."""
    for x in range(weight.shape[0]):
        weight[x] = np.exp(half_e * inv_ne_row[x]) * inv_norm_row[x]


@njit(cache=True, inline="always", fastmath=True)
def _add_exact(
    exact: np.ndarray,
    ramp: np.ndarray,
    ey: np.complex64,
    weight: np.ndarray,
    acc_plain: np.ndarray,
    acc_weighted: np.ndarray,
) -> None:
    """Add a row's exact low-frequency columns ``exact`` (complex64)."""
    for x in range(exact.shape[0]):
        value = exact[x] * (ey * ramp[x])
        acc_plain[x] += value
        acc_weighted[x] += value * weight[x]


@njit(cache=True, inline="always", fastmath=True)
def _add_held(
    held_row: np.ndarray,
    scale_row: np.ndarray,
    block: int,
    first: int,
    ramp: np.ndarray,
    ey: np.complex64,
    weight: np.ndarray,
    acc_plain: np.ndarray,
    acc_weighted: np.ndarray,
) -> None:
    """Add a row's int8 coefficients from column ``first`` on (``held_row``
    ``(2 nxh,)``, one scale per ``block``), a scale block at a time: each inner
    loop over one-dimensional slices from index 0, which numba vectorises."""
    nxh = acc_plain.shape[0]
    for b in range(scale_row.shape[0]):
        begin = max(b * block, first)
        end = min(nxh, (b + 1) * block)
        if begin >= end:
            continue
        s = scale_row[b]
        held = held_row[2 * begin : 2 * end]
        ramp_b = ramp[begin:end]
        plain_b = acc_plain[begin:end]
        weighted_b = acc_weighted[begin:end]
        weight_b = weight[begin:end]
        for x in range(end - begin):
            decoded = complex(
                np.float32(held[2 * x]) * s, np.float32(held[2 * x + 1]) * s
            )
            value = np.complex64(decoded) * (ey * ramp_b[x])
            plain_b[x] += value
            weighted_b[x] += value * weight_b[x]


@njit(cache=True, inline="always")
def _store(row: np.ndarray, acc: np.ndarray, add: bool) -> None:
    """``row += acc`` with ``add``, else ``row = acc``."""
    if add:
        row += acc
    else:
        row[:] = acc


@njit(cache=True, parallel=True, fastmath=True)
def accumulate_held_blocks(
    values: np.ndarray,
    scales: np.ndarray,
    block: int,
    low: np.ndarray,
    ramp_y: np.ndarray,
    ramp_x: np.ndarray,
    inv_ne: np.ndarray,
    inv_norm: np.ndarray,
    exposures: np.ndarray,
    step: np.ndarray,
    uniform: bool,
    plain: np.ndarray,
    weighted: np.ndarray,
    weights: np.ndarray,
    add_plain: bool,
) -> None:
    """The shifted, dose-weighted sums of held spectra
    (:func:`pipelines.motion.blocks.sum_held_block` says which): ``values``
    ``(n, ny, 2 (nx // 2 + 1))`` int8, the held ``(n, ny, nx // 2 + 1, 2)``
    values' flat view, their ``scales`` per ``block`` coefficients and the exact
    ``low`` ``(n, 2 m, m)``; the phase ramps ``ramp_y`` ``(n, ny)``, ``ramp_x``
    ``(n, nx // 2 + 1)`` complex64; the dose grids ``inv_ne``, ``inv_norm``,
    ``exposures``, ``step`` (with ``uniform``); ``plain`` and ``weighted``
    overwritten (with ``add_plain`` the plain sum is added to ``plain``); and ``weights`` ``(ny, nx //
    2 + 1)`` float32, the first frame's normalised dose weight on entry, on
    return the weight of the frame after the last (``w step``, or the
    exponential of ``exposures[n]`` when ``exposures`` holds ``n + 1`` values,
    else left as the last frame's): the next block of frames starts from it,
    so that a movie's blocks continue one recurrence instead of each paying
    one exponential per coefficient (~30 ms a block at 4096²).

    The int8 values are decoded inside the accumulating loop, and every inner
    loop runs over a one-dimensional slice from index 0 (a scale block): numba
    did not vectorise the loops over ``range(b * block, ...)`` of the whole row
    nor the two-dimensional ``(x, 2)`` loads (2.8 ns a coefficient and frame
    against 0.65 here, in cache; docs/motion.md, *Speed*, twelfth revision
    (local path))."""
    n, ny, nxh = values.shape[0], values.shape[1], plain.shape[1]
    m = low.shape[2]
    for y in prange(ny):
        acc_plain = np.zeros(nxh, dtype=np.complex64)
        acc_weighted = np.zeros(nxh, dtype=np.complex64)
        weight = weights[y].copy()
        # signed: the prange index is unsigned, and mixed arithmetic gives floats
        row = np.int64(-1)
        if y < m:
            row = np.int64(y)
        elif y >= ny - m:
            row = np.int64(y) - (ny - 2 * m)
        for t in range(n):
            if t > 0 and uniform:
                step_row = step[y]
                for x in range(nxh):
                    weight[x] *= step_row[x]
            elif t > 0:
                half_e = np.float32(-0.5 * exposures[t])
                _frame_weight(weight, half_e, inv_ne[y], inv_norm[y])
            ey = ramp_y[t, y]
            first = 0
            if row >= 0:  # the first m columns come exact from ``low``
                _add_exact(low[t, row], ramp_x[t], ey, weight, acc_plain, acc_weighted)
                first = m
            _add_held(
                values[t, y],
                scales[t, y],
                block,
                first,
                ramp_x[t],
                ey,
                weight,
                acc_plain,
                acc_weighted,
            )
        _store(plain[y], acc_plain, add_plain)
        weighted[y] = acc_weighted
        if uniform:
            step_row = step[y]
            for x in range(nxh):
                weight[x] *= step_row[x]
        elif exposures.shape[0] > n:
            half_e = np.float32(-0.5 * exposures[n])
            _frame_weight(weight, half_e, inv_ne[y], inv_norm[y])
        weights[y] = weight


# output rows per strip of :func:`warp_polynomial_add_fused` (a thread's row
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
    pass of :func:`pipelines.motion._kernels.core.warp_polynomial_add`, the same
    arithmetic."""
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
    nx)`` (source rows ``base .. top``) moved along y: the second pass of
    :func:`pipelines.motion._kernels.core.warp_polynomial_add`."""
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
def warp_polynomial_add_fused(
    images: np.ndarray,
    out: np.ndarray,
    coeff_x: np.ndarray,
    coeff_y: np.ndarray,
    groups: int,
) -> None:
    """``out[i] += warp(images[i])`` for a stack ``(k, ny, nx)`` float32 warped by
    one field: :func:`pipelines.motion._kernels.core.warp_polynomial_add`'s two
    cubic passes and values without its full-size ``tmp``.  The output is taken
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
