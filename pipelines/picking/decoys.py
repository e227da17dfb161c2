"""Target-decoy thresholds for correlation pickers.

A template picker's best *anti*-correlation map (the templates with inverted
contrast, which no particle matches) has noise peaks like those of the correlation
map; counting its peaks above a threshold estimates how many of the picks above the
same threshold are noise, as decoy databases do for peptide identification.  Decoy
peaks next to a strong pick are that particle's CTF side lobes and are set aside,
with the area they cover.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.picking.blob import find_peaks

__all__ = ["decoy_threshold"]


def decoy_threshold(
    ncc: np.ndarray,
    anti: np.ndarray,
    *,
    floor: float,
    window_px: int,
    exclusion_px: float,
    rate: float,
) -> float:
    """Lowest NCC at which the estimated noise picks are at most ``rate`` of all.

    Decoys (peaks of the anti-correlation map) within ``exclusion_px`` (a square) of a
    target peak at least as high as the threshold are that particle's CTF side lobes
    and do not count; the decoy density in the remaining area (at least a fifth of
    the image) estimates the number of noise peaks among the targets.
    """
    t_rows, t_cols = find_peaks(ncc, threshold=floor, window_px=window_px)
    d_rows, d_cols = find_peaks(anti, threshold=floor, window_px=window_px)
    if len(t_rows) == 0:
        return floor
    targets = np.sort(ncc[t_rows, t_cols])[::-1]
    sparse = np.full(ncc.shape, -np.inf, dtype=np.float32)
    sparse[t_rows, t_cols] = ncc[t_rows, t_cols]
    size = 2 * int(np.ceil(exclusion_px)) + 1
    covered = ndimage.maximum_filter(sparse, size=size, mode="constant", cval=-np.inf)
    # free area at threshold t: pixels whose best nearby target is below t
    free = np.searchsorted(np.sort(covered.ravel()), targets, side="left")
    decoys = anti[d_rows, d_cols]
    nearby = covered[d_rows, d_cols]
    # decoy j counts at threshold targets[k] when decoys_j >= targets[k] > nearby_j
    n = len(targets)
    k_min = np.searchsorted(-targets, -decoys, side="left")
    k_max = np.searchsorted(-targets, -nearby, side="left")
    ok = k_max > k_min
    steps = np.zeros(n + 1)
    np.add.at(steps, k_min[ok], 1.0)
    np.add.at(steps, k_max[ok], -1.0)
    counted = np.cumsum(steps[:n])
    n_targets = np.arange(1, n + 1)
    estimated_false = counted * ncc.size / np.maximum(free, 1)
    eligible = free >= 0.2 * ncc.size
    passing = np.flatnonzero(eligible & (estimated_false <= rate * n_targets))
    if len(passing) == 0:
        return float(targets[0]) + 1e-6  # nothing passes
    return float(targets[passing[-1]])
