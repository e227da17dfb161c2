"""Ground-truth records of simulated micrographs (what a stage should recover).

Coordinates are pixels of the micrograph: ``x_px`` is the column, ``y_px`` the row
of a particle's centre (the volume's centre voxel ``N // 2`` lands there).  Angles
are RELION's (rlnAngleRot, rlnAngleTilt, rlnAnglePsi; see
:mod:`pipelines.simulate.projection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.ctf.model import CtfParams
from pipelines.simulate.projection import euler_to_matrix

__all__ = ["CarbonEdge", "ContaminationBlob", "MicrographTruth", "ParticleTruth"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticleTruth:
    """One particle: centre, orientation, and the CTF it was imaged with."""

    x_px: float
    y_px: float
    rot_deg: float
    tilt_deg: float
    psi_deg: float
    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float

    @property
    def rotation(self) -> np.ndarray:
        """The rotation matrix (3, 3) of this particle's projection."""
        return euler_to_matrix(self.rot_deg, self.tilt_deg, self.psi_deg)


@dataclass(frozen=True, slots=True, kw_only=True)
class CarbonEdge:
    """Carbon covers the pixels with ``(x - cx) cos(a) + (y - cy) sin(a) > offset_px``.

    ``(cx, cy)`` is the micrograph centre.
    """

    angle_deg: float
    offset_px: float
    thickness_a: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(ny, nx)``: True on carbon."""
        ny, nx = shape
        a = np.deg2rad(self.angle_deg)
        y = np.arange(ny)[:, None] - 0.5 * (ny - 1)
        x = np.arange(nx)[None, :] - 0.5 * (nx - 1)
        return np.asarray(x * np.cos(a) + y * np.sin(a) > self.offset_px, dtype=bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContaminationBlob:
    """A dense blob (ice crystal, debris) centred at ``(x_px, y_px)``."""

    x_px: float
    y_px: float
    radius_px: float
    thickness_a: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MicrographTruth:
    """Everything known about a simulated micrograph."""

    shape_px: tuple[int, int]
    pixel_size_a: float
    ctf: CtfParams
    box_px: int
    particles: tuple[ParticleTruth, ...]
    ice_thickness_a: float
    ice_gradient_a: float
    carbon_edge: CarbonEdge | None = None
    contamination: tuple[ContaminationBlob, ...] = ()
    dose_e_per_a2: float | None = None

    @property
    def coordinates_px(self) -> np.ndarray:
        """``(n, 2)`` particle centres [x, y] in pixels."""
        return np.array(
            [[p.x_px, p.y_px] for p in self.particles], dtype=np.float64
        ).reshape(-1, 2)

    @property
    def euler_deg(self) -> np.ndarray:
        """``(n, 3)`` [rot, tilt, psi] in degrees."""
        return np.array(
            [[p.rot_deg, p.tilt_deg, p.psi_deg] for p in self.particles],
            dtype=np.float64,
        ).reshape(-1, 3)

    @property
    def rotations(self) -> np.ndarray:
        """``(n, 3, 3)`` rotation matrices."""
        e = self.euler_deg
        return euler_to_matrix(e[:, 0], e[:, 1], e[:, 2])
