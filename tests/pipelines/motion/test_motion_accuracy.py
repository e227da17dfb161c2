"""The parts behind the global-shift accuracy: unaliased binning, spectral-SNR
weights, robust trajectory smoothing."""

from __future__ import annotations

import numpy as np
import pytest

import pipelines.motion.correct as motion_correct
from pipelines.motion.align import bin_frames
from pipelines.motion.spectra import binned_spectra
from pipelines.motion.trajectory import smooth_trajectory
from pipelines.motion.weighting import spectral_snr_weights
from tests.pipelines.motion_movies import make_texture


def shifted_copies(image: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Exact Fourier-shifted copies ``(n, ny, nx)``: content of copy ``i`` moves by
    ``shifts_px[i]`` [x, y]."""
    ny, nx = image.shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    spectrum = np.fft.fft2(image)
    out = np.empty((len(shifts_px), ny, nx), np.float32)
    for i, (sx, sy) in enumerate(shifts_px):
        ramp = np.exp(-2j * np.pi * (kx * sx + ky * sy))
        out[i] = np.real(np.fft.ifft2(spectrum * ramp))
    return out


def rms(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(error**2, axis=-1))))


def test_fourier_binning_moves_with_the_content(rng):
    """A shifted frame's binned spectrum is the binned spectrum times the exact
    phase ramp of the binned shift; real-space block sums are not (aliasing)."""
    texture = make_texture(rng, (256, 256))
    k_full = np.hypot(np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :])
    # signal up to 0.3 cycles/px: well above the binned Nyquist (0.125)
    texture = np.real(np.fft.ifft2(np.fft.fft2(texture) * (k_full < 0.3)))
    shifts = np.array([[0.0, 0.0], [1.3, -2.7]])
    frames = shifted_copies(texture, shifts)
    spectra, shape = binned_spectra(frames, 4, workers=1)
    assert shape == (64, 64)
    assert spectra.shape == (2, 64, 33)
    ky = np.fft.fftfreq(64)[:, None]
    kx = np.fft.rfftfreq(64)[None, :]
    ramp = np.exp(-2j * np.pi * (kx * 1.3 / 4 - ky * 2.7 / 4))
    band = np.sqrt(ky * ky + kx * kx) < 0.4  # well inside the binned band
    rel = np.abs(spectra[1] - spectra[0] * ramp)[band] / np.abs(spectra[0][band]).mean()
    assert rel.max() < 1e-3
    # the block sum of the same frames breaks the relation where signal folds in
    blocks = np.fft.rfft2(bin_frames(frames, 4))
    rel_blocks = (
        np.abs(blocks[1] - blocks[0] * ramp)[band] / np.abs(blocks[0][band]).mean()
    )
    assert rel_blocks.max() > 10 * rel.max()


@pytest.mark.parametrize("coarse_max_px", [512, 64])
def test_noise_free_drift_at_bin_4_is_unbiased(rng, monkeypatch, coarse_max_px):
    """Noise-free texture, 20 frames of fractional drift, aligned binned by 4: the
    Fourier-binned alignment recovers the drift to < 0.02 px RMS (real-space block
    binning left 0.07 px on the simulator's noise-free movie).  With
    ``COARSE_MAX_PX`` 64 the coarse pass runs on the 128² search band's
    low-resolution half (as at real size: 512 of 1024): only a start, the result
    is the same."""
    monkeypatch.setattr(motion_correct, "ALIGN_MAX_PX", 128)
    monkeypatch.setattr(motion_correct, "COARSE_MAX_PX", coarse_max_px)
    texture = make_texture(rng, (512, 512))
    t = np.arange(20, dtype=float)
    drift = np.stack([4.0 * np.sqrt(t + 1) - 4.0 + 0.13 * t, -2.0 * np.log1p(t)], 1)
    frames = 10.0 * (1.0 + 0.3 * shifted_copies(texture, drift))
    shifts, aligned, factor = motion_correct.align_global(
        frames, bfactor_px2=20.0, workers=1
    )
    assert factor == 4
    assert aligned.shape == (20, 128, 128)
    error = shifts + (drift - drift[0])
    print(f"noise-free bin-4 drift error {rms(error):.4f} px RMS")
    assert np.all(shifts[0] == 0)
    assert rms(error) < 0.02


def test_snr_weights_follow_the_signal_band(rng):
    """Signal only below 0.15 cycles/px in white noise: the weights are large there
    and near zero above 0.3 cycles/px."""
    n, size = 16, 128
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    signal = np.fft.rfft2(rng.standard_normal((size, size))) * (k < 0.15)
    noise = np.fft.rfft2(rng.standard_normal((n, size, size)), axes=(-2, -1))
    spectra = (3.0 * signal[None] + noise).astype(np.complex64)
    weights = spectral_snr_weights(spectra, (size, size), np.zeros((n, 2)))
    assert weights is not None
    assert weights.shape == (size, size // 2 + 1)
    assert weights[0, 0] == 0.0
    inside = float(weights[(k > 0.03) & (k < 0.12)].mean())
    outside = float(weights[k > 0.3].mean())
    assert inside > 0.3
    assert outside < 0.05 * inside
    # pure noise: no frequency shows signal on average, so weights are tiny or None
    flat = spectral_snr_weights(
        noise.astype(np.complex64), (size, size), np.zeros((n, 2))
    )
    assert flat is None or float(flat[k > 0.05].mean()) < 0.2


def test_robust_smoothing_resists_one_mismeasured_frame():
    """A noise peak picked in one frame (1.8 px off) inflates GCV's λ and drags the
    neighbours; the Huber-reweighted fit lowers the RMS error over the path."""
    f = np.arange(40, dtype=float)
    plain_rms, robust_rms = [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        path = np.column_stack([6 * (1 - np.exp(-f / 8)), -3 * (1 - np.exp(-f / 8))])
        path += np.cumsum(rng.normal(scale=0.05, size=path.shape), axis=0)
        measured = path + rng.normal(scale=0.05, size=path.shape)
        measured[25] += [1.5, -1.0]
        truth = path - path[0]
        plain, _ = smooth_trajectory(measured, robust=False)
        robust, _ = smooth_trajectory(measured)
        assert np.allclose(robust[0], 0.0)
        plain_rms.append(rms(plain - truth))
        robust_rms.append(rms(robust - truth))
    print(
        f"RMS error: plain {np.round(plain_rms, 3)}, robust {np.round(robust_rms, 3)}"
    )
    # measured 0.167/0.164/0.223/0.172 px plain, 0.139/0.148/0.141/0.169 robust
    assert np.mean(robust_rms) < 0.85 * np.mean(plain_rms)
    assert max(r - p for r, p in zip(robust_rms, plain_rms, strict=True)) < 0.01


@pytest.mark.parametrize("factor", [0, -1])
def test_binned_spectra_rejects_bad_factor(factor):
    with pytest.raises(ValueError, match="bin factor"):
        binned_spectra(np.zeros((2, 16, 16), np.float32), factor)


def test_refinement_at_half_the_bin_uses_the_finer_signal(monkeypatch):
    """Noisy frames whose signal reaches past the search bin's Nyquist, searched
    binned by 4: refining at bin 2 lowers the RMS error of the drift (mean over
    seeds), and switching the refinement off is measurably worse."""
    monkeypatch.setattr(motion_correct, "ALIGN_MAX_PX", 128)
    t = np.arange(16, dtype=float)
    drift = np.stack([3.0 * np.sqrt(t + 1) - 3.0 + 0.11 * t, -1.5 * np.log1p(t)], 1)
    errors: dict[str, list[float]] = {"refined": [], "search bin only": []}
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        texture = make_texture(rng, (512, 512))
        clean = 2.0 * (1.0 + 0.3 * shifted_copies(texture, drift))
        frames = rng.poisson(np.clip(clean, 0, None)).astype(np.float32)
        for label in errors:
            with monkeypatch.context() as patch:
                if label != "refined":
                    patch.setattr(
                        motion_correct,
                        "refine_at_finer_bin",
                        lambda frames, shifts, *args, **kwargs: shifts,
                    )
                shifts, _, factor = motion_correct.align_global(
                    frames, bfactor_px2=20.0, workers=1
                )
            assert factor == 4
            errors[label].append(rms(shifts + (drift - drift[0])))
    print({k: np.round(v, 3).tolist() for k, v in errors.items()})
    assert np.mean(errors["refined"]) < 0.8 * np.mean(errors["search bin only"])
