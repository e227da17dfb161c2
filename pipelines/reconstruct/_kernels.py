"""numba kernels of the reconstruction (private: use :mod:`.backproject`).

- :func:`insert_slices`: trilinear insertion of 2D Fourier slices into a 3D half
  transform, without atomics: the z axis is cut into slabs; even slabs are filled
  in parallel, then odd ones, and each slab is written by one thread only (a sample
  whose floor z lies in slab ``s`` touches planes ``z`` and ``z + 1``, i.e. slab
  ``s`` and the first plane of ``s + 1``, which the same phase never writes).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True, parallel=True)
def insert_slices(  # pragma: no cover
    data: NDArray[np.complex128],
    weight: NDArray[np.float64],
    fimages: NDArray[np.complex64],
    ctf2: NDArray[np.float32],
    image_index: NDArray[np.int64],
    rotations: NDArray[np.float64],
    radius_px: float,
    slab_px: int,
    parity: int,
) -> None:
    """Add slices into ``data`` (Np, Np, Np//2+1) complex and ``weight`` (same) real.

    ``fimages`` (n_img, Np, Np//2+1) holds CTF-weighted image transforms in FFT
    order (row ``ky mod Np``); ``ctf2`` their squared CTF.  ``rotations``
    (n_rot, 3, 3) with ``image_index`` (n_rot,) naming the image of each: image
    frequency k = (kx, ky, 0) goes to volume frequency R^T k (half-grid: negative
    x frequencies are stored as the conjugate at -q).  Only slabs of ``parity``
    (0 even, 1 odd) of ``slab_px`` planes are written by this call.
    """
    npad = data.shape[0]
    half = npad // 2
    nxh = data.shape[2]
    n_slabs = (npad + slab_px - 1) // slab_px
    n_tasks = (n_slabs - parity + 1) // 2
    r2max = radius_px * radius_px
    kmax = int(radius_px)
    for task in prange(n_tasks):
        slab = 2 * task + parity
        zlo = slab * slab_px
        zhi = min(zlo + slab_px, npad)
        for j in range(rotations.shape[0]):
            i = image_index[j]
            r00 = rotations[j, 0, 0]
            r01 = rotations[j, 0, 1]
            r02 = rotations[j, 0, 2]
            r10 = rotations[j, 1, 0]
            r11 = rotations[j, 1, 1]
            r12 = rotations[j, 1, 2]
            for iy in range(npad):
                ky = iy if iy < half else iy - npad
                if ky * ky > r2max:
                    continue
                # |z| of any sample of this row is at most `reach`: skip far rows
                reach = abs(r02) * kmax + abs(r12 * ky)
                if zlo - half > reach + 1.0 or zhi - half < -reach - 1.0:
                    continue
                for ix in range(nxh):
                    kx = ix
                    if kx * kx + ky * ky > r2max:
                        break
                    qx = r00 * kx + r10 * ky
                    qz = r02 * kx + r12 * ky
                    flip = qx < 0.0
                    if flip:
                        qx = -qx
                        qz = -qz
                    z0f = np.floor(qz)
                    z0 = int(z0f) + half
                    if z0 < zlo or z0 >= zhi or z0 + 1 >= npad:
                        continue
                    qy = r01 * kx + r11 * ky
                    if flip:
                        qy = -qy
                    x0 = int(np.floor(qx))
                    y0f = np.floor(qy)
                    y0 = int(y0f) + half
                    if x0 + 1 >= nxh or y0 < 0 or y0 + 1 >= npad:
                        continue
                    fx = qx - x0
                    fy = qy - y0f
                    fz = qz - z0f
                    value = fimages[i, iy, ix]
                    if flip:
                        value = np.conj(value)
                    w = ctf2[i, iy, ix]
                    for dz in range(2):
                        wz = fz if dz else 1.0 - fz
                        for dy in range(2):
                            wzy = wz * (fy if dy else 1.0 - fy)
                            for dx in range(2):
                                t = wzy * (fx if dx else 1.0 - fx)
                                data[z0 + dz, y0 + dy, x0 + dx] += t * value
                                weight[z0 + dz, y0 + dy, x0 + dx] += t * w
