"""numba kernels of motion correction (private; use :mod:`pipelines.motion.job`).

Callers check dtype, shape and contiguity; the kernels trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def fill_defects(
    frames: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    good: np.ndarray,
    radius: int,
) -> None:
    """Replace ``frames[:, ys[i], xs[i]]`` by the mean of good neighbours, in place.

    ``frames`` is ``(n, ny, nx)`` float32, ``good`` ``(ny, nx)`` bool.  The window
    is ``(2 * radius + 1)²``; a pixel without good neighbours becomes the mean of
    the frame's good pixels in a window twice as wide, else 0.
    """
    n, ny, nx = frames.shape
    for i in prange(ys.shape[0]):
        y0 = ys[i]
        x0 = xs[i]
        for r in (radius, 2 * radius, 4 * radius):
            count = 0
            for y in range(max(0, y0 - r), min(ny, y0 + r + 1)):
                for x in range(max(0, x0 - r), min(nx, x0 + r + 1)):
                    if good[y, x]:
                        count += 1
            if count > 0:
                break
        for f in range(n):
            total = 0.0
            count = 0
            for y in range(max(0, y0 - r), min(ny, y0 + r + 1)):
                for x in range(max(0, x0 - r), min(nx, x0 + r + 1)):
                    if good[y, x]:
                        total += frames[f, y, x]
                        count += 1
            frames[f, y0, x0] = total / count if count > 0 else 0.0


@njit(cache=True, parallel=True)
def block_sum(frame: np.ndarray, block: int, out: np.ndarray) -> None:
    """``out[y, x]`` = sum of the ``block × block`` pixels of ``frame`` (float32)
    starting at ``(block y, block x)``; ``out`` is ``(ny // block, nx // block)``."""
    my, mx = out.shape
    for y in prange(my):
        for x in range(mx):
            out[y, x] = 0.0
        for j in range(block):
            row = y * block + j
            for x in range(mx):
                total = np.float32(0.0)
                for i in range(block):
                    total += frame[row, x * block + i]
                out[y, x] += total


@njit(cache=True, parallel=True, fastmath=True)
def accumulate_shifted(
    spectrum: np.ndarray,
    ramp_y: np.ndarray,
    ramp_x: np.ndarray,
    weight: np.ndarray,
    step: np.ndarray,
    advance: bool,
    plain: np.ndarray,
    weighted: np.ndarray,
) -> None:
    """``plain += s``, ``weighted += weight * s`` with ``s = spectrum * ramp_y[y] *
    ramp_x[x]`` (a frame's rfft2 shifted by an outer-product phase ramp): one pass
    over the full-size spectrum per frame instead of five array operations.  With
    ``advance`` the weight becomes the next frame's, ``weight *= step``, in the same
    pass (uniform dose: the damage weights form a geometric sequence)."""
    ny, nxh = spectrum.shape
    for y in prange(ny):
        ey = ramp_y[y]
        for x in range(nxh):
            value = spectrum[y, x] * (ey * ramp_x[x])
            plain[y, x] += value
            weighted[y, x] += value * weight[y, x]
            if advance:
                weight[y, x] *= step[y, x]


@njit(cache=True, fastmath=True, inline="always")
def _shifted_row(
    spectra: np.ndarray,
    ramp_y: np.ndarray,
    ramp_x: np.ndarray,
    b: int,
    y: int,
    shifted: np.ndarray,
    total: np.ndarray,
) -> None:
    """Row ``y`` of every frame of stack ``b`` shifted by its phase ramps into
    ``shifted`` ``(n, nxh)``, and their sum added to ``total`` (zeroed by the
    caller)."""
    n, nxh = shifted.shape
    for f in range(n):
        ry = ramp_y[b, f, y]
        for x in range(nxh):
            value = spectra[b, f, y, x] * (ry * ramp_x[b, f, x])
            shifted[f, x] = value
            total[x] += value


@njit(cache=True, fastmath=True, inline="always")
def _grouped_sums(
    shifted: np.ndarray, i: int, h: int, plain: np.ndarray, grouped: np.ndarray
) -> None:
    """The plain and triangle-weighted (``h + 1 - |j - i|``) sums of the shifted
    rows of frames ``i - h .. i + h`` that exist."""
    n, nxh = shifted.shape
    plain[:] = 0
    grouped[:] = 0
    for j in range(max(0, i - h), min(n - 1, i + h) + 1):
        w = np.float32(h + 1 - abs(j - i))
        for x in range(nxh):
            plain[x] += shifted[j, x]
            grouped[x] += shifted[j, x] * w


@njit(cache=True, fastmath=True, inline="always")
def _row_start(
    spectra: np.ndarray, ramp_y: np.ndarray, ramp_x: np.ndarray, row: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A correlation kernel's parallel ``row`` (stack ``b``, row ``y``): every
    frame's row shifted (:func:`_shifted_row`), their sum, and empty buffers for
    :func:`_grouped_sums`: ``(b, y, shifted, total, plain, grouped)``."""
    n, ny, nxh = spectra.shape[1], spectra.shape[2], spectra.shape[3]
    b = row // ny
    y = row - b * ny
    shifted = np.empty((n, nxh), dtype=np.complex64)
    total = np.zeros(nxh, dtype=np.complex64)
    plain = np.empty(nxh, dtype=np.complex64)
    grouped = np.empty(nxh, dtype=np.complex64)
    _shifted_row(spectra, ramp_y, ramp_x, b, y, shifted, total)
    return b, y, shifted, total, plain, grouped


@njit(cache=True, parallel=True, fastmath=True)
def correlation_products(
    spectra: np.ndarray,
    ramp_y: np.ndarray,
    ramp_x: np.ndarray,
    filt: np.ndarray,
    half_width: int,
    out: np.ndarray,
) -> None:
    """One iteration's cross-correlation spectra of every frame with the sum of
    the others, in one pass (the alignment's inner loop).

    ``spectra`` ``(b, n, ny, nxh)`` complex64 (``b`` stacks of ``n`` frames),
    shifted by the outer-product phase ramps ``ramp_y[b, f, y] * ramp_x[b, f, x]``
    (``(b, n, ny)``, ``(b, n, nxh)`` complex64).  Per frame ``i`` with ``h =
    half_width``: ``G_i`` the triangle-weighted sum of frames ``i - h .. i + h``
    (weights ``(h + 1 - |d|) / (h + 1)``, the frames that exist), ``P_i`` their
    plain sum, ``T`` the sum of all frames; ``out[b, i] = conj(G_i) (T - P_i)
    filt`` (``filt`` ``(ny, nxh)`` float32).  With ``h = 0``, ``G_i = P_i`` is the
    frame itself.  Replaces the phase-ramp stack, the cumulative sums and the
    copies of :func:`pipelines.motion.align.align_stack` (four stack-sized arrays
    and ~3 s per iteration at 4096², 40 frames; one array and a pass here).
    """
    nb, n, ny, nxh = spectra.shape
    h = half_width
    inv = np.float32(1.0 / (h + 1))
    # rows in parallel; inside a row every inner loop runs along x (contiguous,
    # vectorised): reading down the frame axis per pixel cost 2x more
    for row in prange(nb * ny):
        b, y, shifted, total, plain, grouped = _row_start(spectra, ramp_y, ramp_x, row)
        for i in range(n):
            _grouped_sums(shifted, i, h, plain, grouped)
            for x in range(nxh):
                out[b, i, y, x] = (
                    np.conj(grouped[x] * inv) * (total[x] - plain[x]) * filt[y, x]
                )


@njit(cache=True, parallel=True, fastmath=True)
def quantize_spectrum(
    spectrum: np.ndarray, block: int, values: np.ndarray, scales: np.ndarray
) -> None:
    """``values[y, x] = round(spectrum[y, x] / scales[y, b])`` as int8 (real,
    imaginary) with ``scales[y, b] = max |re|, |im|`` over the ``block`` values of
    row ``y`` from ``x = b * block``, divided by 127 (0 for an all-zero block).

    ``spectrum`` ``(ny, nxh)`` complex64, ``values`` ``(ny, nxh, 2)`` int8,
    ``scales`` ``(ny, ceil(nxh / block))`` float32.  The row is read as its
    interleaved float32 parts and rounded to int32 before the int8 store: LLVM
    does not vectorise float -> int8 directly (2x the CPU, same values)."""
    ny, nxh = spectrum.shape
    nb = scales.shape[1]
    for y in prange(ny):
        row = spectrum[y].view(np.float32)  # re, im interleaved
        out = values[y].reshape(2 * nxh)
        rounded = np.empty(2 * block, dtype=np.int32)
        for b in range(nb):
            x0 = 2 * b * block
            width = min(2 * nxh, x0 + 2 * block) - x0
            top = np.float32(0.0)
            for x in range(width):
                top = max(top, abs(row[x0 + x]))
            scales[y, b] = top / np.float32(127.0)
            inv = np.float32(127.0) / top if top > 0 else np.float32(0.0)
            for x in range(width):
                rounded[x] = np.int32(np.floor(row[x0 + x] * inv + np.float32(0.5)))
            for x in range(width):
                out[x0 + x] = np.int8(rounded[x])


@njit(cache=True, parallel=True, fastmath=True)
def correlation_rows(
    spectra: np.ndarray,
    ramp_y: np.ndarray,
    ramp_x: np.ndarray,
    filt: np.ndarray,
    half_width: int,
    lag_re: np.ndarray,
    lag_im: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`correlation_products` followed, in the same pass, by the x half of
    the windowed inverse DFT (:func:`pipelines.motion.align.window_cc`):
    ``out[b, i, y, l] = sum_x product[b, i, y, x] * (lag_re + i lag_im)[l, x]``.

    ``lag_re``/``lag_im`` ``(n_lags, nxh)`` float32 (the lags' exponentials with
    the half-spectrum's doubling); ``out`` ``(b, n, ny, n_lags)`` complex64.  The
    stack-sized product array is never written: each row's product stays in cache
    and is reduced to ``n_lags`` values at once."""
    nb, n, ny, nxh = spectra.shape
    n_lags = lag_re.shape[0]
    h = half_width
    inv = np.float32(1.0 / (h + 1))
    for row in prange(nb * ny):
        b, y, shifted, total, plain, grouped = _row_start(spectra, ramp_y, ramp_x, row)
        pr = np.empty(nxh, dtype=np.float32)
        pi = np.empty(nxh, dtype=np.float32)
        for i in range(n):
            _grouped_sums(shifted, i, h, plain, grouped)
            for x in range(nxh):
                p = np.conj(grouped[x] * inv) * (total[x] - plain[x]) * filt[y, x]
                pr[x] = p.real
                pi[x] = p.imag
            for lag in range(n_lags):
                er = lag_re[lag]
                ei = lag_im[lag]
                acc_re = np.float32(0.0)
                acc_im = np.float32(0.0)
                for x in range(nxh):
                    acc_re += pr[x] * er[x] - pi[x] * ei[x]
                    acc_im += pr[x] * ei[x] + pi[x] * er[x]
                out[b, i, y, lag] = complex(acc_re, acc_im)


@njit(cache=True, parallel=True)
def frame_sum(frames: np.ndarray, out: np.ndarray) -> None:
    """``out[y, x] = sum_f frames[f, y, x]`` (float32) for integer or float frames
    ``(n, ny, nx)``: one parallel pass over the movie, rows in parallel, without
    a float32 copy of each frame."""
    n, ny, nx = frames.shape
    for y in prange(ny):
        row = np.zeros(nx, dtype=np.float32)
        for f in range(n):
            for x in range(nx):
                row[x] += np.float32(frames[f, y, x])
        out[y, :] = row


@njit(cache=True, parallel=True)
def decode_band(
    values: np.ndarray,
    scales: np.ndarray,
    block: int,
    low: np.ndarray,
    out: np.ndarray,
) -> None:
    """The band ``out`` ``(n, fy, fxh)`` complex64 of spectra held by
    :func:`quantize_spectrum` (``values`` ``(n, ny, nxh, 2)``, ``scales``, exact
    ``low`` ``(n, 2 m, m)`` as :func:`accumulate_held`): rows ``0 .. fy/2 -
    1`` and ``ny - fy/2 .. ny - 1``, columns ``0 .. fxh - 1``, as
    :func:`pipelines.motion.spectra.crop_spectrum_to` cuts them (which then
    zeroes Nyquist and DC)."""
    n, ny = values.shape[0], values.shape[1]
    fy, fxh = out.shape[1], out.shape[2]
    m = low.shape[2]
    half = fy // 2
    for row in prange(n * fy):
        f = row // fy
        r = row - f * fy
        y = np.int64(r) if r < half else np.int64(ny) - (fy - np.int64(r))
        for x in range(fxh):
            s = scales[f, y, x // block]
            out[f, r, x] = complex(
                np.float32(values[f, y, x, 0]) * s, np.float32(values[f, y, x, 1]) * s
            )
        lr = np.int64(-1)
        if y < m:
            lr = y
        elif y >= ny - m:
            lr = y - (ny - 2 * m)
        if lr >= 0:
            for x in range(min(m, fxh)):
                out[f, r, x] = low[f, lr, x]
