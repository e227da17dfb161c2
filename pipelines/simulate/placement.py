"""Where particles go: random, non-overlapping, away from edges and contamination.

Batched dart throwing: each round draws many candidates at once, rejects those
too close to an accepted point (k-d tree) or to an earlier candidate of the same
round, and keeps the rest; a few rounds fill the field.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from pipelines.errors import StageInputError

__all__ = ["place_points"]


def place_points(
    n: int,
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    min_distance_px: float,
    edge_margin_px: float,
    exclusion: np.ndarray | None = None,
    max_rounds: int = 50,
) -> np.ndarray:
    """Up to ``n`` points ``(m, 2)`` [x, y] in pixels, pairwise >= ``min_distance_px``.

    Points stay ``edge_margin_px`` from every edge and outside the discs of
    ``exclusion`` ``(k, 3)`` [x, y, radius].  Fewer than ``n`` come back only when
    the field is full (then the count tells).
    """
    ny, nx = shape
    if nx <= 2 * edge_margin_px or ny <= 2 * edge_margin_px:
        raise StageInputError(
            "<argument>", "edge_margin_px", edge_margin_px, f"leaves no room in {shape}"
        )
    accepted = np.empty((0, 2))
    discs = (
        np.empty((0, 3))
        if exclusion is None
        else np.asarray(exclusion, float).reshape(-1, 3)
    )
    for _ in range(max_rounds):
        missing = n - len(accepted)
        if missing <= 0:
            break
        candidates = np.column_stack(
            [
                rng.uniform(edge_margin_px, nx - edge_margin_px, 4 * missing + 16),
                rng.uniform(edge_margin_px, ny - edge_margin_px, 4 * missing + 16),
            ]
        )
        if len(discs):
            d = np.linalg.norm(candidates[:, None, :] - discs[None, :, :2], axis=2)
            candidates = candidates[np.all(d > discs[None, :, 2], axis=1)]
        if len(accepted) and len(candidates):
            dist, _ = cKDTree(accepted).query(candidates, k=1)
            candidates = candidates[dist >= min_distance_px]
        if len(candidates) > 1:
            pairs = cKDTree(candidates).query_pairs(
                min_distance_px, output_type="ndarray"
            )
            drop = np.zeros(len(candidates), dtype=bool)
            # drop the later candidate of every close pair (conservative, no loop)
            drop[pairs.max(axis=1)] = True
            candidates = candidates[~drop]
        accepted = np.concatenate([accepted, candidates[:missing]])
    return accepted
