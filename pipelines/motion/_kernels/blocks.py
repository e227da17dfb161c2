"""numba kernels of the local warp's block sum (private; see
:mod:`pipelines.motion.summing`).

Callers check dtype, shape and contiguity; the kernels trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


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
    against 0.65 here, in cache; docs/motion_speed.md, twelfth revision
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
