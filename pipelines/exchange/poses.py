"""cryoSPARC poses and shifts in RELION's conventions.

cryoSPARC stores a 3D pose as a rotation vector (axis times angle, radians):
``alignments3D/pose``.  The matrix RELION builds from ``rlnAngleRot/Tilt/Psi``
(:func:`pipelines.reconstruct.geometry.euler_to_matrix`, volume -> image) is the
*transpose* of the Rodrigues matrix of that vector, so

    A_relion = rodrigues(pose).T = rodrigues(-pose)

(the relation ``pyem``'s ``csparc2star`` uses).  The viewing direction, row 2 of
``A``, is therefore ``rodrigues(pose) @ e_z``.  A 2D pose
(``alignments2D/pose``) is the in-plane angle in radians, RELION's ``rlnAnglePsi``
in degrees.  Shifts (``alignments*/shift``, pixels at ``alignments*/psize_A``) have
the sign of RELION's origin: ``rlnOriginXAngst = shift_x * psize_A``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.reconstruct.geometry import euler_to_matrix, matrix_to_euler

__all__ = [
    "euler_to_rotvec",
    "rodrigues",
    "rotvec_to_euler",
    "rotvec_viewing_directions",
]


def rodrigues(rotvec: np.ndarray) -> NDArray[np.float64]:
    """Rotation vectors ``(..., 3)`` (radians) -> matrices ``(..., 3, 3)``."""
    v = np.asarray(rotvec, dtype=np.float64)
    if v.shape[-1:] != (3,):
        raise StageInputError("<array>", "rotvec", v.shape, "must end with 3")
    theta = np.linalg.norm(v, axis=-1)
    small = theta < 1e-12
    axis = v / np.where(small, 1.0, theta)[..., None]
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    s, c = np.sin(theta), np.cos(theta)
    t = 1.0 - c
    m = np.empty((*v.shape[:-1], 3, 3))
    m[..., 0, 0] = c + t * x * x
    m[..., 0, 1] = t * x * y - s * z
    m[..., 0, 2] = t * x * z + s * y
    m[..., 1, 0] = t * x * y + s * z
    m[..., 1, 1] = c + t * y * y
    m[..., 1, 2] = t * y * z - s * x
    m[..., 2, 0] = t * x * z - s * y
    m[..., 2, 1] = t * y * z + s * x
    m[..., 2, 2] = c + t * z * z
    return m


def _matrix_to_rotvec(m: np.ndarray) -> NDArray[np.float64]:
    """Matrices ``(n, 3, 3)`` -> rotation vectors ``(n, 3)``, robust near pi
    (through the unit quaternion, Shepperd's choice of the largest component)."""
    tr = np.trace(m, axis1=-2, axis2=-1)
    diag = np.stack([m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], axis=-1)
    choice = np.argmax(np.concatenate([diag, tr[..., None]], axis=-1), axis=-1)
    q = np.empty((*m.shape[:-2], 4))  # x, y, z, w
    for i in range(3):  # the three diagonal cases, then the trace case
        rows = choice == i
        j, k = (i + 1) % 3, (i + 2) % 3
        mi = m[rows]
        qi = np.empty((len(mi), 4))
        qi[:, i] = 1.0 - tr[rows] + 2.0 * mi[:, i, i]
        qi[:, j] = mi[:, j, i] + mi[:, i, j]
        qi[:, k] = mi[:, k, i] + mi[:, i, k]
        qi[:, 3] = mi[:, k, j] - mi[:, j, k]
        q[rows] = qi
    rows = choice == 3
    mt = m[rows]
    q[rows] = np.stack(
        [
            mt[:, 2, 1] - mt[:, 1, 2],
            mt[:, 0, 2] - mt[:, 2, 0],
            mt[:, 1, 0] - mt[:, 0, 1],
            1.0 + tr[rows],
        ],
        axis=-1,
    )
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= np.where(q[..., 3:] < 0, -1.0, 1.0)  # w >= 0: angle in [0, pi]
    sin_half = np.linalg.norm(q[..., :3], axis=-1)
    angle = 2.0 * np.arctan2(sin_half, q[..., 3])
    scale = np.where(sin_half > 1e-12, angle / np.where(sin_half > 0, sin_half, 1), 2)
    out: NDArray[np.float64] = q[..., :3] * scale[..., None]
    return out


def euler_to_rotvec(
    rot_deg: np.ndarray, tilt_deg: np.ndarray, psi_deg: np.ndarray
) -> NDArray[np.float64]:
    """RELION ZYZ Euler angles (degrees) -> cryoSPARC ``alignments3D/pose`` ``(n, 3)``."""
    a = euler_to_matrix(rot_deg, tilt_deg, psi_deg).reshape(-1, 3, 3)
    return _matrix_to_rotvec(np.swapaxes(a, -1, -2))


def rotvec_to_euler(pose: np.ndarray) -> NDArray[np.float64]:
    """cryoSPARC ``alignments3D/pose`` ``(n, 3)`` -> RELION [rot, tilt, psi] degrees."""
    return matrix_to_euler(np.swapaxes(rodrigues(pose), -1, -2))


def rotvec_viewing_directions(pose: np.ndarray) -> NDArray[np.float64]:
    """Unit viewing directions ``(n, 3)`` (row 2 of RELION's matrix) of poses."""
    out: NDArray[np.float64] = rodrigues(pose)[..., :, 2]
    return out
