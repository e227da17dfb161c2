"""Frame alignment: iterative cross-correlation against the sum of the other frames.

Shifts are *correction* shifts ``[x, y]`` in pixels, RELION's sign: applying shift
``s`` moves a frame's content by ``+s`` (multiplication of its spectrum by
``exp(-2πi (kx sx + ky sy))``, ``k`` in cycles/px).  A frame whose content drifted by
``d`` relative to the first frame gets ``s = -d``; the first frame's shift is 0.

The cross-correlation of each frame with the sum of all *other* frames (no noise
self-correlation) is weighted by ``exp(-B k² / 4)`` (``B`` in px², ``k`` in
cycles/px); the peak is found to sub-pixel precision by a three-point Gaussian
(log-parabola) fit in x and y, and the iteration re-centres until the updates are
below a tolerance, so the interpolation bias of the fit vanishes with the residual.
All work is batched over leading axes: a stack of patches aligns in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from pipelines.motion._kernels import core as _motion_kernels
from pipelines.xp import fft_module

__all__ = [
    "align_stack",
    "bin_frames",
    "crop_spectra",
    "fft_kwargs",
    "phase_ramp",
    "shift_spectra",
]

# the B-factor weight at the edge of the cropped spectrum: exp(-B k²/4) = 1e-3
CROP_WEIGHT = 1e-3
# a refinement from initial shifts searches, and stays, within this many (cropped) px
REFINE_WINDOW_PX = 4
# windows up to this width come from the windowed DFT (:func:`window_cc`), wider
# ones from a full irfft2: at 1024², 43 px wide, the DFT was still 2x faster
MAX_DFT_WINDOW = 48
# windows up to this width come from the fused numba pass
# (:func:`pipelines.motion._kernels.core.correlation_rows`: no stack-sized product
# array); wider ones, the first iteration of a wide search, from BLAS
MAX_FUSED_WINDOW = 17


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _one_blas_thread(xp: ModuleType = np) -> AbstractContextManager[Any]:
    """BLAS on one thread for the alignment's small matrix products (the
    windowed DFT: ``(2h + 1) × ny`` by ``ny × (2h + 1)`` per frame and patch).
    Threaded OpenBLAS spends more CPU waiting for its threads than it saves on
    products this small: on the 2-core machine under load, 5-20× the CPU of one
    thread (a 40 × 1024² stack: 0.02-0.3 CPU s per call instead of 0.005 s).
    A no-op for CuPy."""
    if xp is not np:
        return nullcontext()
    limit: AbstractContextManager[Any] = _blas_controller().limit(
        limits=1, user_api="blas"
    )
    return limit


def fft_kwargs(xp: ModuleType, workers: int) -> dict[str, int]:
    """``workers=`` for scipy.fft; nothing for cupyx.scipy.fft (the GPU decides)."""
    return {"workers": workers} if xp is np else {}


def bin_frames(frames: Any, factor: int, *, xp: ModuleType = np) -> Any:
    """Sum ``factor × factor`` blocks of ``(..., ny, nx)`` frames (edges cropped)."""
    if factor == 1:
        return frames
    *lead, ny, nx = frames.shape
    my, mx = ny // factor, nx // factor
    view = frames[..., : my * factor, : mx * factor]
    view = view.reshape(*lead, my, factor, mx, factor)
    return view.sum(axis=(-3, -1), dtype=xp.float32)


def phase_ramp(shape: tuple[int, int], shifts_px: Any, *, xp: ModuleType = np) -> Any:
    """``exp(-2πi (kx sx + ky sy))`` on the rfft2 grid of ``shape`` (ny, nx).

    ``shifts_px`` is ``(..., 2)`` [x, y]; returns ``(..., ny, nx // 2 + 1)``
    complex64, built as an outer product of 1D ramps.
    """
    ny, nx = shape
    s = xp.asarray(shifts_px, dtype=xp.float64)
    ky = xp.fft.fftfreq(ny)
    kx = xp.fft.rfftfreq(nx)
    ey = xp.exp(-2j * np.pi * ky * s[..., 1:2]).astype(xp.complex64)
    ex = xp.exp(-2j * np.pi * kx * s[..., 0:1]).astype(xp.complex64)
    return ey[..., :, None] * ex[..., None, :]


def shift_spectra(
    spectra: Any, shape: tuple[int, int], shifts_px: Any, *, xp: ModuleType = np
) -> Any:
    """Apply correction shifts ``(..., 2)`` to rfft2 spectra ``(..., ny, nx//2+1)``."""
    return spectra * phase_ramp(shape, shifts_px, xp=xp)


def crop_spectra(
    spectra: Any, shape: tuple[int, int], bfactor_px2: float, *, xp: ModuleType = np
) -> tuple[Any, tuple[int, int]]:
    """Keep the frequencies where ``exp(-B k²/4) >= CROP_WEIGHT`` (Fourier binning).

    Returns the cropped rfft2 spectra and their real-space shape ``(cy, cx)``; a
    shift of ``s`` cropped pixels is ``s * (nx / cx, ny / cy)`` original pixels.
    """
    ny, nx = shape
    k_max = float(np.sqrt(-4.0 * np.log(CROP_WEIGHT) / max(bfactor_px2, 1e-6)))
    cy = min(ny, 2 * int(np.ceil(k_max * ny)))
    cx = min(nx, 2 * int(np.ceil(k_max * nx)))
    if cy >= ny - 2 and cx >= nx - 2:
        return spectra, shape
    half = cy // 2
    rows = xp.concatenate([xp.arange(half), xp.arange(ny - half, ny)])
    cropped = spectra[..., rows, : cx // 2 + 1]
    return cropped, (cy, cx)


def _bfactor_filter(shape: tuple[int, int], bfactor_px2: float, xp: ModuleType) -> Any:
    ny, nx = shape
    ky = xp.fft.fftfreq(ny)[:, None]
    kx = xp.fft.rfftfreq(nx)[None, :]
    filt = xp.exp(-0.25 * bfactor_px2 * (ky * ky + kx * kx)).astype(xp.float32)
    filt[0, 0] = 0.0
    return filt


def _lag_exponentials(
    shape: tuple[int, int], nxh: int, half: int, xp: ModuleType
) -> tuple[Any, Any]:
    """The inverse DFT's factors at lags ``-half .. half``: ``ex`` ``(nxh, n_lags)``
    (with the half-spectrum's doubling of columns 1 .. nx/2 - 1) and ``ey``
    ``(n_lags, ny)``, complex128."""
    ny, nx = shape
    lags = xp.arange(-half, half + 1, dtype=xp.float64)
    # hermitian half-spectrum: columns 1 .. nx/2 - 1 stand for two frequencies
    doubling = xp.full(nxh, 2.0)
    doubling[0] = 1.0
    if nx % 2 == 0:
        doubling[-1] = 1.0
    kx = xp.arange(nxh, dtype=xp.float64)
    ky = xp.arange(ny, dtype=xp.float64)
    ex = xp.exp((2j * np.pi / nx) * kx[:, None] * lags[None, :]) * doubling[:, None]
    ey = xp.exp((2j * np.pi / ny) * lags[:, None] * ky[None, :])
    return ex, ey


def window_cc(product: Any, shape: tuple[int, int], half: int, xp: ModuleType) -> Any:
    """The cross-correlation ``(..., 2 half + 1, 2 half + 1)`` at lags ``-half ..
    half`` (rows y, columns x) from its rfft2 ``product`` ``(..., ny, nx // 2 + 1)``:
    ``irfft2`` evaluated only where the peak is searched (times ``ny * nx``).

    Two matrix products against the lags' Fourier exponentials (BLAS, batched over
    frames and patches) instead of a full inverse FFT per frame: the windows are a
    few pixels wide, so this is 2 half + 1 complex multiply-adds per frequency,
    several times faster than the inverse FFT at the sizes alignment uses."""
    ny = shape[0]
    nxh = product.shape[-1]
    n_lags = 2 * half + 1
    ex, ey = _lag_exponentials(shape, nxh, half, xp)
    lead = product.shape[:-2]
    flat = xp.ascontiguousarray(product, dtype=xp.complex64).reshape(-1, nxh)
    rows = (flat @ ex.astype(xp.complex64)).reshape(*lead, ny, n_lags)
    return _window_from_rows(rows, ey, xp)


def _window_from_rows(rows: Any, ey: Any, xp: ModuleType) -> Any:
    """The y half of :func:`window_cc`: ``rows`` ``(..., ny, n_lags)`` (the x
    half) to the window ``(..., n_lags, n_lags)``."""
    *lead, ny, n_lags = rows.shape
    flat = rows.reshape(-1, ny, n_lags)
    cc = xp.matmul(ey.astype(xp.complex64), flat).real
    return cc.reshape(*lead, n_lags, n_lags)


def _subpixel_peaks(window: Any, xp: ModuleType) -> Any:
    """Peak ``[x, y]`` of each ``(..., h, w)`` window, relative to its centre."""
    *lead, h, w = window.shape
    flat = window.reshape(*lead, h * w)
    idx = xp.argmax(flat, axis=-1)
    iy = xp.clip(idx // w, 1, h - 2)
    ix = xp.clip(idx % w, 1, w - 2)

    def take(dy: int, dx: int) -> Any:
        pos = ((iy + dy) * w + ix + dx)[..., None]
        return xp.take_along_axis(flat, pos, axis=-1)[..., 0]

    c0 = take(0, 0)
    deltas = []
    for m, p in ((take(0, -1), take(0, 1)), (take(-1, 0), take(1, 0))):
        positive = (m > 0) & (c0 > 0) & (p > 0)
        lm = xp.where(positive, xp.log(xp.where(positive, m, 1.0)), m)
        l0 = xp.where(positive, xp.log(xp.where(positive, c0, 1.0)), c0)
        lp = xp.where(positive, xp.log(xp.where(positive, p, 1.0)), p)
        denom = lm - 2.0 * l0 + lp
        delta = xp.where(
            denom < 0, 0.5 * (lm - lp) / xp.where(denom < 0, denom, -1.0), 0.0
        )
        deltas.append(xp.clip(delta, -1.0, 1.0))
    px = ix + deltas[0] - (w // 2)
    py = iy + deltas[1] - (h // 2)
    return xp.stack([px, py], axis=-1)


def _window_sum(csum: Any, half: int, xp: ModuleType) -> Any:
    """Per frame ``i`` the sum of frames ``i - half .. i + half`` (those that
    exist), from ``csum``, the cumulative sum of the frames along axis -3 (slices
    only: a gather along a middle axis is several times slower)."""
    n = csum.shape[-3]
    out = xp.empty_like(csum)
    k = max(0, n - half)
    out[..., :k, :, :] = csum[..., half:, :, :]
    out[..., k:, :, :] = csum[..., n - 1 : n, :, :]
    if n > half + 1:
        out[..., half + 1 :, :, :] -= csum[..., : n - half - 1, :, :]
    return out


def _group_sums(spectra: Any, half_width: int, xp: ModuleType) -> tuple[Any, Any]:
    """Per frame ``i``: the triangle-weighted sum of frames ``i-h .. i+h`` (weights
    ``(h + 1 - |d|) / (h + 1)``; the Fejér kernel, whose non-negative frequency
    response keeps the iteration stable) and the plain sum of the same frames
    (excluded from the reference, so no frame's noise correlates with itself).

    The triangle is the sum of the nested windows ``|d| <= k``, ``k = 0 .. h``, each
    a difference of one cumulative sum: ``h + 2`` passes over the stack instead of
    ``2 (2 h + 1)``.  The weighted sum is built in ``spectra``'s memory (which is
    overwritten: pass a copy to keep it)."""
    if half_width <= 0:
        return spectra, spectra
    h = half_width
    csum = xp.cumsum(spectra, axis=-3)
    plain = _window_sum(csum, h, xp)
    weighted = spectra  # built in place: the windows k = 0 (the frames) and k = h
    weighted += plain
    for k in range(1, h):
        weighted += _window_sum(csum, k, xp)
    del csum
    weighted *= 1.0 / (h + 1)
    return weighted, plain


def _phase_ramps_1d(shape: tuple[int, int], shifts_px: Any) -> tuple[Any, Any]:
    """The factors of :func:`phase_ramp`: ``exp(-2πi ky sy)`` ``(..., ny)`` and
    ``exp(-2πi kx sx)`` ``(..., nx // 2 + 1)`` complex64 (NumPy)."""
    ny, nx = shape
    s = np.asarray(shifts_px, dtype=np.float64)
    ey = np.exp(-2j * np.pi * np.fft.fftfreq(ny) * s[..., 1:2]).astype(np.complex64)
    ex = np.exp(-2j * np.pi * np.fft.rfftfreq(nx) * s[..., 0:1]).astype(np.complex64)
    return ey, ex


def _correlation_products(
    spectra: Any,
    shape: tuple[int, int],
    shifts: Any,
    filt: Any,
    group_half_width: int,
    xp: ModuleType,
) -> Any:
    """Array version of :func:`pipelines.motion._kernels.core.correlation_products`
    (for CuPy): ``conj(G_i) (T - P_i) filt`` per frame."""
    # in place where possible: at most three stack-sized arrays at a time
    shifted = phase_ramp(shape, shifts, xp=xp)
    shifted *= spectra
    total = shifted.sum(axis=-3, keepdims=True)
    if group_half_width > 0:
        product, reference = _group_sums(shifted, group_half_width, xp)
        del shifted
    else:
        product, reference = shifted, shifted.copy()
    xp.subtract(total, reference, out=reference)  # sum of the other frames
    xp.conjugate(product, out=product)
    product *= reference
    del reference
    product *= filt
    return product


def _fused_window(
    stacks: np.ndarray,
    shape: tuple[int, int],
    ramps: tuple[np.ndarray, np.ndarray],
    filt: np.ndarray,
    group_half_width: int,
    half: int,
) -> np.ndarray:
    """Every frame's cross-correlation window ``(b * n, 2 half + 1, 2 half + 1)``
    from one numba pass over ``stacks`` ``(b, n, ny, nxh)``
    (:func:`pipelines.motion._kernels.core.correlation_rows`) and the small y DFT."""
    nb, n, ny, nxh = stacks.shape
    ex, ey = _lag_exponentials(shape, nxh, half, np)
    lags = np.ascontiguousarray(ex.T)
    rows = np.empty((nb, n, ny, 2 * half + 1), dtype=np.complex64)
    _motion_kernels.correlation_rows(
        stacks,
        ramps[0],
        ramps[1],
        filt,
        int(group_half_width),
        lags.real.astype(np.float32),
        lags.imag.astype(np.float32),
        rows,
    )
    window: np.ndarray = _window_from_rows(rows, ey, np)
    return window.reshape(nb * n, 2 * half + 1, 2 * half + 1)


def _product_window(
    spectra: Any,
    shape: tuple[int, int],
    shifts: Any,
    filt: Any,
    group_half_width: int,
    half: int,
    fused: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    workers: int,
    xp: ModuleType,
) -> Any:
    """The window through the stack-sized product (wide windows, and CuPy): the
    numba kernel when ``fused`` ``(stacks, ramp_y, ramp_x)`` is given (else the
    array path), then :func:`window_cc` or, for a window wider than
    ``MAX_DFT_WINDOW``, a full inverse FFT.  With NumPy only a first, wide
    iteration comes here, and its product array is freed before the narrow ones."""
    ny, nx = shape
    if fused is not None:
        stacks, ramp_y, ramp_x = fused
        buffer = np.empty_like(stacks)
        _motion_kernels.correlation_products(
            stacks, ramp_y, ramp_x, filt, int(group_half_width), buffer
        )
        product = buffer.reshape(spectra.shape)
    else:
        product = _correlation_products(
            spectra, shape, shifts, filt, group_half_width, xp
        )
    if 2 * half + 1 <= MAX_DFT_WINDOW:
        return window_cc(product, shape, half, xp)
    # a wide search: the full inverse FFT is cheaper
    cc = fft_module(xp).irfft2(
        product, s=shape, axes=(-2, -1), **fft_kwargs(xp, workers)
    )
    rows = xp.arange(-half, half + 1) % ny
    cols = xp.arange(-half, half + 1) % nx
    return cc[..., rows[:, None], cols[None, :]]


def align_stack(
    spectra: Any,
    shape: tuple[int, int],
    *,
    bfactor_px2: float,
    max_shift_px: float,
    n_iterations: int = 10,
    tolerance_px: float = 0.01,
    group_half_width: int = 0,
    initial_shifts_px: Any = None,
    stop: Callable[[Any, int], bool] | None = None,
    refine_half_px: int = REFINE_WINDOW_PX,
    workers: int = -1,
    xp: ModuleType = np,
) -> Any:
    """Correction shifts ``(..., n_frames, 2)`` [x, y] that align each stack.

    ``spectra`` is ``(..., n_frames, ny, nx // 2 + 1)`` complex64, the rfft2 of
    real ``shape`` (ny, nx) frames with their mean removed.  Shifts are relative to
    the first frame of each stack; ``max_shift_px`` bounds the first search.
    ``group_half_width`` ``h`` > 0 aligns triangle-weighted sums of ``2h + 1``
    neighbouring frames (more signal, smoothed shifts: a coarse pass);
    ``initial_shifts_px`` starts from earlier shifts with a small search window.  The
    iterations run on the spectra cropped where the B-factor weight is negligible
    (:func:`crop_spectra`): a negligible change to the result, less FFT work.
    ``stop(shifts, iteration)``, when given, is asked after each iteration
    (``iteration`` counted from 1) with the shifts as they would be returned
    then; True ends the iterations there (the caller has decided on them).
    ``refine_half_px`` is the half-width (cropped px) of the correlation window
    searched by the iterations that refine (all but an unstarted first): each
    moves a shift by at most that much, and the shifts where the iterations
    stop (peak at the window's centre) do not depend on it.
    """
    full_y, full_x = shape
    spectra, shape = crop_spectra(spectra, shape, bfactor_px2, xp=xp)
    ny, nx = shape
    scale = np.array([full_x / nx, full_y / ny])
    bfactor_px2 = bfactor_px2 / float(np.mean(scale) ** 2)
    max_shift_px = max_shift_px / float(np.min(scale))
    filt = _bfactor_filter(shape, bfactor_px2, xp)
    shifts = xp.zeros((*spectra.shape[:-2], 2), dtype=xp.float64)
    start = None
    if initial_shifts_px is not None:
        start = xp.asarray(initial_shifts_px, dtype=xp.float64) / xp.asarray(scale)
        start = start - start.mean(axis=-2, keepdims=True)
        shifts += start
    half = int(max(2, min(np.ceil(max_shift_px) + 1, ny // 2 - 2, nx // 2 - 2)))
    fused = xp is np and spectra.ndim >= 3
    stacks = None
    if fused:  # one numba pass per iteration
        stacks = np.ascontiguousarray(spectra, dtype=np.complex64).reshape(
            -1, *spectra.shape[-3:]
        )
    with _one_blas_thread(xp):
        shifts = _iterate(
            spectra,
            shape,
            shifts,
            start,
            scale,
            filt,
            half,
            stacks,
            n_iterations,
            tolerance_px,
            group_half_width,
            workers,
            xp,
            stop,
            refine_half_px,
        )
    return _returned(shifts, scale, xp)


def _returned(shifts: Any, scale: np.ndarray, xp: ModuleType) -> Any:
    """The shifts of the cropped grid as :func:`align_stack` returns them:
    relative to the first frame, in pixels of the full grid."""
    relative = shifts - shifts[..., 0:1, :]
    return relative * xp.asarray(scale)


def _iterate(
    spectra: Any,
    shape: tuple[int, int],
    shifts: Any,
    start: Any,
    scale: np.ndarray,
    filt: Any,
    half: int,
    stacks: np.ndarray | None,
    n_iterations: int,
    tolerance_px: float,
    group_half_width: int,
    workers: int,
    xp: ModuleType,
    stop: Callable[[Any, int], bool] | None = None,
    refine_half_px: int = REFINE_WINDOW_PX,
) -> Any:
    """:func:`align_stack`'s iterations (on the cropped grid ``shape``)."""
    initial = start is not None
    for iteration in range(n_iterations):
        w = half if iteration == 0 and not initial else min(half, refine_half_px)
        if stacks is not None:
            ramp_y, ramp_x = _phase_ramps_1d(
                shape, shifts.reshape(-1, *shifts.shape[-2:])
            )
        if stacks is not None and 2 * w + 1 <= MAX_FUSED_WINDOW:
            window = _fused_window(
                stacks, shape, (ramp_y, ramp_x), filt, group_half_width, w
            ).reshape(*spectra.shape[:-2], 2 * w + 1, 2 * w + 1)
            update = _subpixel_peaks(window, xp)
        else:
            window = _product_window(
                spectra,
                shape,
                shifts,
                filt,
                group_half_width,
                w,
                (stacks, ramp_y, ramp_x) if stacks is not None else None,
                workers,
                xp,
            )
            update = _subpixel_peaks(window, xp)
        shifts += update
        if start is not None:  # refinement: stay within the window of the start
            deviation = shifts - start
            deviation -= deviation.mean(axis=-2, keepdims=True)
            shifts = start + xp.clip(deviation, -REFINE_WINDOW_PX, REFINE_WINDOW_PX)
        # the common translation is free: pin the mean (well conditioned), not frame 0
        shifts -= shifts.mean(axis=-2, keepdims=True)
        if float(xp.max(xp.abs(update))) * float(np.max(scale)) < tolerance_px:
            break
        if stop is not None and stop(_returned(shifts, scale, xp), iteration + 1):
            break
    return shifts
