"""Frequency weighting of the alignment cross-correlation from the movie's own
spectral signal-to-noise ratio.

The shift of frame ``f`` is estimated from the cross-correlation of its spectrum
``a_f G_f`` (``a_f`` the expected damaged-signal amplitude, the matched filter of
:class:`pipelines.motion.dose.DamageModel`) with the reference ``Σ_{j≠f} a_j G_j``.
Per frequency the product carries the signal ``a_f² A S²`` (``S²`` the specimen's
signal power, ``A = Σ_j a_j²``) and a noise variance dominated, at the dose of one
frame, by the frame's noise times the reference's, ``N (N + A S²)`` (``N`` the
white shot-noise power).  The weight that minimises the variance of the peak
position is therefore (up to a constant)

    W(k) = SNR(k) / (1 + A(k) SNR(k)),      SNR = S² / N,

a Wiener-type weight: the frequencies are weighted by the signal actually there,
not by a fixed B-factor.  ``S²`` is measured on the roughly aligned frames as the
ring-averaged cross-power of the sums of the even and the odd frames (independent
noise, so no noise bias), ``N`` as the ring-averaged power minus the signal.  On
realistic simulated 2048² movies at 1 e/Å² per frame this weight (after Fourier
binning) lowered the smoothed global error from 0.113 to 0.084 px (centred) and
from 0.165 to 0.093 px (raw, relative to frame 0).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.motion._kernels import weights as _weight_kernels
from pipelines.motion.align import _phase_ramps_1d, align_stack, phase_ramp
from pipelines.motion.dose import FrameFilters
from pipelines.xp import to_numpy

__all__ = [
    "REFINE_ITERATIONS",
    "RING_SMOOTHING",
    "refine_at_finer_bin",
    "spectral_snr_weights",
]

REFINE_ITERATIONS = 3  # SNR-weighted passes at half the bin factor (good start)
RING_SMOOTHING = 9  # rings averaged together in the S² estimate (a running mean)


def _ring_index(shape: tuple[int, int], xp: ModuleType) -> tuple[Any, int]:
    ny, nx = shape
    ky = xp.fft.fftfreq(ny)[:, None]
    kx = xp.fft.rfftfreq(nx)[None, :]
    n_rings = min(ny, nx) // 2 + 1
    ring = xp.sqrt(ky * ky + kx * kx) * min(ny, nx)
    return xp.minimum(ring.astype(xp.int64), n_rings - 1).ravel(), n_rings


def _ring_mean(
    values: Any, ring: Any, n_rings: int, xp: ModuleType
) -> NDArray[np.float64]:
    total = xp.bincount(ring, weights=values.ravel(), minlength=n_rings)
    count = xp.bincount(ring, minlength=n_rings)
    mean: NDArray[np.float64] = to_numpy(total) / np.maximum(to_numpy(count), 1)
    return mean


def _fused_damage(
    spectra: Any, amplitudes: Any, xp: ModuleType
) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``(half_inv_ne, exposures, damaged)`` for the numba kernels
    (:func:`pipelines.motion._kernels.weights.snr_sums`, ``weight_damaged``) when
    ``spectra`` is a C-contiguous complex64 NumPy stack and ``amplitudes`` None
    or :class:`pipelines.motion.dose.FrameFilters` of its grid, else None (the
    array path: CuPy, or a stack of filters)."""
    if xp is not np or not isinstance(spectra, np.ndarray):
        return None
    if spectra.dtype != np.complex64 or not spectra.flags.c_contiguous:
        return None
    if amplitudes is None:
        empty = np.zeros((1, 1), dtype=np.float32)
        return empty, np.zeros(spectra.shape[0], dtype=np.float32), False
    if not isinstance(amplitudes, FrameFilters) or amplitudes.xp is not np:
        return None
    if amplitudes.half_inv_ne.shape != spectra.shape[-2:]:
        return None
    half_inv_ne = np.ascontiguousarray(amplitudes.half_inv_ne, dtype=np.float32)
    return half_inv_ne, amplitudes.exposures, True


def spectral_snr_weights(
    spectra: Any,
    shape: tuple[int, int],
    shifts_px: Any,
    amplitudes: Any = None,
    *,
    xp: ModuleType = np,
) -> Any | None:
    """Cross-correlation weights ``W(k)`` ``(ny, nx // 2 + 1)`` float32 (maximum 1,
    DC 0), or None when no frequency shows signal (the caller keeps its B-factor).

    ``spectra`` ``(n, ny, nx // 2 + 1)``: rfft2 of the frames on the real grid
    ``shape``, not weighted; ``shifts_px`` ``(n, 2)`` correction shifts on that grid
    (a rough alignment); ``amplitudes`` ``(n, ny, nx // 2 + 1)`` expected signal
    amplitude of each frame (damage) or None for undamaged frames.
    """
    n = spectra.shape[0]
    if n < 2:
        return None
    plane = spectra.shape[-2:]
    sums = xp.zeros((2, *plane), dtype=xp.complex64)  # even and odd frames
    squared_sums = xp.zeros((2, *plane), dtype=xp.float32)
    power_sum = xp.zeros(plane, dtype=xp.float32)
    shifts = xp.asarray(shifts_px)
    fused = _fused_damage(spectra, amplitudes, xp)
    if fused is not None:  # NumPy: one numba pass, the ramps and filters made in it
        ramp_y, ramp_x = _phase_ramps_1d(shape, shifts)
        _weight_kernels.snr_sums(
            spectra, ramp_y, ramp_x, *fused, sums, squared_sums, power_sum
        )
    # one frame at a time: no stack-sized temporaries
    for f in range(n if fused is None else 0):
        aligned = phase_ramp(shape, shifts[f], xp=xp)
        aligned *= spectra[f]
        power_sum += aligned.real**2 + aligned.imag**2
        if amplitudes is None:
            sums[f % 2] += aligned
            squared_sums[f % 2] += 1.0
        else:
            amplitude = amplitudes[f]  # once: it may be made on demand
            aligned *= amplitude
            sums[f % 2] += aligned
            squared_sums[f % 2] += amplitude * amplitude
    even, odd = sums
    squared_even, squared_odd = squared_sums
    ring, n_rings = _ring_index(shape, xp)
    cross = _ring_mean((xp.conj(even) * odd).real, ring, n_rings, xp)
    expected = _ring_mean(squared_even * squared_odd, ring, n_rings, xp)
    signal = cross / np.maximum(expected, 1e-30)
    kernel = np.ones(RING_SMOOTHING) / RING_SMOOTHING
    signal = np.clip(np.convolve(signal, kernel, mode="same"), 0.0, None)
    power = _ring_mean(power_sum / n, ring, n_rings, xp)
    total_squared = squared_even + squared_odd
    mean_squared = _ring_mean(total_squared / n, ring, n_rings, xp)
    noise = np.maximum(power - mean_squared * signal, 0.01 * power)
    snr = np.where(noise > 0, signal / np.maximum(noise, 1e-30), 0.0)
    snr[0] = 0.0
    if not np.any(snr > 0):
        return None
    snr_2d = xp.asarray(snr.astype(np.float32))[ring].reshape(spectra.shape[-2:])
    weights = snr_2d / (1.0 + snr_2d * total_squared)
    peak = float(weights.max())
    if not np.isfinite(peak) or peak <= 0:
        return None
    weights = weights / peak
    weights[0, 0] = 0.0
    return weights.astype(xp.float32)


def refine_at_finer_bin(
    spectra: Any,
    shifts: Any,
    shape: tuple[int, int],
    scale: tuple[float, float],
    amplitudes: Any,
    *,
    overwrite: bool = False,
    make_amplitudes: Callable[[], Any] | None = None,
    workers: int = -1,
    xp: ModuleType = np,
) -> Any:
    """Shifts ``(n, 2)`` in search-binned pixels, refined on the finer band: the
    SNR-weighted pass again on ``spectra`` ``(n, fy, fx // 2 + 1)`` (the
    refinement band of :func:`pipelines.motion.spectra.band_spectra`, real grid
    ``shape``), within ±2 fine pixels of ``shifts``; ``scale`` ``(sx, sy)`` is fine
    pixels per search pixel, ``amplitudes`` the damage filters on that grid (a
    stack, or :class:`pipelines.motion.dose.FrameFilters`) or None.
    With ``overwrite`` ``spectra`` is weighted in place (the caller's stack is
    spent; at 4096² that saves two 0.38 GB copies).  ``make_amplitudes()``, when
    given, makes the damage filters here instead (``amplitudes`` None), so that
    they are freed before the alignment iterations (0.19 GB at 4096²).

    At 4096² (bin 4 for the search) refining at twice the frequency range halved the
    raw error of the simulator's realistic movies (0.106 -> 0.062 px); the search
    itself stays at the coarser bin, where it is cheap and robust."""
    factor = xp.asarray(np.asarray(scale, dtype=np.float64))
    start = shifts * factor
    if make_amplitudes is not None:
        amplitudes = make_amplitudes()
    weights = spectral_snr_weights(spectra, shape, start, amplitudes, xp=xp)
    if weights is None:
        return shifts
    # with overwrite the stack is weighted in place: no stack-sized copies
    spectra = spectra if overwrite else spectra.copy()
    fused = _fused_damage(spectra, amplitudes, xp)
    if fused is not None:  # one numba pass: filters made in it, no temporaries
        _weight_kernels.weight_damaged(spectra, *fused, xp.sqrt(weights))
    else:
        if amplitudes is not None:  # one frame at a time: they may be made lazily
            for f in range(spectra.shape[0]):
                spectra[f] *= amplitudes[f]
        spectra *= xp.sqrt(weights)
    del amplitudes
    refined = align_stack(
        spectra,
        shape,
        bfactor_px2=0.0,
        max_shift_px=2.0,
        initial_shifts_px=start,
        n_iterations=REFINE_ITERATIONS,
        workers=workers,
        xp=xp,
    )
    return refined / factor
