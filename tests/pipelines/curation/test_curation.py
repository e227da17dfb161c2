"""Exposure curation: each rule rejects with a reason naming figure, value, limit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipelines.curation.rules import (
    CurationThresholds,
    ExposureFigures,
    curate,
    curate_table,
    rejection_counts,
)

GOOD = ExposureFigures(
    ctf_resolution_a=3.5,
    defocus_u_a=15500.0,
    defocus_v_a=15000.0,
    total_motion_a=20.0,
    early_motion_a=5.0,
    ctf_figure_of_merit=0.2,
    relative_ice_thickness=1.05,
)


def test_good_exposure_is_accepted() -> None:
    decision = curate(GOOD, CurationThresholds())
    assert decision.accepted
    assert decision.reasons == ()


@pytest.mark.parametrize(
    ("change", "figure", "limit"),
    [
        ({"ctf_resolution_a": 7.25}, "ctf_resolution_a=7.25", "max 6"),
        (
            {"defocus_u_a": 1000.0, "defocus_v_a": 1000.0},
            "defocus_mean_a=1000",
            "min 3000",
        ),
        ({"defocus_u_a": 5e4, "defocus_v_a": 5e4}, "defocus_mean_a=5e+04", "max 4e+04"),
        ({"defocus_u_a": 17000.0}, "astigmatism_a=2000", "max 1000"),
        ({"total_motion_a": 150.0}, "total_motion_a=150", "max 100"),
        ({"early_motion_a": 45.0}, "early_motion_a=45", "max 30"),
        ({"ctf_figure_of_merit": 0.01}, "ctf_figure_of_merit=0.01", "min 0.02"),
        ({"relative_ice_thickness": 2.0}, "relative_ice_thickness=2", "max 1.5"),
        ({"ctf_resolution_a": float("nan")}, "ctf_resolution_a=nan", "max 6"),
    ],
)
def test_each_rule_rejects_with_its_reason(
    change: dict[str, float], figure: str, limit: str
) -> None:
    decision = curate(dataclasses.replace(GOOD, **change), CurationThresholds())
    assert not decision.accepted
    assert len(decision.reasons) == 1
    assert figure in decision.reasons[0]
    assert limit in decision.reasons[0]


def test_missing_ice_proxy_and_disabled_rule_are_not_checked() -> None:
    figures = dataclasses.replace(GOOD, relative_ice_thickness=None, ctf_resolution_a=9)
    assert not curate(figures, CurationThresholds()).accepted
    relaxed = CurationThresholds(max_ctf_resolution_a=None)
    assert curate(figures, relaxed).accepted


def _table(rng: np.random.Generator, n: int) -> pd.DataFrame:
    u = rng.uniform(2000, 45000, n)
    frame = pd.DataFrame(
        {
            "ctf_resolution_a": rng.uniform(2.5, 9.0, n),
            "defocus_u_a": u,
            "defocus_v_a": u - rng.uniform(0, 1500, n),
            "total_motion_a": rng.uniform(5, 150, n),
            "early_motion_a": rng.uniform(1, 40, n),
            "ctf_figure_of_merit": rng.uniform(0.0, 0.3, n),
            "relative_ice_thickness": rng.uniform(0.9, 2.0, n),
        }
    )
    frame.loc[::7, "relative_ice_thickness"] = np.nan  # not measured
    frame.loc[3, "ctf_resolution_a"] = np.nan  # failed fit
    return frame


def test_table_matches_per_exposure_decisions(rng: np.random.Generator) -> None:
    table = _table(rng, 200)
    thresholds = CurationThresholds(max_ctf_resolution_a=5.0, max_total_motion_a=80)
    decisions = curate_table(table, thresholds)
    for row, (_, record) in enumerate(table.iterrows()):
        values = record.to_dict()
        if np.isnan(values["relative_ice_thickness"]):
            values["relative_ice_thickness"] = None
        one = curate(ExposureFigures(**values), thresholds)
        assert decisions["accepted"].iloc[row] == one.accepted
        assert decisions["reasons"].iloc[row] == one.reasons
    assert not decisions["accepted"].iloc[3]


def test_changed_thresholds_reevaluate_past_exposures(rng: np.random.Generator) -> None:
    table = _table(rng, 300)
    strict = curate_table(table, CurationThresholds(max_ctf_resolution_a=4.0))
    loose = curate_table(table, CurationThresholds(max_ctf_resolution_a=8.0))
    counts_strict = rejection_counts(strict)
    counts_loose = rejection_counts(loose)
    finite = table["ctf_resolution_a"].dropna()
    assert counts_strict["max_ctf_resolution_a"] == int((finite > 4.0).sum()) + 1
    assert counts_loose["max_ctf_resolution_a"] == int((finite > 8.0).sum()) + 1
    assert strict["accepted"].sum() <= loose["accepted"].sum()
    # every exposure accepted under strict thresholds stays accepted under loose ones
    assert not (strict["accepted"] & ~loose["accepted"]).any()


def test_table_without_a_figure_column_names_it() -> None:
    table = pd.DataFrame({"ctf_resolution_a": [3.0]})
    with pytest.raises(KeyError, match="defocus_u_a"):
        curate_table(table, CurationThresholds())
