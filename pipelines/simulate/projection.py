"""Projections of a volume by the Fourier slice theorem, and RELION's Euler angles.

Conventions.  A volume is an array ``(z, y, x)`` whose centre is voxel ``N // 2``
on every axis.  A rotation matrix ``R`` maps volume coordinates to image
coordinates, as RELION's ``Euler_angles2matrix`` does: the projection at ``R`` is

    P(x, y) = sum_z V(R^T (x, y, z))

so its 2D transform is the central slice ``F_V(R^T (kx, ky, 0))``.  Shifts move the
projected content by ``+shift_px`` ([x, y]).  Values are voxel sums (multiply by
the pixel size for a line integral in Å).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from pipelines.errors import StageInputError
from pipelines.reconstruct.geometry import (
    euler_to_matrix,
    gridding_correction,
    matrix_to_euler,
)
from pipelines.simulate import _projection_kernels

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "prepare_volume_transform",
    "project",
    "random_rotations",
]


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices ``(n, 3, 3)`` drawn uniformly on SO(3) (unit quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    m = np.empty((n, 3, 3))
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - z * w)
    m[:, 0, 2] = 2 * (x * z + y * w)
    m[:, 1, 0] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - x * w)
    m[:, 2, 0] = 2 * (x * z - y * w)
    m[:, 2, 1] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def prepare_volume_transform(
    volume: np.ndarray, *, oversampling: int = 2, workers: int = -1
) -> np.ndarray:
    """The centred half-transform ``(Np, Np, Np//2+1)`` that :func:`project` slices.

    Compute it once with this and pass it as ``project(..., transform=...)`` when
    projecting the same volume in many calls.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise StageInputError(
            "<array>", "volume", vol.shape, "must be a cube (N, N, N)"
        )
    box = vol.shape[0]
    npad = int(oversampling) * box
    padded = np.zeros((npad, npad, npad), dtype=np.float32)
    o = npad // 2 - box // 2
    padded[o : o + box, o : o + box, o : o + box] = vol * gridding_correction(box, npad)
    padded = np.fft.ifftshift(padded)
    ft = scipy.fft.rfftn(padded, workers=workers)
    return np.ascontiguousarray(np.fft.fftshift(ft, axes=(0, 1)).astype(np.complex64))


def project(
    volume: np.ndarray,
    rotations: np.ndarray,
    *,
    shifts_px: np.ndarray | None = None,
    oversampling: int = 2,
    transform: np.ndarray | None = None,
    workers: int = -1,
) -> np.ndarray:
    """Projections ``(n, N, N)`` float32 of ``volume`` ``(N, N, N)`` at ``rotations``.

    ``rotations`` is ``(n, 3, 3)`` (see the module docstring); ``shifts_px`` is
    ``(n, 2)`` [x, y].  The volume is zero-padded ``oversampling`` times before its
    one 3D FFT; slices are interpolated trilinearly (numba) with a gridding
    correction, and the inverse 2D FFTs run as one batch.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise StageInputError(
            "<array>", "volume", vol.shape, "must be a cube (N, N, N)"
        )
    box = vol.shape[0]
    rots = np.ascontiguousarray(rotations, dtype=np.float64)
    if rots.ndim == 2:
        rots = rots[None]
    if rots.ndim != 3 or rots.shape[1:] != (3, 3):
        raise StageInputError("<array>", "rotations", rots.shape, "must be (n, 3, 3)")
    n = rots.shape[0]
    if shifts_px is None:
        shifts = np.zeros((n, 2))
    else:
        shifts = np.ascontiguousarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        if shifts.shape[0] != n:
            raise StageInputError(
                "<array>", "shifts_px", shifts.shape, f"must be ({n}, 2) like rotations"
            )
    if transform is None:
        transform = prepare_volume_transform(
            vol, oversampling=oversampling, workers=workers
        )
    npad = transform.shape[0]
    if transform.shape != (npad, npad, npad // 2 + 1) or npad < box:
        raise StageInputError(
            "<array>",
            "transform",
            transform.shape,
            f"does not fit a volume of box {box}",
        )
    slices = np.empty((n, npad, npad // 2 + 1), dtype=np.complex64)
    _projection_kernels.extract_slices(
        transform, rots, shifts, slices, float(npad // 2 - 1)
    )
    slices = np.fft.ifftshift(slices, axes=1)
    images = scipy.fft.irfft2(slices, s=(npad, npad), workers=workers)
    images = np.fft.fftshift(images, axes=(1, 2))
    o = npad // 2 - box // 2
    return np.ascontiguousarray(images[:, o : o + box, o : o + box], dtype=np.float32)
