"""Rebalance Orientations (cryoSPARC's job): thin out over-represented views.

Definition (the one the tests check):

1. ``n_bins`` bin centres from a Fibonacci spiral on the unit sphere
   (:func:`fibonacci_sphere`, nearly equal areas).
2. Each particle goes to the bin whose centre is nearest its viewing direction
   (largest dot product; :func:`assign_bins`, a parallel numba loop that sums each
   particle's products in a fixed order, so its bin never depends on the rest of
   the set).
3. ``threshold_count`` is the ``percentile``-th percentile of the counts of the
   populated bins, taken as one of those counts (``method="lower"``).
4. A bin holding ``c > threshold_count`` particles loses its ``c - threshold_count``
   worst ones by the intra-bin criterion (:data:`CRITERIA`; ``random`` draws the
   order from the given generator); ties go by row order, and a NaN is worst.

After one pass no bin holds more than ``threshold_count`` and the sorted counts up to
the percentile's rank are unchanged, so a second pass with the same parameters
removes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.reconstruct._rebalance_kernels import nearest_centres

__all__ = [
    "CRITERIA",
    "DEFAULT_BINS",
    "DEFAULT_CRITERION",
    "DEFAULT_PERCENTILE",
    "CriterionSpec",
    "RebalanceResult",
    "assign_bins",
    "fibonacci_sphere",
    "rebalance_orientations",
]

DEFAULT_BINS = 300
DEFAULT_PERCENTILE = 90.0
DEFAULT_CRITERION = "random"


@dataclass(frozen=True, slots=True, kw_only=True)
class CriterionSpec:
    """Where an intra-bin criterion's value lives and which end is worse."""

    cs_field: str
    star_label: str | None
    higher_is_worse: bool


# name -> spec (None: random order).  RELION STAR files carry only the picking
# score; the refinement and 2D errors and the per-particle scale are cryoSPARC's.
CRITERIA: dict[str, CriterionSpec | None] = {
    "random": None,
    "ncc_score": CriterionSpec(
        cs_field="pick_stats/ncc_score",
        star_label="rlnAutopickFigureOfMerit",
        higher_is_worse=False,
    ),
    "error3d": CriterionSpec(
        cs_field="alignments3D/error", star_label=None, higher_is_worse=True
    ),
    "alpha": CriterionSpec(
        cs_field="alignments3D/alpha", star_label=None, higher_is_worse=False
    ),
    "error2d": CriterionSpec(
        cs_field="alignments2D/error", star_label=None, higher_is_worse=True
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceResult:
    """``keep`` ``(n,)`` bool, ``bin_index`` ``(n,)``, bin ``centres``
    ``(n_bins, 3)``, ``counts_before`` / ``counts_after`` ``(n_bins,)``."""

    keep: NDArray[np.bool_]
    bin_index: NDArray[np.int64]
    centres: NDArray[np.float64]
    counts_before: NDArray[np.int64]
    counts_after: NDArray[np.int64]
    threshold_count: int

    @property
    def n_excluded(self) -> int:
        return int(np.count_nonzero(~self.keep))


def fibonacci_sphere(n_bins: int) -> NDArray[np.float64]:
    """``n_bins`` unit vectors ``(n_bins, 3)`` on a Fibonacci (golden-angle) spiral."""
    if n_bins < 1:
        raise StageInputError("<argument>", "n_bins", n_bins, "must be >= 1")
    i = np.arange(n_bins, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n_bins
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def assign_bins(directions: np.ndarray, centres: np.ndarray) -> NDArray[np.int64]:
    """Index of the nearest centre (largest dot product) for each direction ``(n, 3)``."""
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != 3:
        raise StageInputError("<array>", "directions", d.shape, "must be (n, 3)")
    c = np.ascontiguousarray(centres, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3 or not len(c):
        raise StageInputError("<array>", "centres", c.shape, "must be (m >= 1, 3)")
    out = np.empty(len(d), dtype=np.int64)
    nearest_centres(np.ascontiguousarray(d), c, out)
    return out


def _threshold(counts: np.ndarray, percentile: float) -> int:
    populated = counts[counts > 0]
    if not len(populated):
        return 0
    return int(np.percentile(populated, percentile, method="lower"))


def rebalance_orientations(
    directions: np.ndarray,
    *,
    n_bins: int = DEFAULT_BINS,
    percentile: float = DEFAULT_PERCENTILE,
    badness: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> RebalanceResult:
    """Which particles to keep (see the module's definition).

    ``directions`` ``(n, 3)`` unit viewing directions; ``badness`` ``(n,)``, higher
    removed first (None: a random order from ``rng``, which is then required).
    """
    if not 0.0 <= percentile <= 100.0:
        raise StageInputError(
            "<argument>", "percentile", percentile, "must be in [0, 100]"
        )
    n = len(directions)
    if badness is None:
        if rng is None:
            raise StageInputError("<argument>", "rng", None, "random needs a generator")
        order_key = rng.random(n)
    else:
        order_key = np.asarray(badness, dtype=np.float64)
        if order_key.shape != (n,):
            raise StageInputError(
                "<array>", "badness", order_key.shape, f"must be ({n},)"
            )
        order_key = np.where(np.isnan(order_key), np.inf, order_key)
    centres = fibonacci_sphere(n_bins)
    bins = assign_bins(directions, centres)
    counts = np.bincount(bins, minlength=n_bins).astype(np.int64)
    threshold = _threshold(counts, percentile)
    excess = np.clip(counts - threshold, 0, None)
    crowded = np.flatnonzero(excess[bins] > 0)  # only these rows need an order
    order = crowded[np.lexsort((-order_key[crowded], bins[crowded]))]
    sorted_bins = bins[order]  # by bin, worst first, then row order
    crowded_counts = np.where(excess > 0, counts, 0)
    starts = np.cumsum(crowded_counts) - crowded_counts
    rank = np.arange(len(order)) - starts[sorted_bins]
    keep = np.ones(n, dtype=bool)
    keep[order[rank < excess[sorted_bins]]] = False
    after = np.bincount(bins[keep], minlength=n_bins).astype(np.int64)
    return RebalanceResult(
        keep=keep,
        bin_index=bins,
        centres=centres,
        counts_before=counts,
        counts_after=after,
        threshold_count=threshold,
    )
