"""The coarse pose grid of a coarse-then-fine search and its fine neighbourhoods.

The coarse grid keeps only the Fourier pixels up to a low radius (by default
1/8 of the box, at least 8 shells: :func:`coarse_radius_px`) and optionally every
``psi_factor``-th in-plane rotation and the shifts whose grid coordinates are
multiples of ``shift_factor`` (both 1 by default: see :mod:`pose_search`).  Each
coarse pose owns a neighbourhood on the fine grid: the fine psi within
``psi_factor - 1`` steps and the fine shifts within ``shift_factor - 1`` steps in
x and y.  Together the neighbourhoods cover every fine pose, so a particle whose
coarse posterior keeps all coarse poses is searched exhaustively.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.class2d.sampling import PoseSampling, restrict_sampling

__all__ = ["CoarseGrid", "build_coarse_grid", "coarse_radius_px"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoarseGrid:
    """A coarse sampling and its map to the fine one.

    ``sampling`` is the coarse :class:`PoseSampling` (its psi, shifts and pixels
    are subsets of the fine ones); ``pixel_index`` ``(Pc,)``, ``psi_index``
    ``(n_psi_c,)`` and ``shift_index`` ``(Tc,)`` locate them in the fine sampling.
    ``psi_neighbours`` ``(n_psi_c, 2 f - 1)`` and ``shift_neighbours``
    ``(Tc, (2 f - 1)^2 [+ 3])`` list the fine indices each coarse psi / shift stands
    for (``f`` the coarsening factor; ``-1`` pads missing ones).
    """

    sampling: PoseSampling
    pixel_index: np.ndarray
    psi_index: np.ndarray
    shift_index: np.ndarray
    psi_neighbours: np.ndarray
    shift_neighbours: np.ndarray


def coarse_radius_px(radius_px: int, box_px: int) -> int:
    """Pixels of the coarse pass: shells up to ``COARSE_RADIUS_FRACTION`` of the box
    (at least 8, never above ``radius_px``)."""
    return int(min(radius_px, max(8, round(COARSE_RADIUS_FRACTION * box_px))))


COARSE_RADIUS_FRACTION = 0.125


def build_coarse_grid(
    sampling: PoseSampling,
    radius_px: int | None = None,
    *,
    psi_factor: int = 1,
    shift_factor: int = 1,
) -> CoarseGrid:
    """The coarse grid of ``sampling`` on pixels up to ``radius_px`` (default
    :func:`coarse_radius_px`), psi every ``psi_factor`` fine steps (1 or 2)."""
    radius = (
        coarse_radius_px(sampling.radius_px, sampling.box_px)
        if radius_px is None
        else radius_px
    )
    pixels, pixel_index = restrict_sampling(sampling, radius)
    n_psi = sampling.n_psi
    psi_index = np.arange(0, n_psi, psi_factor)
    reach = np.arange(1 - psi_factor, psi_factor)
    psi_neighbours = (psi_index[:, None] + reach[None, :]) % n_psi
    shifts = sampling.shifts_px
    step = _grid_step(shifts)
    grid = np.rint(shifts / step).astype(np.int64)  # integer grid coordinates
    coarse = np.nonzero(np.all(grid % shift_factor == 0, axis=1))[0]
    if coarse.size == 0:  # no even point (cannot happen on a centred grid)
        coarse = np.array([int(np.argmin(np.sum(grid**2, axis=1)))])
    lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(grid)}
    shift_reach = range(1 - shift_factor, shift_factor)
    offsets = [(dx, dy) for dy in shift_reach for dx in shift_reach]
    spare = 3 if shift_factor > 1 else 0  # room for orphaned corners of the disc
    shift_neighbours = np.full((coarse.size, len(offsets) + spare), -1, dtype=np.int64)
    for row, c in enumerate(coarse):  # once per grid (a few dozen shifts)
        for slot, (dx, dy) in enumerate(offsets):
            key = (int(grid[c, 0]) + dx, int(grid[c, 1]) + dy)
            shift_neighbours[row, slot] = lookup.get(key, -1)
    _cover_orphans(grid, coarse, shift_neighbours)
    coarse_sampling = PoseSampling(
        box_px=pixels.box_px,
        radius_px=pixels.radius_px,
        kx=pixels.kx,
        ky=pixels.ky,
        rows=pixels.rows,
        cols=pixels.cols,
        shell=pixels.shell,
        hermitian_weight=pixels.hermitian_weight,
        psi_deg=sampling.psi_deg[psi_index],
        shifts_px=shifts[coarse],
        phases=np.ascontiguousarray(pixels.phases[coarse]),
    )
    return CoarseGrid(
        sampling=coarse_sampling,
        pixel_index=pixel_index,
        psi_index=psi_index,
        shift_index=coarse,
        psi_neighbours=psi_neighbours,
        shift_neighbours=shift_neighbours,
    )


def _grid_step(shifts: np.ndarray) -> float:
    values = np.unique(np.abs(shifts))
    positive = values[values > 1e-9]
    return float(positive.min()) if positive.size else 1.0


def _cover_orphans(
    grid: np.ndarray, coarse: np.ndarray, neighbours: np.ndarray
) -> None:
    """Give every fine shift not yet in a neighbourhood to its nearest coarse shift
    (a free slot of it), so that the neighbourhoods cover the whole fine grid."""
    covered = np.zeros(grid.shape[0], dtype=bool)
    covered[neighbours[neighbours >= 0]] = True
    for fine in np.nonzero(~covered)[0]:  # rare: corners of a disc-shaped grid
        order = np.argsort(np.sum((grid[coarse] - grid[fine]) ** 2, axis=1))
        for c in order:
            free = np.nonzero(neighbours[c] < 0)[0]
            if free.size:
                neighbours[c, free[0]] = fine
                break
