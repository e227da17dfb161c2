"""RELION's Euler angles and the gridding correction of trilinear interpolation:
the geometry the reconstruction and the simulator's projector share.

A rotation matrix ``R`` maps volume coordinates to image coordinates, as RELION's
``Euler_angles2matrix`` does (ZYZ: rot, tilt, psi in degrees).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import StageInputError

__all__ = ["euler_to_matrix", "gridding_correction", "matrix_to_euler"]


def euler_to_matrix(
    rot_deg: float | np.ndarray,
    tilt_deg: float | np.ndarray,
    psi_deg: float | np.ndarray,
) -> np.ndarray:
    """RELION's ZYZ Euler angles (rlnAngleRot, Tilt, Psi) -> matrices ``(..., 3, 3)``."""
    a, b, g = (
        np.deg2rad(np.asarray(v, dtype=np.float64))
        for v in (rot_deg, tilt_deg, psi_deg)
    )
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = (
        np.cos(a),
        np.sin(a),
        np.cos(b),
        np.sin(b),
        np.cos(g),
        np.sin(g),
    )
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((*a.shape, 3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(matrices: np.ndarray) -> NDArray[np.float64]:
    """Inverse of :func:`euler_to_matrix`: ``(..., 3, 3)`` -> ``(..., 3)`` degrees.

    Returns [rot, tilt, psi] with tilt in [0, 180]; at tilt 0 or 180 the rotation
    is put in psi and rot is 0 (as RELION does).
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise StageInputError("<array>", "matrices", m.shape, "must end with (3, 3)")
    abs_sb = np.hypot(m[..., 0, 2], m[..., 1, 2])
    regular = abs_sb > 1e-6
    psi = np.where(regular, np.arctan2(m[..., 1, 2], -m[..., 0, 2]), 0.0)
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    tilt = np.arctan2(abs_sb, m[..., 2, 2])
    up = m[..., 2, 2] > 0
    degenerate_psi = np.where(
        up,
        np.arctan2(-m[..., 1, 0], m[..., 0, 0]),
        np.arctan2(m[..., 1, 0], -m[..., 0, 0]),
    )
    psi = np.where(regular, psi, degenerate_psi)
    tilt = np.where(regular, tilt, np.where(up, 0.0, np.pi))
    angles_rad: NDArray[np.float64] = np.stack([rot, tilt, psi], axis=-1)
    return np.rad2deg(angles_rad)


def gridding_correction(box: int, npad: int) -> np.ndarray:
    """1 / sinc^2 per axis: undoes the real-space taper of trilinear interpolation."""
    r = (np.arange(box) - box // 2) / npad
    s = np.sinc(r) ** 2
    return 1.0 / (s[:, None, None] * s[None, :, None] * s[None, None, :])
