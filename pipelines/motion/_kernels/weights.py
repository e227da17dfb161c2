"""numba kernels of motion correction's refinement weighting (private; used by
:mod:`pipelines.motion.weighting`).

Callers check dtype, shape and contiguity; the kernels trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def snr_sums(
    spectra: np.ndarray,
    ramp_y: np.ndarray,
    ramp_x: np.ndarray,
    half_inv_ne: np.ndarray,
    exposures: np.ndarray,
    damaged: bool,
    sums: np.ndarray,
    squared: np.ndarray,
    power: np.ndarray,
) -> None:
    """The sums :func:`pipelines.motion.weighting.spectral_snr_weights` needs,
    in one pass over the stack: each frame ``f`` of ``spectra`` ``(n, ny,
    nxh)`` complex64 is shifted (``ramp_y[f, y] * ramp_x[f, x]``, complex64),
    its power added to ``power`` ``(ny, nxh)`` float32, and, weighted by its
    damage amplitude ``a = exp(-exposures[f] half_inv_ne)`` (1 without
    ``damaged``), added to ``sums[f % 2]`` (complex64) while ``a²`` is added
    to ``squared[f % 2]`` (float32).  The outputs are added to, not
    overwritten.  Rows in parallel; the same operations in the same order as
    the array version, so only the exponential's last bit may differ."""
    n, ny, nxh = spectra.shape
    for y in prange(ny):
        for f in range(n):
            parity = f % 2
            ry = ramp_y[f, y]
            e = np.float32(-exposures[f])
            for x in range(nxh):
                value = (ry * ramp_x[f, x]) * spectra[f, y, x]
                power[y, x] += value.real * value.real + value.imag * value.imag
                if damaged:
                    a = np.exp(e * half_inv_ne[y, x])
                    sums[parity, y, x] += value * a
                    squared[parity, y, x] += a * a
                else:
                    sums[parity, y, x] += value
                    squared[parity, y, x] += np.float32(1.0)


@njit(cache=True, parallel=True)
def weight_damaged(
    spectra: np.ndarray,
    half_inv_ne: np.ndarray,
    exposures: np.ndarray,
    damaged: bool,
    root_weights: np.ndarray,
) -> None:
    """``spectra[f] *= exp(-exposures[f] half_inv_ne)`` (without ``damaged``:
    nothing), then ``*= root_weights``, in place and in one pass: the SNR-
    weighted stack of the refinement
    (:func:`pipelines.motion.weighting.refine_at_finer_bin`)."""
    n, ny, nxh = spectra.shape
    for y in prange(ny):
        for f in range(n):
            e = np.float32(-exposures[f])
            for x in range(nxh):
                value = spectra[f, y, x]
                if damaged:
                    value = value * np.exp(e * half_inv_ne[y, x])
                spectra[f, y, x] = value * root_weights[y, x]
