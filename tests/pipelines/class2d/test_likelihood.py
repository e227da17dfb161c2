"""The likelihood as matrix products equals a per-pose computation; rotation and CTF
conventions; schedule values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from pipelines.class2d.fourier import (
    ctf_stack,
    images_to_pixels,
    padded_grids,
    pixels_to_images,
    rotate_transforms,
)
from pipelines.class2d.likelihood import (
    accumulate_sums,
    compute_pose_weights,
    score_poses,
)
from pipelines.class2d.sampling import build_sampling
from pipelines.class2d.schedule import (
    Schedule,
    in_middle_phase,
    minibatch_size,
    step_size,
)
from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.errors import StageInputError


def _complex(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(
        np.complex64
    )


def test_score_poses_equals_naive_per_pose_sum(rng: np.random.Generator) -> None:
    sampling = build_sampling(16, psi_step_deg=90, offset_range_px=1.0)
    n, j, p = 3, 5, sampling.n_pixels
    x = _complex(rng, (n, p))
    refs = _complex(rng, (j, p))
    ctf = rng.uniform(-1, 1, (n, p)).astype(np.float32)
    sigma2 = rng.uniform(0.5, 2.0, p).astype(np.float32)
    fast = score_poses(x, ctf, (1 / sigma2).astype(np.float32), refs, sampling)
    naive = np.empty((n, sampling.n_shifts, j))
    for b in range(n):
        for t in range(sampling.n_shifts):
            shifted = x[b] * sampling.phases[t]
            for r in range(j):
                diff = shifted - ctf[b] * refs[r]
                naive[b, t, r] = -np.sum(
                    sampling.hermitian_weight * np.abs(diff) ** 2 / (2 * sigma2)
                ) + np.sum(
                    sampling.hermitian_weight * np.abs(shifted) ** 2 / (2 * sigma2)
                )
    np.testing.assert_allclose(fast, naive, rtol=1e-4, atol=1e-3)


def test_pose_weights_normalised_pruned_and_sums_match_naive(
    rng: np.random.Generator,
) -> None:
    sampling = build_sampling(16, psi_step_deg=120, offset_range_px=1.0)
    n, k = 4, 2
    j = k * sampling.n_psi
    x = _complex(rng, (n, sampling.n_pixels))
    ctf = rng.uniform(-1, 1, x.shape).astype(np.float32)
    inv_sigma2 = np.full(sampling.n_pixels, 0.3, dtype=np.float32)
    score = rng.normal(scale=4.0, size=(n, sampling.n_shifts, j)).astype(np.float32)
    w = compute_pose_weights(
        score,
        sampling,
        log_class_prior=np.log([0.5, 0.5]),
        offset_sigma_px=1.0,
        prune_threshold=1e-3,
    )
    dense = w.weights.toarray().reshape(n, sampling.n_shifts, j)
    np.testing.assert_allclose(dense.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert 0 < w.kept_fraction < 1
    num, den = accumulate_sums(x, ctf, inv_sigma2, w.weights, sampling)
    num_sparse, den_sparse = accumulate_sums(
        x, ctf, inv_sigma2, w.weights, sampling, dense_above=2.0
    )
    naive_num = np.einsum(
        "btj,btp->jp", dense, x[:, None] * sampling.phases[None] * (ctf * 0.3)[:, None]
    )
    naive_den = np.einsum("btj,bp->jp", dense, ctf * ctf * 0.3)
    for got_num, got_den in ((num, den), (num_sparse, den_sparse)):
        np.testing.assert_allclose(got_num, naive_num, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_den, naive_den, rtol=1e-4, atol=1e-4)


def test_rotation_follows_relion_psi_convention(rng: np.random.Generator) -> None:
    """``out(x) = in(Rot(psi) x)``: compare with scipy's real-space rotation."""
    box = 48
    sampling = build_sampling(box)
    y, x = np.mgrid[:box, :box] - box // 2
    image = np.exp(-((x - 8.0) ** 2 + (y - 3.0) ** 2) / 8.0) + 0.5 * np.exp(
        -((x + 4.0) ** 2 + (y + 9.0) ** 2) / 12.0
    )
    image = image.astype(np.float32)[None]
    turned = rotate_transforms(
        padded_grids(image), np.array([0]), np.array([30.0]), sampling, oversampling=2
    )
    got = pixels_to_images(turned, sampling)[0]
    # scipy.ndimage.rotate(angle) turns content counter-clockwise on screen (y down)
    # = clockwise in (x, y) maths axes, i.e. out(x) = in(Rot(angle) x).
    expected = scipy.ndimage.rotate(image[0], 30.0, reshape=False, order=3)
    corr = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    wrong = scipy.ndimage.rotate(image[0], -30.0, reshape=False, order=3)
    print(
        f"rotation: corr {corr:.4f} vs opposite sense {np.corrcoef(got.ravel(), wrong.ravel())[0, 1]:.4f}"
    )
    assert corr > 0.99
    back = pixels_to_images(images_to_pixels(image, sampling), sampling)
    assert np.corrcoef(back.ravel(), image.ravel())[0, 1] > 0.999


def test_ctf_stack_matches_ctf_model() -> None:
    sampling = build_sampling(32)
    params = CtfParams(
        defocus_u_a=15000.0, defocus_v_a=12000.0, astigmatism_angle_deg=30.0
    )
    got = ctf_stack(
        sampling,
        1.5,
        defocus_u_a=np.array([15000.0, 20000.0]),
        defocus_v_a=np.array([12000.0, 20000.0]),
        astigmatism_angle_deg=np.array([30.0, 0.0]),
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
    )
    expected = ctf_2d((32, 32), 1.5, params)[sampling.rows, sampling.cols]
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    assert not np.allclose(got[1], expected, atol=1e-2)


def test_schedule_matches_relion_defaults() -> None:
    schedule = Schedule()
    assert minibatch_size(0, 100_000, schedule) == 500  # 0.5 %
    assert minibatch_size(199, 100_000, schedule) == 5_000  # 5 %
    assert minibatch_size(0, 10_000, schedule) == 200  # min 200
    assert minibatch_size(199, 10_000, schedule) == 1_000  # min 1,000
    assert minibatch_size(0, 10_000_000, schedule) == 10_000  # max 10,000
    assert minibatch_size(0, 150, schedule) == 150  # never more than the data
    steps = np.array([step_size(i, schedule) for i in range(200)])
    assert steps[0] == pytest.approx(0.9)
    assert steps[-1] == pytest.approx(0.3)
    assert np.all(np.diff(steps) <= 1e-12)
    sizes = [minibatch_size(i, 100_000, schedule) for i in range(200)]
    assert np.all(np.diff(sizes) >= 0)
    assert not in_middle_phase(10, schedule)
    assert in_middle_phase(100, schedule)
    assert not in_middle_phase(190, schedule)


def test_bad_sampling_is_named() -> None:
    with pytest.raises(StageInputError, match="box_px"):
        build_sampling(31)
