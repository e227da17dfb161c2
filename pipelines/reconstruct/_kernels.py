"""numba kernels of the reconstruction (private: use :mod:`.backproject`).

- :func:`insert_slices_scaled`: trilinear insertion of 2D Fourier slices, their
  coordinates scaled by the padding factor (RELION's), into a 3D half transform, without atomics: the z axis is cut into slabs; even slabs are filled
  in parallel, then odd ones, and each slab is written by one thread only (a sample
  whose floor z lies in slab ``s`` touches planes ``z`` and ``z + 1``, i.e. slab
  ``s`` and the first plane of ``s + 1``, which the same phase never writes).
- :func:`insert_slices`: the same with slices as large as the grid (scale 1: the
  transforms of padded images).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True)
def _split_row(r00: float, offset: float, kx_max: int) -> tuple[int, int, int, int]:
    """kx ranges ``(lo0, hi0, lo1, hi1)`` in ``0 .. kx_max`` where ``r00 kx + offset``
    is >= 0 (segment 0) and < 0 (segment 1), each one sample wider than exact at
    the split (the caller checks every sample's sign)."""
    if abs(r00) < 1e-12:
        if offset >= 0.0:
            return 0, kx_max, 0, -1
        return 0, -1, 0, kx_max
    c = min(max(-offset / r00, -2.0), kx_max + 2.0)
    low = int(np.floor(c)) - 1
    high = int(np.ceil(c)) + 1
    if r00 > 0.0:  # >= 0 from c upwards
        return max(0, low), kx_max, 0, min(kx_max, high)
    return 0, min(kx_max, high), max(0, low), kx_max


@njit(cache=True)
def _window(
    a: float, b: float, z_min: float, z_max: float, lo: int, hi: int
) -> tuple[int, int]:
    """The kx in ``lo .. hi`` (inclusive) where ``a kx + b`` may lie in
    ``[z_min, z_max]``, one sample wider on each side; empty when ``lo > hi``."""
    if lo > hi:
        return lo, lo - 1
    if abs(a) < 1e-9:
        if z_min <= b <= z_max:
            return lo, hi
        return lo, lo - 1
    k1 = (z_min - b) / a
    k2 = (z_max - b) / a
    if k1 > k2:
        k1, k2 = k2, k1
    k1 = min(max(k1, lo - 2.0), hi + 2.0)
    k2 = min(max(k2, lo - 2.0), hi + 2.0)
    return max(lo, int(np.floor(k1)) - 1), min(hi, int(np.ceil(k2)) + 1)


def insert_slices(
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

    ``fimages`` (n_img, Np, Np//2+1) holds CTF-weighted transforms of the padded
    images in FFT order (row ``ky mod Np``); ``ctf2`` their squared CTF.
    ``rotations`` (n_rot, 3, 3) with ``image_index`` (n_rot,) naming the image of
    each: image frequency k = (kx, ky, 0) goes to volume frequency R^T k (half-grid:
    negative x frequencies are stored as the conjugate at -q).  Only slabs of
    ``parity`` (0 even, 1 odd) of ``slab_px`` planes are written by this call.
    This is :func:`insert_slices_scaled` with scale 1 (slices as large as the grid).
    """
    insert_slices_scaled(
        data,
        weight,
        fimages,
        ctf2,
        image_index,
        rotations,
        1.0,
        radius_px,
        slab_px,
        parity,
    )


@njit(cache=True, parallel=True)
def insert_slices_scaled(  # pragma: no cover  # noqa: C901, PLR0912, PLR0915 - one numba loop nest per slab (a split costs a pass over memory)
    data: NDArray[np.complex128],
    weight: NDArray[np.float64],
    fimages: NDArray[np.complex64],
    ctf2: NDArray[np.float32],
    image_index: NDArray[np.int64],
    rotations: NDArray[np.float64],
    scale: float,
    radius_px: float,
    slab_px: int,
    parity: int,
) -> None:
    """Add slices of any size into ``data`` (Np, Np, Np//2+1) complex and ``weight``.

    ``fimages`` (n_img, n, n//2+1) holds CTF-weighted image transforms in FFT
    order (row ``ky mod n``); ``ctf2`` their squared CTF.  Image frequency
    k = (kx, ky, 0) with ``|k| <= radius_px`` (in the image's own Fourier pixels)
    goes to volume frequency ``scale R^T k`` (half-grid: negative x frequencies
    are stored as the conjugate at -q).  RELION's insertion is ``n = N`` (the
    unpadded image) and ``scale = Np / N`` (the padding factor): the padded grid
    is finer, and the slice's samples land ``scale`` voxels apart.  Only slabs of
    ``parity`` (0 even, 1 odd) of ``slab_px`` planes are written by this call; in
    each slab only the part of each row whose z can fall in it is visited (the z
    of a sample is linear in kx on each side of the row's Hermitian split).
    """
    npad = data.shape[0]
    half = npad // 2
    nxh = data.shape[2]
    n_rows = fimages.shape[1]
    row_half = n_rows // 2
    n_cols = fimages.shape[2]
    n_slabs = (npad + slab_px - 1) // slab_px
    n_tasks = (n_slabs - parity + 1) // 2
    r2max = radius_px * radius_px
    for task in prange(n_tasks):
        slab = 2 * task + parity
        zlo = slab * slab_px
        zhi = min(zlo + slab_px, npad)
        for j in range(rotations.shape[0]):
            i = image_index[j]
            r00 = scale * rotations[j, 0, 0]
            r01 = scale * rotations[j, 0, 1]
            r02 = scale * rotations[j, 0, 2]
            r10 = scale * rotations[j, 1, 0]
            r11 = scale * rotations[j, 1, 1]
            r12 = scale * rotations[j, 1, 2]
            for iy in range(n_rows):
                ky = iy if iy < row_half else iy - n_rows
                rest = r2max - ky * ky
                if rest < 0.0:
                    continue
                kx_max = int(np.sqrt(rest))
                while (kx_max + 1) * (kx_max + 1) <= rest:
                    kx_max += 1
                kx_max = min(kx_max, n_cols - 1)
                # the row splits where qx = r00 kx + r10 ky changes sign: samples with
                # qx >= 0 go to +q (segment 0), the others to -q (segment 1)
                lo0, hi0, lo1, hi1 = _split_row(r00, r10 * ky, kx_max)
                for segment in range(2):
                    sign = 1.0 if segment == 0 else -1.0
                    lo = lo0 if segment == 0 else lo1
                    hi = hi0 if segment == 0 else hi1
                    # z of the stored sample is sign * (r02 kx + r12 ky): keep the kx
                    # whose z can fall in this slab (one plane of margin)
                    start, stop = _window(
                        sign * r02,
                        sign * r12 * ky,
                        zlo - half - 1.0,
                        zhi - half + 1.0,
                        lo,
                        hi,
                    )
                    for kx in range(start, stop + 1):
                        qx = r00 * kx + r10 * ky
                        flip = qx < 0.0
                        if flip != (segment == 1):
                            continue
                        qz = r02 * kx + r12 * ky
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
                        value = fimages[i, iy, kx]
                        if flip:
                            value = np.conj(value)
                        w = ctf2[i, iy, kx]
                        for dz in range(2):
                            wz = fz if dz else 1.0 - fz
                            for dy in range(2):
                                wzy = wz * (fy if dy else 1.0 - fy)
                                for dx in range(2):
                                    t = wzy * (fx if dx else 1.0 - fx)
                                    data[z0 + dz, y0 + dy, x0 + dx] += t * value
                                    weight[z0 + dz, y0 + dy, x0 + dx] += t * w
