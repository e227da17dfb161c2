"""Random subsets and half sets of a particle table, reproducible from a seed.

Both draw from ``numpy.random.default_rng(seed)`` (PCG64), so the same table, size
and seed give the same rows on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import StageInputError

__all__ = ["random_subset", "split_halves"]


def random_subset(
    table: pd.DataFrame, n: int, *, seed: int, source: Path = Path("<table>")
) -> pd.DataFrame:
    """``n`` rows drawn without replacement, kept in their original order."""
    if not 0 < n <= len(table):
        raise StageInputError(
            source, "n", n, f"must be between 1 and the {len(table)} rows"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(table), size=n, replace=False))
    return table.iloc[chosen].reset_index(drop=True)


def split_halves(
    table: pd.DataFrame, *, seed: int, source: Path = Path("<table>")
) -> pd.DataFrame:
    """``table`` with ``rlnRandomSubset`` set to 1 or 2 at random, balanced: the
    halves differ by at most one row (half 1 gets the odd one)."""
    n = len(table)
    if n < 2:
        raise StageInputError(source, "rows", n, "need at least 2 to split")
    rng = np.random.default_rng(seed)
    subset = np.full(n, 2, dtype=np.int64)
    subset[rng.permutation(n)[: (n + 1) // 2]] = 1
    out = table.copy()
    out["rlnRandomSubset"] = subset
    return out
