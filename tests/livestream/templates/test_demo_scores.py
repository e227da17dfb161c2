"""The demo's scoring of the template loop: pick matching and selection flips."""

from __future__ import annotations

import numpy as np
import pytest

from livestream.demo.accuracy import match_picks
from livestream.demo.command import selection_flip_rate


def test_match_picks_is_one_to_one_within_the_tolerance() -> None:
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    # two picks near the first particle, one near the second, one far from all
    picks = np.array([[11.0, 10.0], [13.0, 10.0], [52.0, 50.0], [200.0, 200.0]])
    score = match_picks(truth, picks, tolerance_px=5.0)
    assert (score.n_true, score.n_picks, score.n_matched) == (3, 4, 2)
    assert score.recall == pytest.approx(2 / 3)
    assert score.precision == pytest.approx(0.5)
    assert match_picks(truth, picks[:0], tolerance_px=5.0).n_matched == 0
    assert match_picks(truth, picks, tolerance_px=0.5).n_matched == 0


def test_selection_flip_rate_counts_changes_of_classes_populated_in_both() -> None:
    snapshots = [
        ([1], [10, 10, 0, 5]),
        ([1, 2], [10, 10, 4, 5]),  # class 2 accepted (a flip, not a drop)
        ([2], [20, 10, 4, 0]),  # class 1 dropped; class 4 empty: not counted
    ]
    by_class, by_particle, drops = selection_flip_rate(snapshots)
    # pair 1: classes 1, 2, 4 in both, 1 change; pair 2: classes 1, 2, 3, 1 change
    assert by_class == pytest.approx(2 / 6)
    assert by_particle == pytest.approx((10 + 20) / (25 + 34))
    assert drops == pytest.approx(1 / 6)
