"""numba kernels of the 3D pose search (private: use :mod:`.projector` and
:mod:`.expectation`).

- :func:`gather_pixels`: values of a centred half-transform at a list of rotated
  frequencies (central slices when kz = 0), for a batch of rotations (trilinear, Hermitian half grid).
- :func:`score_candidates`: the log-likelihood of chosen (rotation, shift) pairs of
  each particle on a list of Fourier pixels.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True, parallel=True)
def gather_pixels(  # pragma: no cover
    fvol: NDArray[np.complex64],
    rotations: NDArray[np.float64],
    kx: NDArray[np.float64],
    ky: NDArray[np.float64],
    kz: NDArray[np.float64],
    out: NDArray[np.complex64],
) -> None:
    """``out[j, p]`` = ``fvol`` at ``R_j^T (kx_p, ky_p, kz_p)`` (padded-grid units;
    ``kz = 0`` gives central slices).

    ``fvol`` (Np, Np, Np//2+1) is centred along z and y and holds x frequencies
    0..Np//2 (a negative x is read as the conjugate at -q); samples outside the
    grid are 0.
    """
    npad = fvol.shape[0]
    half = npad // 2
    nxh = fvol.shape[2]
    for j in prange(rotations.shape[0]):
        r00 = rotations[j, 0, 0]
        r01 = rotations[j, 0, 1]
        r02 = rotations[j, 0, 2]
        r10 = rotations[j, 1, 0]
        r11 = rotations[j, 1, 1]
        r12 = rotations[j, 1, 2]
        r20 = rotations[j, 2, 0]
        r21 = rotations[j, 2, 1]
        r22 = rotations[j, 2, 2]
        for p in range(kx.shape[0]):
            qx = r00 * kx[p] + r10 * ky[p] + r20 * kz[p]
            qy = r01 * kx[p] + r11 * ky[p] + r21 * kz[p]
            qz = r02 * kx[p] + r12 * ky[p] + r22 * kz[p]
            flip = qx < 0.0
            if flip:
                qx = -qx
                qy = -qy
                qz = -qz
            x0 = int(np.floor(qx))
            y0f = np.floor(qy)
            z0f = np.floor(qz)
            y0 = int(y0f) + half
            z0 = int(z0f) + half
            if x0 + 1 >= nxh or y0 < 0 or y0 + 1 >= npad or z0 < 0 or z0 + 1 >= npad:
                out[j, p] = 0.0
                continue
            fx = qx - x0
            fy = qy - y0f
            fz = qz - z0f
            v00 = fvol[z0, y0, x0] * (1 - fx) + fvol[z0, y0, x0 + 1] * fx
            v01 = fvol[z0, y0 + 1, x0] * (1 - fx) + fvol[z0, y0 + 1, x0 + 1] * fx
            v10 = fvol[z0 + 1, y0, x0] * (1 - fx) + fvol[z0 + 1, y0, x0 + 1] * fx
            v11 = (
                fvol[z0 + 1, y0 + 1, x0] * (1 - fx) + fvol[z0 + 1, y0 + 1, x0 + 1] * fx
            )
            v0 = v00 * (1 - fy) + v01 * fy
            v1 = v10 * (1 - fy) + v11 * fy
            value = v0 * (1 - fz) + v1 * fz
            out[j, p] = np.conj(value) if flip else value


@njit(cache=True, parallel=True)
def score_candidates(  # pragma: no cover
    pixels: NDArray[np.complex64],
    ctf_w: NDArray[np.float32],
    ctf2_w: NDArray[np.float32],
    projections: NDArray[np.complex64],
    phases: NDArray[np.complex64],
    rotation_of: NDArray[np.int64],
    shift_of: NDArray[np.int64],
    out: NDArray[np.float64],
) -> None:
    """``out[i, c]`` = ``2 Re sum_k conj(X_i S_t) C_i P_r / s2 - C_i^2 |P_r|^2 / s2``
    for ``r = rotation_of[i, c]``, ``t = shift_of[i, c]`` (a candidate index < 0
    scores ``-inf``).

    ``pixels`` (B, M) are the particles' transforms, ``ctf_w`` = C / s2 and
    ``ctf2_w`` = C^2 / s2 (B, M); ``projections`` (R, M) of the reference (R may
    index several classes); ``phases`` (T, M) the shift factors.
    """
    for i in prange(pixels.shape[0]):
        for c in range(rotation_of.shape[1]):
            r = rotation_of[i, c]
            t = shift_of[i, c]
            if r < 0:
                out[i, c] = -np.inf
                continue
            total = 0.0
            for p in range(pixels.shape[1]):
                proj = projections[r, p]
                x = pixels[i, p] * phases[t, p]
                cross = x.real * proj.real + x.imag * proj.imag
                power = proj.real * proj.real + proj.imag * proj.imag
                total += 2.0 * ctf_w[i, p] * cross - ctf2_w[i, p] * power
            out[i, c] = total
