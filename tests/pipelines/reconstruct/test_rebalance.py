"""Rebalance Orientations against its definition on constructed distributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.exchange import read_particle_set
from pipelines.reconstruct.rebalance import (
    assign_bins,
    fibonacci_sphere,
    rebalance_orientations,
)
from pipelines.reconstruct.rebalance_plots import write_rebalance_plots

N_BINS = 40


def _constructed(
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directions that sit on known bins (jittered well inside them), with the
    known counts per bin; returns (directions, bin of each, counts)."""
    counts = np.zeros(N_BINS, dtype=np.int64)
    counts[:10] = [50, 40, 30, 20, 12, 10, 9, 8, 3, 1]
    counts[10:20] = 5
    bins = np.repeat(np.arange(N_BINS), counts)
    rng.shuffle(bins)
    centres = fibonacci_sphere(N_BINS)
    jitter = rng.normal(scale=0.01, size=(len(bins), 3))
    directions = centres[bins] + jitter
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions, bins, counts


def test_fibonacci_bins_are_unit_and_near_equal_area(rng: np.random.Generator) -> None:
    centres = fibonacci_sphere(200)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0)
    uniform = rng.normal(size=(200_000, 3))
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    counts = np.bincount(assign_bins(uniform, centres), minlength=200)
    assert counts.min() > 0.85 * 1000
    assert counts.max() < 1.15 * 1000


def test_assignment_is_the_nearest_bin(rng: np.random.Generator) -> None:
    centres = fibonacci_sphere(77)
    d = rng.normal(size=(5000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    distance = np.linalg.norm(d[:, None, :] - centres[None], axis=2)
    np.testing.assert_array_equal(assign_bins(d, centres), distance.argmin(axis=1))


def test_a_particles_bin_does_not_depend_on_the_rest(
    rng: np.random.Generator,
) -> None:
    """What makes a second run exact: the bin of a row is computed from that row
    alone (a subset lands in the same bins), near-ties included."""
    centres = fibonacci_sphere(300)
    d = rng.normal(size=(30_000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    midpoints = centres[:200] + centres[rng.integers(0, 300, 200)]  # near-ties
    d[:200] = midpoints / np.linalg.norm(midpoints, axis=1, keepdims=True)
    full = assign_bins(d, centres)
    for keep in (rng.random(len(d)) < 0.37, np.arange(len(d)) % 7 == 3):
        np.testing.assert_array_equal(assign_bins(d[keep], centres), full[keep])


def test_known_counts_give_known_exclusions(rng: np.random.Generator) -> None:
    directions, bins, counts = _constructed(rng)
    score = rng.normal(size=len(bins))  # ncc_score: the lowest go first
    result = rebalance_orientations(
        directions, n_bins=N_BINS, percentile=75.0, badness=-score
    )
    np.testing.assert_array_equal(result.bin_index, bins)
    np.testing.assert_array_equal(result.counts_before, counts)
    populated = np.sort(counts[counts > 0])  # 20 bins
    expected_threshold = populated[int(np.floor(0.75 * (len(populated) - 1)))]
    assert result.threshold_count == expected_threshold == 10
    np.testing.assert_array_equal(result.counts_after, np.minimum(counts, 10))
    assert result.n_excluded == 40 + 30 + 20 + 10 + 2
    for b in range(N_BINS):  # in each bin the lowest scores went
        members = np.flatnonzero(bins == b)
        removed = members[~result.keep[members]]
        kept = members[result.keep[members]]
        if len(removed):
            assert score[removed].max() <= score[kept].min()


def test_second_run_excludes_nothing(rng: np.random.Generator) -> None:
    directions = rng.normal(size=(20_000, 3)) * [1.0, 1.0, 3.0]  # crowded poles
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    for percentile in (50.0, 80.0, 97.5):
        first = rebalance_orientations(
            directions,
            n_bins=150,
            percentile=percentile,
            rng=np.random.default_rng(3),
        )
        assert first.n_excluded > 0
        assert first.counts_after.max() == first.threshold_count
        second = rebalance_orientations(
            directions[first.keep],
            n_bins=150,
            percentile=percentile,
            rng=np.random.default_rng(3),
        )
        assert second.n_excluded == 0
        assert second.threshold_count == first.threshold_count


def test_random_criterion_is_seeded_and_nan_is_worst(rng: np.random.Generator) -> None:
    directions, bins, _ = _constructed(rng)
    runs = [
        rebalance_orientations(
            directions, n_bins=N_BINS, percentile=75, rng=np.random.default_rng(s)
        ).keep
        for s in (1, 1, 2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert (runs[0] != runs[2]).any()
    badness = np.zeros(len(bins))
    members = np.flatnonzero(bins == 3)  # 20 particles, 10 to go
    badness[members[-10:]] = np.nan
    keep = rebalance_orientations(
        directions, n_bins=N_BINS, percentile=75, badness=badness
    ).keep
    assert keep[members[:10]].all()
    assert not keep[members[-10:]].any()
    with pytest.raises(StageInputError, match="rng"):
        rebalance_orientations(directions, n_bins=N_BINS)
    with pytest.raises(StageInputError, match="percentile"):
        rebalance_orientations(directions, percentile=120, badness=badness)


def test_real_cs_rebalance_writes_cs_and_plots(
    shared_data: Path, tmp_path: Path
) -> None:
    particles = read_particle_set(
        shared_data / "real/cryosparc_P12_J24_001_particles.cs"
    )
    directions = particles.viewing_directions()
    result = rebalance_orientations(
        directions, n_bins=100, percentile=80, badness=particles.badness("error3d")
    )
    kept = read_particle_set(particles.subset(result.keep).write(tmp_path / "r.cs"))
    assert len(kept) == 2019 - result.n_excluded
    assert kept.dataset is not None
    assert particles.dataset is not None
    assert kept.dataset.fields() == particles.dataset.fields()
    np.testing.assert_array_equal(
        kept.dataset["uid"], particles.dataset["uid"][result.keep]
    )
    error = np.asarray(particles.dataset["alignments3D/error"])
    for b in np.flatnonzero(result.counts_before > result.threshold_count):
        members = result.bin_index == b
        assert error[members & ~result.keep].min() >= error[members & result.keep].max()
    with pytest.raises(StageInputError, match="pick_stats/ncc_score"):
        particles.badness("ncc_score")
    plots = write_rebalance_plots(tmp_path, directions, result)
    for path in plots.values():
        assert path.read_bytes()[:4] == b"\x89PNG"
