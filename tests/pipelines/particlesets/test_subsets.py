"""Random subsets and half sets: reproducible, balanced, rows unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import StageInputError
from pipelines.particlesets import random_subset, split_halves


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@a.mrcs" for i in range(1, n + 1)],
            "rlnAngleRot": [f"{i * 0.5:.2f}" for i in range(n)],
        }
    )


def test_subset_is_reproducible_ordered_and_unchanged() -> None:
    table = _frame(1000)
    a = random_subset(table, 100, seed=3)
    b = random_subset(table, 100, seed=3)
    c = random_subset(table, 100, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    index = a["rlnImageName"].str[:6].astype(int).to_numpy() - 1
    assert len(set(index)) == 100
    assert np.all(np.diff(index) > 0)
    pd.testing.assert_frame_equal(a, table.iloc[index].reset_index(drop=True))
    with pytest.raises(StageInputError, match="between 1 and the 1000 rows"):
        random_subset(table, 1001, seed=0)


@pytest.mark.parametrize("n", [2, 7, 1000])
def test_halves_balanced_and_reproducible(n: int) -> None:
    table = _frame(n)
    split = split_halves(table, seed=11)
    counts = split["rlnRandomSubset"].value_counts().to_dict()
    assert counts == {1: (n + 1) // 2, 2: n // 2}
    pd.testing.assert_frame_equal(split, split_halves(table, seed=11))
    pd.testing.assert_frame_equal(split.drop(columns="rlnRandomSubset"), table)
    if n == 1000:  # a different seed, a different split; not by parity
        other = split_halves(table, seed=12)["rlnRandomSubset"]
        assert (other != split["rlnRandomSubset"]).any()
        parity = np.where(np.arange(n) % 2 == 0, 1, 2)
        assert (split["rlnRandomSubset"].to_numpy() != parity).any()
