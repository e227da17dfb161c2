"""Orientation and translation grids of the 3D pose search.

Directions are a Fibonacci sphere (near-uniform like HEALPix, any count), each
paired with in-plane angles ``psi``: rotation ``R = euler_to_matrix(rot, tilt,
psi)`` (RELION's ZYZ convention, volume to image).  Translations are a square grid
of origins in pixels, ``[x, y]`` (RELION's ``rlnOriginX/Y``: the image is shifted
by the origin to centre the particle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.errors import StageInputError
from pipelines.reconstruct.geometry import euler_to_matrix

__all__ = [
    "PoseGrid",
    "children_of",
    "directions_for_step",
    "pose_grid",
    "shift_grid",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoseGrid:
    """``rotations`` ``(R, 3, 3)``, their Euler angles ``(R, 3)`` in degrees
    [rot, tilt, psi], and the grid's angular step in degrees."""

    rotations: np.ndarray
    angles_deg: np.ndarray
    step_deg: float

    @property
    def n_rotations(self) -> int:
        return int(self.rotations.shape[0])


def directions_for_step(step_deg: float) -> int:
    """Directions whose mean spacing is about ``step_deg`` (the sphere's area
    divided by the area of one cell)."""
    if not 0.5 <= step_deg <= 90.0:
        raise StageInputError("<argument>", "step_deg", step_deg, "must be 0.5..90")
    return max(12, round(float(4.0 * np.pi / np.deg2rad(step_deg) ** 2)))


def pose_grid(step_deg: float) -> PoseGrid:
    """Fibonacci directions at about ``step_deg`` times psi every ``step_deg``."""
    n = directions_for_step(step_deg)
    i = np.arange(n) + 0.5
    tilt = np.rad2deg(np.arccos(1.0 - 2.0 * i / n))
    rot = np.mod(np.rad2deg(np.pi * (1.0 + np.sqrt(5.0)) * i), 360.0)
    n_psi = max(4, round(360.0 / step_deg))
    psi = np.arange(n_psi) * (360.0 / n_psi)
    angles = np.stack(
        [
            np.repeat(rot, n_psi),
            np.repeat(tilt, n_psi),
            np.tile(psi, len(rot)),
        ],
        axis=1,
    )
    return PoseGrid(
        rotations=euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]),
        angles_deg=angles,
        step_deg=float(step_deg),
    )


def shift_grid(range_px: float, step_px: float) -> np.ndarray:
    """Origins ``(T, 2)`` [x, y] in pixels on a square grid within a disc of
    ``range_px`` (``[[0, 0]]`` when the range is 0)."""
    if range_px < 0 or step_px <= 0:
        raise StageInputError(
            "<argument>", "shift range/step", (range_px, step_px), "must be >= 0 / > 0"
        )
    n = int(np.floor(range_px / step_px))
    axis = np.arange(-n, n + 1) * step_px
    grid = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1).reshape(-1, 2)
    inside = np.hypot(grid[:, 0], grid[:, 1]) <= range_px + 1e-9
    return np.ascontiguousarray(grid[inside], dtype=np.float64)


def children_of(coarse: PoseGrid, fine: PoseGrid) -> np.ndarray:
    """For each coarse rotation, the fine rotations nearest to it ``(Rc, W)``
    (padded with -1): the fine poses a kept coarse pose is refined into
    (RELION's oversampling, with two independent grids)."""
    # nearest coarse rotation of each fine one: the largest trace of Rc Rf^T
    nearest = np.empty(fine.n_rotations, dtype=np.int64)
    block = 512
    for start in range(0, fine.n_rotations, block):  # a loop over blocks of rotations
        rf = fine.rotations[start : start + block]
        trace = np.einsum("cij,fij->fc", coarse.rotations, rf)
        nearest[start : start + block] = np.argmax(trace, axis=1)
    counts = np.bincount(nearest, minlength=coarse.n_rotations)
    width = max(1, int(counts.max()))
    order = np.argsort(nearest, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(fine.n_rotations) - starts[nearest[order]]
    out = np.full((coarse.n_rotations, width), -1, dtype=np.int64)
    out[nearest[order], rank] = order
    return out
