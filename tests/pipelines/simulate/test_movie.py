"""Movies: known drift and local motion, shot noise, gain and its orientation, defects."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.fft

from pipelines.simulate.detector import GainFlip, orient_gain_to_movie
from pipelines.simulate.micrograph import MicrographParams
from pipelines.simulate.movie import MovieParams, simulate_movie
from pipelines.simulate.optics import critical_exposure_e_per_a2, read_mtf


def measured_shift(
    reference: np.ndarray, moved: np.ndarray, upsample: int = 50
) -> np.ndarray:
    """[x, y] by which ``moved``'s content is displaced from ``reference`` (sub-pixel).

    Phase-free cross-correlation, integer peak, then a local upsampled DFT.
    """
    ny, nx = reference.shape
    a = scipy.fft.fft2(reference - reference.mean())
    b = scipy.fft.fft2(moved - moved.mean())
    cross = np.conj(a) * b
    corr = scipy.fft.ifft2(cross).real
    peak = np.array(np.unravel_index(np.argmax(corr), corr.shape), dtype=float)
    peak = np.where(peak > np.array([ny, nx]) / 2, peak - np.array([ny, nx]), peak)
    offsets = np.arange(-1.5, 1.5 + 1e-9, 1.0 / upsample)
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    ey = np.exp(2j * np.pi * (peak[0] + offsets)[:, None] * ky.T)  # (m, ny)
    ex = np.exp(2j * np.pi * kx.T * (peak[1] + offsets)[None, :])  # (nx, m)
    local = (ey @ cross @ ex).real
    iy, ix = np.unravel_index(np.argmax(local), local.shape)
    return np.array([peak[1] + offsets[ix], peak[0] + offsets[iy]])


def clean_params(**changes: object) -> MovieParams:
    base = {
        "micrograph": MicrographParams(
            shape_px=(256, 256), n_particles=6, phantom_box_px=48, ice_phase_sd_rad=0.05
        ),
        "n_frames": 6,
        "drift_px": 6.0,
        "local_motion_px": 0.0,
        "damage": False,
        "gain_sd": 0.0,
        "hot_pixel_fraction": 0.0,
        "dead_pixel_fraction": 0.0,
        "shot_noise": False,
    }
    base.update(changes)
    return MovieParams(**base)  # type: ignore[arg-type]


def test_drift_truth_matches_measured_shifts(rng: np.random.Generator) -> None:
    frames, truth = simulate_movie(clean_params(), rng)
    assert frames.dtype == np.float32
    assert frames.shape == (6, 256, 256)
    np.testing.assert_array_equal(truth.shifts_px[0], [0.0, 0.0])
    assert np.abs(truth.shifts_px[-1]).max() > 2.0
    for f in range(1, 6):
        np.testing.assert_allclose(
            measured_shift(frames[0], frames[f]), truth.shifts_px[f], atol=0.03
        )


def test_local_motion_truth_matches_patch_shifts(rng: np.random.Generator) -> None:
    params = clean_params(drift_px=2.0, local_motion_px=3.0)
    frames, truth = simulate_movie(params, rng)
    last = params.n_frames - 1
    errors = []
    for y0 in (16, 176):
        for x0 in (16, 176):
            patch = (slice(y0, y0 + 64), slice(x0, x0 + 64))
            found = measured_shift(frames[0][patch], frames[last][patch])
            expected = truth.total_shift_px(last, y0 + 31.5, x0 + 31.5)
            errors.append(np.abs(found - expected).max())
    assert max(errors) < 0.25
    # The local part really varies over the field.
    corners = truth.local_motion.shift_px(last, np.array([0, 255]), np.array([0, 255]))
    assert np.abs(corners[0] - corners[1]).max() > 1.0


def test_local_motion_is_zero_at_frame_zero_and_smooth(
    rng: np.random.Generator,
) -> None:
    _, truth = simulate_movie(clean_params(local_motion_px=2.0, n_frames=4), rng)
    field_x, field_y = truth.local_motion.field_px(0)
    assert np.abs(field_x).max() == 0
    assert np.abs(field_y).max() == 0
    fx, fy = truth.local_motion.field_px(3)
    direct = truth.local_motion.shift_px(3, np.array([10.0]), np.array([200.0]))[0]
    np.testing.assert_allclose([fx[10, 200], fy[10, 200]], direct, atol=1e-5)
    assert np.abs(np.diff(fx, axis=1)).max() < 0.05  # smooth: < 0.05 px per px


def test_counts_follow_dose_and_gain(rng: np.random.Generator) -> None:
    dose = 4.0
    params = clean_params(
        micrograph=MicrographParams(
            shape_px=(128, 128), n_particles=0, ice_phase_sd_rad=0.0
        ),
        n_frames=24,
        dose_per_frame_e_per_a2=dose,
        drift_px=0.0,
        drift_jitter_px=0.0,
        gain_sd=0.1,
        shot_noise=True,
    )
    frames, truth = simulate_movie(params, rng)
    assert frames.dtype == np.uint8
    mp = params.micrograph
    transmission = np.exp(-mp.ice_thickness_a / mp.inelastic_mean_free_path_a)
    expected = dose * mp.pixel_size_a**2 * transmission * truth.gain
    normalised = frames / expected
    n = frames.size
    assert abs(normalised.mean() - 1.0) < 4 / np.sqrt(n * expected.mean())
    # Poisson: per-pixel variance over frames equals the mean.
    ratio = frames.var(axis=0, ddof=1).mean() / frames.mean(axis=0).mean()
    assert ratio == pytest.approx(1.0, abs=0.05)
    # The gain shows in the per-pixel means.
    assert np.corrcoef(frames.mean(axis=0).ravel(), truth.gain.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", list(GainFlip))
def test_gain_reference_orientation_round_trips(
    turns: int, flip: GainFlip, rng: np.random.Generator
) -> None:
    params = clean_params(
        micrograph=MicrographParams(shape_px=(48, 64), n_particles=0),
        n_frames=1,
        gain_sd=0.1,
        gain_rotation_quarter_turns=turns,
        gain_flip=flip,
    )
    _, truth = simulate_movie(params, rng)
    stored = truth.gain_reference
    assert stored.shape == ((64, 48) if turns % 2 else (48, 64))
    restored = orient_gain_to_movie(stored, turns, flip)
    np.testing.assert_allclose(restored * truth.gain, 1.0, rtol=1e-6)


def test_hot_and_dead_pixels(rng: np.random.Generator) -> None:
    params = clean_params(
        micrograph=MicrographParams(shape_px=(300, 300), n_particles=0),
        n_frames=8,
        drift_px=0.0,
        hot_pixel_fraction=1e-3,
        dead_pixel_fraction=1e-3,
        hot_counts_per_frame=40.0,
        shot_noise=True,
    )
    frames, truth = simulate_movie(params, rng)
    defects = truth.defects
    assert defects.dead.sum() >= 300  # a dead column at least
    assert not np.any(defects.hot & defects.dead)
    assert frames[:, defects.dead].max() == 0
    assert frames[:, defects.hot].mean() == pytest.approx(40.0, rel=0.1)
    np.testing.assert_array_equal(truth.defect_mask, defects.hot | defects.dead)


def band_power_ratio(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Power of ``a`` over power of ``b`` in rings of |k| (cycles per pixel)."""
    ny, nx = a.shape
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(ny), np.fft.rfftfreq(nx), indexing="ij"))
    pa = np.abs(scipy.fft.rfft2(a - a.mean())) ** 2
    pb = np.abs(scipy.fft.rfft2(b - b.mean())) ** 2
    return np.array(
        [
            pa[(k >= lo) & (k < hi)].sum() / pb[(k >= lo) & (k < hi)].sum()
            for lo, hi in itertools.pairwise(edges)
        ]
    )


def test_detector_mtf_filters_the_frames(shared_data: Path) -> None:
    mtf_path = shared_data / "real" / "mtf_k2_300kV.star"
    base = clean_params(
        micrograph=MicrographParams(
            shape_px=(256, 256), n_particles=2, phantom_box_px=32
        ),
        n_frames=1,
        drift_px=0.0,
        drift_jitter_px=0.0,
    )
    plain, _ = simulate_movie(base, np.random.default_rng(5))
    blurred, _ = simulate_movie(
        replace(base, mtf_path=mtf_path), np.random.default_rng(5)
    )
    edges = np.linspace(0.05, 0.5, 10)
    freq, mtf = read_mtf(mtf_path)
    centres = 0.5 * (edges[:-1] + edges[1:])
    expected = np.interp(2.0 * centres, freq, mtf) ** 2
    found = band_power_ratio(blurred[0], plain[0], edges)
    np.testing.assert_allclose(found, expected, rtol=0.08)


def test_late_frames_lose_high_resolution_signal(rng: np.random.Generator) -> None:
    dose = 2.0
    params = clean_params(
        damage=True,
        drift_px=0.0,
        drift_jitter_px=0.0,
        n_frames=30,
        dose_per_frame_e_per_a2=dose,
    )
    frames, _ = simulate_movie(params, rng)
    first, last = frames[0] - frames[0].mean(), frames[-1] - frames[-1].mean()
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.rfftfreq(256), indexing="ij"))
    p_first = np.abs(scipy.fft.rfft2(first)) ** 2
    p_last = np.abs(scipy.fft.rfft2(last)) ** 2
    # Amplitudes fall as exp(-N / (2 N_e(k))): power by exp(-(N_last - N_first) / N_e).
    attenuation = np.exp(-(29 * dose) / critical_exposure_e_per_a2(k, 300.0))
    edges = [0.02, 0.05, 0.08, 0.12, 0.16]  # cycles/px = 1/Å at 1 Å/px
    found, expected = [], []
    for lo, hi in itertools.pairwise(edges):
        band = (k >= lo) & (k < hi)
        found.append(p_last[band].sum() / p_first[band].sum())
        expected.append((p_first[band] * attenuation[band]).sum() / p_first[band].sum())
    # (edge leakage of the cropped frames puts a floor of ~1e-3 under the ratios)
    np.testing.assert_allclose(found, expected, rtol=0.05, atol=2e-3)
    assert np.all(np.diff(found) < 0)  # finer detail fades faster


@pytest.mark.parametrize("mean", [0.7, 12.0])
def test_shot_noise_sampler_follows_the_poisson_law(
    mean: float, rng: np.random.Generator
) -> None:
    from scipy.stats import poisson

    from pipelines.simulate._frame_kernels import poisson_counts

    shape = (400, 500)
    out = np.empty(shape, dtype=np.uint8)
    poisson_counts(
        np.full(shape, mean, np.float32),
        np.ones(shape, np.float32),
        rng.random(shape, dtype=np.float32),
        out,
    )
    n = out.size
    values = np.arange(int(mean + 5 * np.sqrt(mean)) + 1)
    observed = np.bincount(out.ravel(), minlength=len(values))[: len(values)] / n
    expected = poisson.pmf(values, mean)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(observed - expected) < 5 * sigma + 1e-6)
