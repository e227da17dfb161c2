"""numba kernels for volumes and projections (private: use the typed modules).

- :func:`extract_slices`: central slices of a centred half-transform (rfft along x),
  trilinear interpolation, with Hermitian symmetry for negative x frequencies and a
  phase ramp for sub-pixel shifts.
- :func:`deposit_points`: trilinear splatting of weighted points into a grid.
- :func:`add_patches`: add many small images into a large one at integer offsets.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True, parallel=True)
def extract_slices(  # pragma: no cover
    fvol: NDArray[np.complex64],
    rotations: NDArray[np.float64],
    shifts: NDArray[np.float64],
    out: NDArray[np.complex64],
    radius_px: float,
) -> None:
    """Fill ``out`` (n, Np, Np//2+1) with slices of ``fvol`` (Np, Np, Np//2+1).

    ``fvol`` is centred along z and y (index Np//2 is frequency 0) and holds
    x frequencies 0..Np//2.  ``out`` is centred along y in the same way.  The slice
    of image frequency (kx, ky) is the volume frequency ``R^T (kx, ky, 0)``.
    """
    n = rotations.shape[0]
    npad = fvol.shape[0]
    half = npad // 2
    nxh = fvol.shape[2]
    r2max = radius_px * radius_px
    for job in prange(n * npad):
        i = job // npad
        iy = job % npad
        ky = iy - half
        r00 = rotations[i, 0, 0]
        r01 = rotations[i, 0, 1]
        r02 = rotations[i, 0, 2]
        r10 = rotations[i, 1, 0]
        r11 = rotations[i, 1, 1]
        r12 = rotations[i, 1, 2]
        sx = shifts[i, 0]
        sy = shifts[i, 1]
        for ix in range(out.shape[2]):
            kx = ix
            if kx * kx + ky * ky > r2max:
                out[i, iy, ix] = 0.0
                continue
            # volume frequency q = R^T k (k = (kx, ky, 0) in x, y, z order)
            qx = r00 * kx + r10 * ky
            qy = r01 * kx + r11 * ky
            qz = r02 * kx + r12 * ky
            conj = False
            if qx < 0.0:
                qx = -qx
                qy = -qy
                qz = -qz
                conj = True
            x0 = int(np.floor(qx))
            y0f = np.floor(qy)
            z0f = np.floor(qz)
            fx = qx - x0
            fy = qy - y0f
            fz = qz - z0f
            y0 = int(y0f) + half
            z0 = int(z0f) + half
            if x0 + 1 >= nxh or y0 < 0 or y0 + 1 >= npad or z0 < 0 or z0 + 1 >= npad:
                out[i, iy, ix] = 0.0
                continue
            c000 = fvol[z0, y0, x0]
            c001 = fvol[z0, y0, x0 + 1]
            c010 = fvol[z0, y0 + 1, x0]
            c011 = fvol[z0, y0 + 1, x0 + 1]
            c100 = fvol[z0 + 1, y0, x0]
            c101 = fvol[z0 + 1, y0, x0 + 1]
            c110 = fvol[z0 + 1, y0 + 1, x0]
            c111 = fvol[z0 + 1, y0 + 1, x0 + 1]
            c00 = c000 + fx * (c001 - c000)
            c01 = c010 + fx * (c011 - c010)
            c10 = c100 + fx * (c101 - c100)
            c11 = c110 + fx * (c111 - c110)
            c0 = c00 + fy * (c01 - c00)
            c1 = c10 + fy * (c11 - c10)
            value = c0 + fz * (c1 - c0)
            if conj:
                value = np.conj(value)
            if sx != 0.0 or sy != 0.0:
                phase = -2.0 * np.pi * (kx * sx + ky * sy) / npad
                value = value * (np.cos(phase) + 1j * np.sin(phase))
            out[i, iy, ix] = value


@njit(cache=True)
def deposit_points(  # pragma: no cover
    points: NDArray[np.float64], weights: NDArray[np.float64], grid: NDArray[np.float64]
) -> None:
    """Add ``weights`` at ``points`` (n, 3) in (z, y, x) voxel units, trilinearly."""
    nz, ny, nx = grid.shape
    for i in range(points.shape[0]):
        z = points[i, 0]
        y = points[i, 1]
        x = points[i, 2]
        z0 = int(np.floor(z))
        y0 = int(np.floor(y))
        x0 = int(np.floor(x))
        if z0 < 0 or y0 < 0 or x0 < 0 or z0 + 1 >= nz or y0 + 1 >= ny or x0 + 1 >= nx:
            continue
        fz = z - z0
        fy = y - y0
        fx = x - x0
        w = weights[i]
        for dz in range(2):
            wz = fz if dz else 1.0 - fz
            for dy in range(2):
                wy = fy if dy else 1.0 - fy
                for dx in range(2):
                    wx = fx if dx else 1.0 - fx
                    grid[z0 + dz, y0 + dy, x0 + dx] += w * wz * wy * wx


@njit(cache=True)
def add_patches(  # pragma: no cover
    image: NDArray[np.float32], patches: NDArray[np.float32], corners: NDArray[np.int64]
) -> None:
    """Add ``patches`` (n, b, b) into ``image`` with top-left ``corners`` (n, 2) [y, x].

    Parts outside ``image`` are dropped.
    """
    ny, nx = image.shape
    b = patches.shape[1]
    for i in range(patches.shape[0]):
        y0 = corners[i, 0]
        x0 = corners[i, 1]
        for dy in range(b):
            y = y0 + dy
            if y < 0 or y >= ny:
                continue
            for dx in range(b):
                x = x0 + dx
                if 0 <= x < nx:
                    image[y, x] += patches[i, dy, dx]
