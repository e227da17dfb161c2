"""The guard's rules: the count and the agreement with the blob picker's better
half (the service test in test_template_loop.py runs it end to end with a real
ledger)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from livestream.config import TemplatesSection
from livestream.templates.guard import (
    GuardVerdict,
    blob_recovered,
    judge_trial,
    share_upper_bound,
)
from pipelines.picking.picks import Picks

PIXEL_A = 2.0
DIAMETER_A = 100.0  # a match within a quarter: 25 A, 12.5 px


def _picks(xy: np.ndarray, score: np.ndarray) -> Picks:
    n = len(xy)
    return Picks(
        x_px=xy[:, 0].astype(np.float64),
        y_px=xy[:, 1].astype(np.float64),
        score=score.astype(np.float64),
        power=np.ones(n),
        diameter_a=np.full(n, DIAMETER_A),
        pixel_size_a=PIXEL_A,
        shape=(1024, 1024),
    )


def _grid(n: int) -> np.ndarray:
    """``n`` places 100 px apart (no two within a match of each other)."""
    rows, cols = np.divmod(np.arange(n), 8)
    return np.column_stack([100.0 + 100.0 * cols, 100.0 + 100.0 * rows])


@pytest.mark.parametrize(
    ("blob", "templates", "accepted"),
    [
        (4620, 72, False),  # EMPIAR-10017's first set with the decoy threshold
        (2249, 1969, True),  # the same set with the per-micrograph threshold
        (100, 49, False),
        (100, 50, True),  # at the ratio: used
        (0, 0, True),  # nothing to compare: used
    ],
)
def test_a_set_is_used_when_it_picks_at_least_the_ratio_of_blob(
    blob: int, templates: int, accepted: bool
) -> None:
    verdict = GuardVerdict(
        exposures=3,
        blob_picks=blob,
        template_picks=templates,
        min_pick_ratio=TemplatesSection().min_pick_ratio,
    )
    assert verdict.accepted is accepted
    record = verdict.as_json()
    assert record["accepted"] is accepted
    assert (record["blob_picks"], record["template_picks"]) == (blob, templates)


@pytest.mark.parametrize(
    ("recovered", "n", "accepted"),
    [
        # EMPIAR-10017's loop set on its last three micrographs (of six)
        (0.74, 1125, False),  # whitened NCC: recall 0.57 (blob 0.80)
        (0.88, 1125, True),  # the unwhitened correlation: 0.79 (blob 0.80)
        (0.80, 221, False),  # ours, label classes, correlation: 0.78 / 0.37
        (0.93, 100, True),  # the demo's set 1: 0.97 / 0.91 (blob 0.93 / 0.89)
        (16 / 19, 19, True),  # 16 of 19: not below 0.85 with 95 % confidence
        (0.0, 0, True),  # no blob pick: nothing to compare
    ],
)
def test_a_set_is_used_only_when_it_finds_the_blob_pickers_better_half(
    recovered: float, n: int, accepted: bool
) -> None:
    verdict = GuardVerdict(
        exposures=3,
        blob_picks=2249,
        template_picks=2249,
        min_pick_ratio=TemplatesSection().min_pick_ratio,
        blob_recovered=recovered,
        blob_better_half=n,
        min_blob_recovered=TemplatesSection().min_blob_recovered,
    )
    assert verdict.accepted is accepted
    assert verdict.as_json()["blob_recovered"] == pytest.approx(recovered, abs=1e-4)


def test_blob_recovered_counts_the_better_half_within_a_quarter_diameter() -> None:
    xy = _grid(40)
    score = np.arange(40.0)  # the better half: indices 20..39
    blob = _picks(xy, score)
    tolerance_px = 0.25 * DIAMETER_A / PIXEL_A
    # the templates find the better half, 10 px away (inside 12.5 px)
    found = _picks(xy[20:] + np.array([6.0, 8.0]), np.ones(20))
    assert blob_recovered(blob, found, tolerance_px) == (1.0, 20)
    # the worse half only: none of the better half
    assert blob_recovered(blob, _picks(xy[:20], np.ones(20)), tolerance_px)[0] == 0.0
    # half of the better half, and the rest 15 px away (outside)
    half = np.concatenate([xy[20:30], xy[30:] + np.array([9.0, 12.0])])
    assert blob_recovered(blob, _picks(half, np.ones(20)), tolerance_px)[0] == 0.5
    assert blob_recovered(blob, _picks(np.zeros((0, 2)), np.zeros(0)), 5.0) == (
        0.0,
        20,
    )


def test_the_verdict_pools_the_agreement_over_the_exposures() -> None:
    a, b = _grid(40), _grid(40)
    score = np.arange(40.0)
    found = [
        (_picks(a, score), _picks(a[20:], np.ones(20))),  # all 20 of the half
        (_picks(b[:20], score[:20]), _picks(b[:2], np.ones(2))),  # none of 10
    ]
    verdict = judge_trial(
        found, diameter_a=DIAMETER_A, min_pick_ratio=0.5, min_blob_recovered=0.85
    )
    assert (verdict.exposures, verdict.blob_picks, verdict.template_picks) == (
        2,
        60,
        22,
    )
    assert verdict.blob_recovered == pytest.approx(20 / 30)
    assert verdict.blob_better_half == 30
    assert not verdict.accepted
    assert verdict.as_json()["accepted"] is False


def test_the_upper_bound_narrows_with_the_count() -> None:
    assert share_upper_bound(0.5, 0) == 1.0
    bounds = [share_upper_bound(0.8, n) for n in (10, 100, 1000, 10000)]
    assert all(a > b > 0.8 for a, b in itertools.pairwise(bounds))
    assert bounds[-1] == pytest.approx(0.8, abs=0.01)
    assert share_upper_bound(1.0, 5) == 1.0
