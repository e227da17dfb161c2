"""Coarse-then-fine pose search: same MAP poses as the exhaustive search on
well-determined particles, the parts checked against their definitions."""

from __future__ import annotations

import dataclasses
import json
from types import ModuleType

import numpy as np
import pytest

from pipelines.class2d import Class2dConfig, initialise_state
from pipelines.class2d.expectation import expect_particles
from pipelines.class2d.likelihood import compute_pose_weights, score_poses
from pipelines.class2d.pose_blocks import FineBlocks, score_listed_poses
from pipelines.class2d.pose_grid import build_coarse_grid
from pipelines.class2d.pose_search import (
    score_with_priors,
    search_coarse_fine,
    select_coarse_poses,
)
from pipelines.class2d.sampling import build_sampling
from pipelines.class2d.state import PoseSearch
from pipelines.errors import StageInputError
from pipelines.simulate.particle_sets import simulate_views
from pipelines.simulate.volumes import phantom_volume


def _complex(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(
        np.complex64
    )


def _random_problem(rng: np.random.Generator, n_class: int = 2):  # type: ignore[no-untyped-def]
    sampling = build_sampling(16, psi_step_deg=60, offset_range_px=2.0)
    n, p = 3, sampling.n_pixels
    x = _complex(rng, (n, p))
    refs = _complex(rng, (n_class * sampling.n_psi, p))
    ctf = rng.uniform(-1, 1, (n, p)).astype(np.float32)
    inv_sigma2 = rng.uniform(0.5, 2, p).astype(np.float32)
    return sampling, x, refs, ctf, inv_sigma2


def test_coarse_fine_finds_the_exhaustive_map_poses_and_the_truth() -> None:
    """References = the true views: both searches give the same MAP class, psi and
    shift, and those are the simulated ones."""
    rng = np.random.default_rng(5)
    volume = phantom_volume(32, 4.0, rng)
    data = simulate_views(
        volume, n_views=3, n_particles=120, pixel_size_a=4.0, snr=0.5, rng=rng
    )
    config = Class2dConfig(
        n_classes=3,
        box_px=32,
        pixel_size_a=4.0,
        psi_step_deg=6.0,
        offset_range_px=3.0,
        pose_search="exhaustive",
    )
    state = initialise_state(config, data.particles, rng)
    refs = (data.views / data.views.std()).astype(np.float32)
    indices = np.arange(data.particles.n_particles)
    results = {}
    for search in PoseSearch:
        results[search] = expect_particles(
            dataclasses.replace(config, pose_search=search),
            refs,
            state.noise_sigma2,
            np.full(3, 1 / 3),
            data.particles,
            indices,
        )
    full, fast = results[PoseSearch.EXHAUSTIVE], results[PoseSearch.COARSE_FINE]
    sure = full.max_probability > 0.5
    print(
        f"well-determined {sure.mean():.2f}; coarse poses kept {fast.coarse_kept:.1f}, "
        f"fine scored {fast.fine_evaluated:.1f} of {full.fine_evaluated:.0f}; "
        f"products {fast.product_macs / full.product_macs:.3f} of exhaustive"
    )
    assert sure.mean() > 0.5
    np.testing.assert_array_equal(fast.best_class[sure], full.best_class[sure])
    np.testing.assert_array_equal(fast.best_psi_deg[sure], full.best_psi_deg[sure])
    np.testing.assert_array_equal(fast.best_shift_px[sure], full.best_shift_px[sure])
    assert np.mean(fast.best_class == full.best_class) >= 0.98
    # against the truth: class = view, psi within a step, shift within 1 px
    assert np.mean(fast.best_class == data.view_index) >= 0.95
    dpsi = (fast.best_psi_deg - data.psi_deg + 180.0) % 360.0 - 180.0
    assert np.mean(np.abs(dpsi) <= 6.0) >= 0.9
    assert np.mean(np.all(np.abs(fast.best_shift_px - data.shift_px) <= 1.0, 1)) > 0.9
    rel = np.linalg.norm(fast.numerator - full.numerator) / np.linalg.norm(
        full.numerator
    )
    assert rel < 0.02
    assert fast.product_macs < 0.5 * full.product_macs


def test_select_coarse_poses_keeps_the_mass_in_order(rng: np.random.Generator) -> None:
    score = rng.normal(scale=3.0, size=(5, 400))
    score[0] = 0.0  # flat: needs nearly everything
    score[1, 7] = 50.0  # one certain pose
    b, e = select_coarse_poses(score, 0.999)
    prob = np.exp(score - score.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    assert np.all(np.diff(b) >= 0)
    for row in range(5):
        kept = np.zeros(400, dtype=bool)
        kept[e[b == row]] = True
        assert prob[row, kept].sum() >= 0.999 - 1e-9
        if (~kept).any():  # dropped entries are all less probable than kept ones
            assert prob[row, ~kept].max() <= prob[row, kept].min()
        minimal = np.searchsorted(np.cumsum(np.sort(prob[row])[::-1]), 0.999) + 1
        assert minimal <= kept.sum() <= 1.3 * minimal + 2
    assert e[b == 1].tolist() == [7]
    assert (b == 0).sum() >= 399


@pytest.mark.parametrize("factor", [1, 2])
def test_coarse_grid_neighbourhoods_cover_the_fine_grid(factor: int) -> None:
    sampling = build_sampling(32, psi_step_deg=10.0, offset_range_px=5.0)
    grid = build_coarse_grid(sampling, 8, psi_factor=factor, shift_factor=factor)
    assert grid.sampling.radius_px == 8
    assert np.all(sampling.shell[grid.pixel_index] <= 8)
    np.testing.assert_array_equal(
        grid.sampling.shifts_px, sampling.shifts_px[grid.shift_index]
    )
    np.testing.assert_array_equal(
        grid.sampling.psi_deg, sampling.psi_deg[grid.psi_index]
    )
    assert set(grid.psi_neighbours.ravel()) == set(range(sampling.n_psi))
    covered = set(grid.shift_neighbours[grid.shift_neighbours >= 0].tolist())
    assert covered == set(range(sampling.n_shifts))
    assert grid.sampling.n_shifts * factor**2 >= sampling.n_shifts * 0.8
    for row, coarse in enumerate(grid.shift_index):  # neighbours are close
        near = grid.shift_neighbours[row][grid.shift_neighbours[row] >= 0]
        dist = np.abs(sampling.shifts_px[near] - sampling.shifts_px[coarse])
        assert dist.max() <= (factor - 1) + 1.0 + 1e-9


def test_fused_products_equal_score_poses_plus_priors(rng: np.random.Generator) -> None:
    sampling, x, refs, ctf, inv_sigma2 = _random_problem(rng)
    prior_t = rng.normal(size=sampling.n_shifts)
    prior_j = rng.normal(size=refs.shape[0])
    fused = score_with_priors(
        x,
        ctf,
        inv_sigma2,
        refs,
        sampling,
        log_prior_shift=prior_t,
        log_prior_pose=prior_j,
    )
    plain = score_poses(x, ctf, inv_sigma2, refs, sampling)
    expected = plain + prior_t[None, :, None] + prior_j[None, None, :]
    np.testing.assert_allclose(fused, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("force_blocks", [False, True])
@pytest.mark.parametrize("split", [1, 6])
def test_fine_scores_equal_score_poses_on_any_subset(
    rng: np.random.Generator, split: int, force_blocks: bool
) -> None:
    """Both fine paths (numba sampled product on the CPU, block products as on
    a GPU) give the exhaustive log-likelihood of every listed pose."""
    n_class = 3
    sampling, x, refs, ctf, inv_sigma2 = _random_problem(rng, n_class)
    n_pose = n_class * sampling.n_psi
    total = x.shape[0] * sampling.n_shifts * n_pose
    codes = np.sort(rng.choice(total, total // 5, replace=False))
    blocks = FineBlocks(codes, sampling, n_class, split)
    got = blocks.score(x, ctf, inv_sigma2, refs, xp=np, force_blocks=force_blocks)
    full = score_poses(x, ctf, inv_sigma2, refs, sampling).reshape(-1, n_pose)
    np.testing.assert_allclose(
        got, full[codes // n_pose, codes % n_pose], rtol=1e-4, atol=1e-3
    )
    assert 0 < blocks.macs <= x.shape[0] * sampling.n_shifts * n_pose * x.shape[1] * 3


def test_listed_scores_check_their_inputs() -> None:
    a = np.zeros((2, 8), dtype=np.float32)
    with pytest.raises(StageInputError, match="float32"):
        score_listed_poses(
            a.astype(np.float64),
            a,
            a[:, :4],
            a[:, :4],
            row=np.zeros(1),
            pose=np.zeros(1),
            particle=np.zeros(1),
        )
    with pytest.raises(StageInputError, match="pixel counts"):
        score_listed_poses(
            a, a, a, a, row=np.zeros(1), pose=np.zeros(1), particle=np.zeros(1)
        )


def test_dense_fallback_is_the_exhaustive_posterior(rng: np.random.Generator) -> None:
    sampling, x, refs, ctf, inv_sigma2 = _random_problem(rng)
    grid = build_coarse_grid(sampling, 4)
    prior = np.log([0.3, 0.7])
    exhaustive = compute_pose_weights(
        score_poses(x, ctf, inv_sigma2, refs, sampling),
        sampling,
        log_class_prior=prior,
        offset_sigma_px=2.0,
    )
    fallback = search_coarse_fine(
        x,
        ctf,
        inv_sigma2,
        refs,
        sampling,
        grid,
        log_class_prior=prior,
        offset_sigma_px=2.0,
        dense_fallback=0.0,
    )
    np.testing.assert_allclose(
        fallback.weights.toarray(), exhaustive.weights.toarray(), atol=1e-6
    )
    np.testing.assert_array_equal(fallback.best_pose, exhaustive.best_pose)


def test_config_names_bad_search_and_old_files_resume_exhaustive() -> None:
    with pytest.raises(StageInputError, match="pose_search"):
        Class2dConfig(n_classes=2, box_px=32, pixel_size_a=1.0, pose_search="fast")
    config = Class2dConfig(n_classes=2, box_px=32, pixel_size_a=1.0)
    assert config.pose_search is PoseSearch.COARSE_FINE
    assert Class2dConfig.from_json(config.to_json()) == config
    old = json.loads(config.to_json())
    for name in ("pose_search", "adaptive_fraction", "gpu"):
        del old[name]
    assert Class2dConfig.from_json(json.dumps(old)).pose_search is PoseSearch.EXHAUSTIVE


def test_cupy_likelihood_matches_numpy(
    rng: np.random.Generator, cupy: ModuleType
) -> None:
    sampling, x, refs, ctf, inv_sigma2 = _random_problem(rng)
    cpu = score_poses(x, ctf, inv_sigma2, refs, sampling)
    gpu = score_poses(x, ctf, inv_sigma2, refs, sampling, xp=cupy)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-3)
    grid = build_coarse_grid(sampling, 4)
    kwargs = {"log_class_prior": np.log([0.5, 0.5]), "offset_sigma_px": 2.0}
    a = search_coarse_fine(x, ctf, inv_sigma2, refs, sampling, grid, **kwargs)
    b = search_coarse_fine(x, ctf, inv_sigma2, refs, sampling, grid, xp=cupy, **kwargs)
    np.testing.assert_array_equal(a.best_pose, b.best_pose)
    np.testing.assert_allclose(a.max_probability, b.max_probability, rtol=1e-3)
