"""numba kernels of the pickers (private: call them through :mod:`pipelines.picking.picks`)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def greedy_keep_kernel(n: int, starts: np.ndarray, worse: np.ndarray) -> np.ndarray:
    """Greedy suppression over conflicts given in CSR form.

    Picks are numbered in decreasing score; ``worse[starts[i]:starts[i + 1]]`` are the
    lower-scoring picks that conflict with pick ``i``.  A pick that survives removes
    all of its worse neighbours.
    """
    keep = np.ones(n, dtype=np.bool_)
    for i in range(n):
        if keep[i]:
            for j in range(starts[i], starts[i + 1]):
                keep[worse[j]] = False
    return keep
