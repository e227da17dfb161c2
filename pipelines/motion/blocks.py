"""Temporal blocks of the local warp: consecutive frames warped as one.

RELION's local model (:mod:`pipelines.motion.local`) is zero at the first frame and
a cubic in time, so consecutive frames' local corrections differ by little.  The
final sum may then warp a *block* of consecutive frames at once: the block's frames
are shifted (global correction), dose-weighted and summed from their held spectra,
and the block's sum is warped by the block's mean local field.  A frame's field
differs from that mean by at most ``tolerance_px`` anywhere in the frame, so the
block's sum is the exact per-frame sum to second order (the deviations average to
zero over the block): its signal is attenuated by at most ``(2 pi k)² var / 2``,
1.2 % at Nyquist for 0.05 px, below the alignment's own error.

:func:`local_blocks` splits the frames greedily: a block grows while every frame's
field stays within ``tolerance_px`` of the block's mean on a grid over the frame
(the field is quadratic in ``u``, ``v``; a 17 × 17 grid with the corners finds its
largest deviation to a few per cent).  Where the field moves fast (a large cubic
term late in the movie) the blocks are short; with no local motion there is one.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LOCAL_BLOCK_TOLERANCE_PX",
    "MAX_BLOCKS_PER_FRAME",
    "block_coefficients",
    "local_blocks",
    "spatial_coefficients",
]

# largest distance (px) between a frame's local field and its block's mean field:
# 0.15 (was 0.1): on bench_chain's movie 10 blocks instead of 13, and against the
# simulator's true image the same FRC within 1e-4 in every band (docs/motion.md
# *Speed*, bench_motion_local.py)
LOCAL_BLOCK_TOLERANCE_PX = 0.15
# more blocks than this per frame take the exact per-frame path: a block costs
# one or two inverse FFTs and a warp of one or two images (~0.3-0.5 CPU s at
# 4096²), a frame of the exact path a preparation, a warp and an FFT (~0.5-0.6
# s); conservative, so that the blocks' approximation is used only where it
# clearly saves
MAX_BLOCKS_PER_FRAME = 0.5
# points per axis of the grid (corners included) where the fields are compared
_GRID_POINTS = 17


def spatial_coefficients(
    coefficients: np.ndarray, z: np.ndarray
) -> NDArray[np.float64]:
    """The local field's spatial coefficients ``(n_z, 2, 6)`` (x, y; basis ``(1, u,
    u², v, v², uv)``) at frames ``z`` ``(n_z,)`` of RELION's polynomial
    ``coefficients`` ``(2, 18)`` (``c[g, p]`` at index ``3 g + p - 1``)."""
    z = np.asarray(z, dtype=np.float64)
    zpow = np.stack([z, z * z, z * z * z], axis=-1)  # (n_z, 3)
    c = np.asarray(coefficients, dtype=np.float64).reshape(2, 6, 3)
    spatial: NDArray[np.float64] = np.einsum("zp,agp->zag", zpow, c)
    return spatial


def block_coefficients(
    coefficients: np.ndarray, start: int, stop: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Spatial coefficients ``(6,)`` x and y of the mean local field of frames
    ``start .. stop - 1`` (the field is linear in its coefficients, so the mean
    field is the polynomial of the mean coefficients)."""
    if not 0 <= start < stop:
        raise ValueError(f"block {start}..{stop} is empty")
    mean = spatial_coefficients(coefficients, np.arange(start, stop)).mean(axis=0)
    return np.ascontiguousarray(mean[0]), np.ascontiguousarray(mean[1])


def _grid_basis() -> NDArray[np.float64]:
    """``(n_points, 6)`` basis values on a regular grid over the frame, corners
    included (``u``, ``v`` from -0.5 to 0.5)."""
    axis = np.linspace(-0.5, 0.5, _GRID_POINTS)
    v_grid, u_grid = np.meshgrid(axis, axis, indexing="ij")
    u, v = u_grid.ravel(), v_grid.ravel()
    return np.stack([np.ones_like(u), u, u * u, v, v * v, u * v], axis=-1)


def local_blocks(
    coefficients: np.ndarray,
    n_frames: int,
    *,
    tolerance_px: float = LOCAL_BLOCK_TOLERANCE_PX,
) -> list[tuple[int, int]]:
    """Consecutive frame ranges ``[(start, stop), ...]`` covering ``0 .. n_frames -
    1`` in which every frame's local field (RELION polynomial ``coefficients``
    ``(2, 18)``) is within ``tolerance_px`` of the range's mean field at every
    point of a grid over the frame; greedy, from the first frame."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not tolerance_px >= 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px!r}")
    spatial = spatial_coefficients(coefficients, np.arange(n_frames))
    # the field of each frame on the grid: (n_frames, n_points, 2)
    field = np.einsum("pg,zag->zpa", _grid_basis(), spatial)
    limit = tolerance_px * tolerance_px
    blocks: list[tuple[int, int]] = []
    start = 0
    while start < n_frames:
        stop = start + 1
        while stop < n_frames:
            chunk = field[start : stop + 1]
            deviation = chunk - chunk.mean(axis=0)
            if float(np.max(np.sum(deviation * deviation, axis=-1))) > limit:
                break
            stop += 1
        blocks.append((start, stop))
        start = stop
    return blocks
