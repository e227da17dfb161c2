"""numba kernel of motion correction's power spectrum (private; used by
:func:`pipelines.motion.summing.power_spectrum`).

Callers check dtype, shape and contiguity; the kernel trusts its inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def binned_power(
    spectrum: np.ndarray, nx: int, by: int, bx: int, y0: int, x0: int, out: np.ndarray
) -> None:
    """``out[oy, ox]`` = the mean of ``|S|²`` over the ``by × bx`` block of the
    centred (``fftshift``-ed) full ``(ny, nx)`` power at rows ``y0 + oy by ..``,
    columns ``x0 + ox bx ..``, read from the rfft2 half-spectrum ``spectrum``
    ``(ny, nx // 2 + 1)`` complex64 (the other half by Hermitian symmetry:
    ``S[y, x] = conj S[-y, nx - x]``).  Sums in float64; ``out`` float32.

    One pass over the half-spectrum's rows, without the full-size power, its
    mirrored half and its shifted copy (three 4096² float32 arrays)."""
    ny, nxh = spectrum.shape
    size_y, size_x = out.shape
    cy, cx = ny // 2, nx // 2
    inv = 1.0 / (by * bx)
    for oy in prange(size_y):
        acc = np.zeros(size_x, dtype=np.float64)
        for i in range(by):
            # row of the unshifted full power for centred row y0 + oy by + i
            y = (np.int64(y0) + np.int64(oy) * by + i - cy) % ny
            ym = (ny - y) % ny  # its mirror, for the columns of the other half
            for ox in range(size_x):
                total = 0.0
                for j in range(bx):
                    x = (np.int64(x0) + np.int64(ox) * bx + j - cx) % nx
                    v = spectrum[y, x] if x < nxh else spectrum[ym, nx - x]
                    total += float(v.real * v.real + v.imag * v.imag)
                acc[ox] += total
        for ox in range(size_x):
            out[oy, ox] = np.float32(acc[ox] * inv)
