"""Motion correction recovers known drift, local motion, gain and defects."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.motion.correct import accumulated_motion_a, correct_motion
from pipelines.motion.defects import orient_gain
from pipelines.motion.dose import critical_exposure_e_per_a2, dose_weights
from pipelines.motion.local import evaluate_local_model
from tests.pipelines.motion_movies import make_movie


def rms(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(error**2, axis=-1))))


def band_correlation(a: np.ndarray, b: np.ndarray, k_lo: float, k_hi: float) -> float:
    """Fourier-ring correlation of two images over ``k_lo <= |k| < k_hi`` (cycles/px)."""
    fa, fb = np.fft.rfft2(a), np.fft.rfft2(b)
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.rfftfreq(a.shape[1])[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    band = (k >= k_lo) & (k < k_hi)
    num = np.real(np.sum(fa[band] * np.conj(fb[band])))
    den = np.sqrt(np.sum(np.abs(fa[band]) ** 2) * np.sum(np.abs(fb[band]) ** 2))
    return float(num / den)


def test_global_shifts_recovered_within_a_tenth_of_a_pixel(rng):
    movie = make_movie(rng, n_frames=20, size=512, dose_per_frame_e_per_a2=1.5)
    result = correct_motion(
        movie.frames,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=1.5,
        voltage_kv=300,
        patches=None,
        save_no_dw=True,
    )
    truth = -(movie.drift_px - movie.drift_px[0])
    error = rms(result.shifts_px - truth)
    print(f"global shift RMS error {error:.3f} px over {truth.shape[0]} frames")
    assert np.all(result.shifts_px[0] == 0)
    assert error <= 0.1
    # the aligned sum is as sharp as the clean image: high-resolution agreement
    aligned = band_correlation(result.micrograph_no_dw, movie.clean, 0.15, 0.3)
    unaligned = band_correlation(movie.frames.sum(axis=0), movie.clean, 0.15, 0.3)
    print(
        f"band correlation with truth: aligned {aligned:.3f}, unaligned {unaligned:.3f}"
    )
    assert aligned > 0.5 > unaligned + 0.3


def test_motion_figures_follow_relion_definitions(rng):
    movie = make_movie(rng, n_frames=12, size=256)
    result = correct_motion(
        movie.frames,
        pixel_size_a=0.8,
        dose_per_frame_e_per_a2=1.5,
        voltage_kv=300,
        patches=None,
    )
    steps = np.linalg.norm(np.diff(result.shifts_px, axis=0), axis=1) * 0.8
    assert result.total_motion_a == pytest.approx(steps.sum())
    assert result.early_motion_a == pytest.approx(steps[:4].sum())
    assert result.late_motion_a == pytest.approx(steps[4:].sum())
    assert accumulated_motion_a(result.shifts_px, 0.8)[-1] == pytest.approx(steps.sum())
    assert result.power_spectrum.shape == (256, 256)


def test_local_motion_recovered_within_half_a_pixel(rng):
    movie = make_movie(rng, n_frames=20, size=512, local_amplitude_px=3.0)
    result = correct_motion(
        movie.frames,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=1.5,
        voltage_kv=300,
        patches=(5, 5),
    )
    assert result.local is not None
    grid = (np.arange(5) + 0.5) / 5 * 512
    x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    truth = movie.true_correction_px(x, y)
    frames = np.arange(20, dtype=float)
    local = evaluate_local_model(
        result.local.coefficients, frames, x / 512 - 0.5, y / 512 - 0.5
    )
    estimate = result.shifts_px[:, None, :] + local
    error = rms(estimate - truth)
    global_only = rms(result.shifts_px[:, None, :] - truth)
    print(
        f"local field RMS error {error:.3f} px (global model alone {global_only:.3f} px)"
    )
    assert error <= 0.5
    assert error < 0.5 * global_only
    assert np.allclose(local[0], 0.0)


def test_dose_weighting_improves_high_resolution_signal(rng):
    movie = make_movie(
        rng, n_frames=20, size=384, dose_per_frame_e_per_a2=2.0, damage_voltage_kv=300
    )
    result = correct_motion(
        movie.frames,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=2.0,
        voltage_kv=300,
        patches=None,
        save_no_dw=True,
    )
    high_dw = band_correlation(result.micrograph, movie.clean, 0.25, 0.4)
    high_plain = band_correlation(result.micrograph_no_dw, movie.clean, 0.25, 0.4)
    low_dw = band_correlation(result.micrograph, movie.clean, 0.01, 0.05)
    low_plain = band_correlation(result.micrograph_no_dw, movie.clean, 0.01, 0.05)
    print(
        f"FRC 0.25-0.4/px: weighted {high_dw:.3f} plain {high_plain:.3f}; low {low_dw:.3f} {low_plain:.3f}"
    )
    assert high_dw > high_plain + 0.02
    assert low_dw == pytest.approx(low_plain, abs=0.01)


def test_dose_weights_are_normalised_and_decay():
    exposures = np.arange(1, 31, dtype=float)
    weights = dose_weights((64, 64), 1.0, exposures, 300)
    assert np.allclose(np.mean(weights.astype(np.float64) ** 2, axis=0), 1.0, atol=1e-4)
    assert np.all(np.diff(weights[:, 20, 20]) <= 0)
    # 200 kV electrons damage faster: critical exposure scaled by 0.8
    assert critical_exposure_e_per_a2(0.2, 200) == pytest.approx(
        0.8 * critical_exposure_e_per_a2(0.2, 300)
    )
    assert critical_exposure_e_per_a2(0.1, 300) == pytest.approx(
        0.245 * 0.1**-1.665 + 2.81, rel=1e-5
    )


def test_gain_correction_removes_the_gain_pattern(rng):
    sensitivity = np.clip(1.0 + 0.25 * rng.standard_normal((256, 256)), 0.4, 1.6)
    gain = (1.0 / sensitivity).astype(np.float32)
    pattern = sensitivity - sensitivity.mean()
    kwargs = {
        "pixel_size_a": 1.0,
        "dose_per_frame_e_per_a2": 1.5,
        "voltage_kv": 300,
        "patches": None,
        "save_no_dw": True,
    }

    def corr(image: np.ndarray) -> float:
        return float(np.corrcoef(image.ravel(), pattern.ravel())[0, 1])

    # a still specimen: the fixed pattern would add up coherently in the sum
    still = make_movie(
        rng, n_frames=12, size=256, sensitivity=sensitivity, drift_px=np.zeros((12, 2))
    )
    raw = correct_motion(still.frames, **kwargs).micrograph_no_dw
    corrected = correct_motion(still.frames, gain=gain, **kwargs).micrograph_no_dw
    print(
        f"correlation with gain pattern: raw {corr(raw):.3f}, corrected {corr(corrected):.3f}"
    )
    assert corr(raw) > 0.3
    assert abs(corr(corrected)) < 0.05
    # a drifting specimen: the fixed pattern must not pull the shifts towards zero
    moving = make_movie(rng, n_frames=12, size=256, sensitivity=sensitivity)
    truth = -(moving.drift_px - moving.drift_px[0])
    error = rms(correct_motion(moving.frames, gain=gain, **kwargs).shifts_px - truth)
    print(f"shift RMS error with gain correction {error:.3f} px")
    assert error < 0.15


def test_gain_orientation_rotates_then_flips():
    gain = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(orient_gain(gain, 90), np.rot90(gain))
    assert np.array_equal(orient_gain(gain, 0, "x"), gain[:, ::-1])
    assert np.array_equal(orient_gain(gain, 180, "y"), np.rot90(gain, 2)[::-1])
    with pytest.raises(ValueError, match="gain_rotation_deg"):
        orient_gain(gain, 45)


def test_hot_pixels_and_defects_are_masked(rng):
    movie = make_movie(rng, n_frames=12, size=256)
    frames = movie.frames.copy()
    hot_y = rng.integers(10, 246, 12)
    hot_x = rng.integers(10, 246, 12)
    frames[:, hot_y, hot_x] += 40.0
    defects = np.zeros((256, 256), dtype=bool)
    defects[:, 77] = True
    frames[:, :, 77] = 0.0
    result = correct_motion(
        frames,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=1.5,
        voltage_kv=300,
        defect_mask=defects,
        patches=None,
        save_no_dw=True,
    )
    assert result.n_hot_pixels >= 12
    image = result.micrograph_no_dw
    spread = np.std(image)
    assert np.max(np.abs(image - np.median(image))) < 8 * spread
    column = image[:, 77].mean()
    neighbours = image[:, 70:75].mean()
    assert abs(column - neighbours) < 0.3 * spread
    truth = -(movie.drift_px - movie.drift_px[0])
    assert rms(result.shifts_px - truth) < 0.15
