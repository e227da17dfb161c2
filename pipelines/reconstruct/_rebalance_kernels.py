"""numba kernel of Rebalance Orientations (private: use :mod:`.rebalance`).

:func:`nearest_centres`: for each unit direction, the index of the centre with the
largest dot product, one particle per iteration of a parallel loop.  Each particle's
three products are summed in the same order whatever else is in the set, so a
particle lands in the same bin in every run (a BLAS product may round differently
with the block it falls in, which would move near-tie particles between runs and
break the idempotence of the rebalance); nothing of size particles x bins is held.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def nearest_centres(  # pragma: no cover - compiled
    directions: np.ndarray, centres: np.ndarray, out: np.ndarray
) -> None:
    """``out[i]`` = argmax over ``j`` of ``directions[i] . centres[j]`` (first on ties).

    ``directions`` ``(n, 3)`` and ``centres`` ``(m, 3)`` float64 C-contiguous,
    ``out`` ``(n,)`` int64.
    """
    n = directions.shape[0]
    m = centres.shape[0]
    for i in prange(n):
        x = directions[i, 0]
        y = directions[i, 1]
        z = directions[i, 2]
        best = -np.inf
        arg = 0
        for j in range(m):
            dot = x * centres[j, 0] + y * centres[j, 1] + z * centres[j, 2]
            if dot > best:
                best = dot
                arg = j
        out[i] = arg
