"""numba kernels of 2D classification (private: call them through :mod:`fourier`).

- :func:`score_triplets`: listed entries of the likelihood product (fine pose search).
- :func:`rotate_gather`: sample rotated copies of half-plane (rfft) transforms at a
  list of output frequencies, bilinear, with Hermitian symmetry for negative x.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True, parallel=True)
def rotate_gather(  # pragma: no cover - compiled
    src: NDArray[np.complex64],
    src_index: NDArray[np.int64],
    cos_a: NDArray[np.float64],
    sin_a: NDArray[np.float64],
    kx: NDArray[np.int64],
    ky: NDArray[np.int64],
    scale: float,
    out: NDArray[np.complex64],
) -> None:
    """``out[m, p] = src[src_index[m]](scale * Rot(a_m) (kx[p], ky[p]))``.

    ``src`` is ``(S, ny, nxh)`` complex, unshifted rfft layout (row ``y mod ny``,
    column ``x`` for x >= 0).  ``Rot(a)`` turns (x, y) counter-clockwise by ``a``.
    Samples beyond the stored half-plane are zero.
    """
    n_out = out.shape[0]
    n_pix = out.shape[1]
    ny = src.shape[1]
    nxh = src.shape[2]
    half_y = ny // 2
    for m in prange(n_out):
        s = src_index[m]
        c = cos_a[m]
        si = sin_a[m]
        for p in range(n_pix):
            qx = scale * (c * kx[p] - si * ky[p])
            qy = scale * (si * kx[p] + c * ky[p])
            conj = False
            if qx < 0.0:
                qx = -qx
                qy = -qy
                conj = True
            x0 = int(np.floor(qx))
            fx = qx - x0
            y0 = int(np.floor(qy))
            fy = qy - y0
            if x0 + 1 >= nxh or y0 < -half_y or y0 + 1 >= half_y:
                out[m, p] = 0.0
                continue
            r0 = y0 % ny
            r1 = (y0 + 1) % ny
            v00 = src[s, r0, x0]
            v01 = src[s, r0, x0 + 1]
            v10 = src[s, r1, x0]
            v11 = src[s, r1, x0 + 1]
            top = v00 + fx * (v01 - v00)
            bottom = v10 + fx * (v11 - v10)
            value = top + fy * (bottom - top)
            if conj:
                value = np.conj(value)
            out[m, p] = value


@njit(cache=True, parallel=True, fastmath=True)
def score_triplets(  # pragma: no cover - compiled
    shifted: NDArray[np.float32],
    refs: NDArray[np.float32],
    half_ctf_weight: NDArray[np.float32],
    power: NDArray[np.float32],
    row: NDArray[np.int64],
    pose: NDArray[np.int64],
    particle: NDArray[np.int64],
    out: NDArray[np.float32],
) -> None:
    """``out[i] = shifted[row[i]] . refs[pose[i]]
    - half_ctf_weight[particle[i]] . power[pose[i]]`` (a sampled product: only
    the listed entries of the likelihood matrix)."""
    n_pix2 = shifted.shape[1]
    n_pix = power.shape[1]
    for i in prange(out.shape[0]):
        r = row[i]
        j = pose[i]
        b = particle[i]
        cross = np.float32(0.0)  # float32 sums vectorise (fastmath)
        for p in range(n_pix2):
            cross += shifted[r, p] * refs[j, p]
        norm = np.float32(0.0)
        for p in range(n_pix):
            norm += half_ctf_weight[b, p] * power[j, p]
        out[i] = cross - norm
