"""Pick records: non-maximum suppression, thresholds after picking, STAR round trip,
diameter suggestion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import starfile
from scipy.spatial.distance import pdist

from pipelines.picking.picks import (
    Picks,
    filter_picks,
    picks_to_dicts,
    read_picks_star,
    suggest_diameter_a,
    suppress_non_maxima,
    write_picks_star,
)


def _random_picks(
    rng: np.random.Generator, n: int, *, diameter_a: float = 150.0
) -> Picks:
    return Picks(
        x_px=rng.uniform(0, 1000, n),
        y_px=rng.uniform(0, 800, n),
        score=rng.uniform(0, 1, n),
        power=rng.uniform(0.5, 3.0, n),
        diameter_a=np.full(n, diameter_a),
        pixel_size_a=1.5,
        shape=(800, 1000),
    )


def _brute_force_nms(picks: Picks, radius: float) -> set[int]:
    order = np.argsort(-picks.score, kind="stable")
    kept: list[int] = []
    for i in order:
        if all(
            np.hypot(picks.x_px[i] - picks.x_px[j], picks.y_px[i] - picks.y_px[j])
            > radius
            for j in kept
        ):
            kept.append(int(i))
    return {(round(picks.x_px[i], 9), round(picks.y_px[i], 9)) for i in kept}


def test_nms_matches_brute_force_greedy(rng: np.random.Generator) -> None:
    picks = _random_picks(rng, 400)
    kept = suppress_non_maxima(picks, 40.0)
    assert {
        (round(x, 9), round(y, 9)) for x, y in zip(kept.x_px, kept.y_px, strict=True)
    } == (_brute_force_nms(picks, 40.0))
    assert pdist(np.column_stack([kept.x_px, kept.y_px])).min() > 40.0
    assert np.all(np.diff(kept.score) <= 0)


def test_filter_after_picking_is_monotonic(rng: np.random.Generator) -> None:
    picks = _random_picks(rng, 300)
    loose = filter_picks(picks, min_score=0.2)
    strict = filter_picks(picks, min_score=0.6, power_range=(1.0, 2.0))
    assert len(loose) == int((picks.score >= 0.2).sum())
    assert np.all(strict.score >= 0.6)
    assert np.all((strict.power >= 1.0) & (strict.power <= 2.0))
    assert len(strict) < len(loose) < len(picks)
    edged = filter_picks(picks, edge_px=100)
    assert np.all((edged.x_px >= 100) & (edged.x_px <= 899))
    assert np.all((edged.y_px >= 100) & (edged.y_px <= 699))


def test_star_round_trip_with_relion_labels(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    picks = _random_picks(rng, 25)
    path = write_picks_star(tmp_path / "mic_autopick.star", picks)
    frame = starfile.read(path)
    assert {"rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"} <= set(
        frame.columns
    )
    back = read_picks_star(path, pixel_size_a=1.5, shape=(800, 1000))
    np.testing.assert_allclose(back.x_px, picks.x_px, atol=1e-5)
    np.testing.assert_allclose(back.y_px, picks.y_px, atol=1e-5)
    np.testing.assert_allclose(back.score, picks.score, atol=1e-5)
    np.testing.assert_allclose(back.power, picks.power, atol=1e-5)


def test_dicts_are_in_micrograph_pixels(rng: np.random.Generator) -> None:
    picks = _random_picks(rng, 3)
    rows = picks_to_dicts(picks)
    assert [r["x_px"] for r in rows] == picks.x_px.tolist()
    assert [r["y_px"] for r in rows] == picks.y_px.tolist()
    assert set(rows[0]) == {"x_px", "y_px", "score", "power", "diameter_a"}


def test_suggested_diameter_follows_best_picks(rng: np.random.Generator) -> None:
    picks = _random_picks(rng, 30, diameter_a=180.0)
    diam = picks.diameter_a.copy()
    diam[np.argsort(picks.score)[:10]] = 400.0  # the worst picks matched big blobs
    picks = Picks(
        x_px=np.arange(30) * 200.0,  # far apart: spacing does not bound it
        y_px=np.zeros(30),
        score=picks.score,
        power=picks.power,
        diameter_a=diam,
        pixel_size_a=1.5,
        shape=(800, 7000),
    )
    assert suggest_diameter_a([picks]) == 180.0
    crowded = Picks(
        x_px=np.arange(30) * 50.0,  # 75 Å apart: particles cannot be 180 Å wide
        y_px=np.zeros(30),
        score=picks.score,
        power=picks.power,
        diameter_a=diam,
        pixel_size_a=1.5,
        shape=(800, 7000),
    )
    assert suggest_diameter_a(crowded) == 75.0
