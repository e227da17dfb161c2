"""FSC: identities, independence, and the interpolated crossings."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.reconstruct import FscCurve, fourier_shell_correlation


def test_fsc_of_a_map_with_itself_is_one_and_with_noise_near_zero(
    rng: np.random.Generator,
) -> None:
    a = rng.standard_normal((32, 32, 32)).astype(np.float32)
    b = rng.standard_normal((32, 32, 32)).astype(np.float32)
    same = fourier_shell_correlation(a, 3.0 * a, 2.0)
    np.testing.assert_allclose(same.fsc, 1.0, atol=1e-9)
    independent = fourier_shell_correlation(a, b, 2.0).fsc
    assert np.abs(independent[4:]).max() < 0.15  # shells of >= 200 voxels
    assert abs(independent[4:].mean()) < 0.03


def test_fsc_follows_the_snr_of_a_noisy_copy(rng: np.random.Generator) -> None:
    """Two copies of one signal with independent noise: FSC = SNR / (1 + SNR)."""
    signal = rng.standard_normal((48, 48, 48))
    noise_sd = 0.5  # SNR 4 -> FSC 0.8 in every shell
    a = signal + noise_sd * rng.standard_normal(signal.shape)
    b = signal + noise_sd * rng.standard_normal(signal.shape)
    fsc = fourier_shell_correlation(a, b, 1.0).fsc
    assert np.abs(fsc[8:] - 0.8).max() < 0.03  # shells of >= 800 voxels


def test_crossings_are_interpolated_linearly() -> None:
    curve = FscCurve(
        fsc=np.array([1.0, 0.9, 0.6, 0.4, 0.1, 0.0]), box_px=10, pixel_size_a=2.0
    )
    assert curve.crossing_index(0.5) == pytest.approx(2.5)
    assert curve.crossing_a(0.5) == pytest.approx(20.0 / 2.5)
    assert curve.crossing_index(0.143) == pytest.approx(3 + (0.4 - 0.143) / 0.3)
    assert curve.resolution_a[2] == pytest.approx(10.0)
    assert np.isinf(curve.resolution_a[0])
    never = FscCurve(fsc=np.ones(6), box_px=10, pixel_size_a=2.0)
    assert never.crossing_a(0.143) == pytest.approx(4.0)  # Nyquist


def test_fsc_refuses_maps_of_different_shapes() -> None:
    with pytest.raises(StageInputError, match="map2"):
        fourier_shell_correlation(np.zeros((8, 8, 8)), np.zeros((6, 6, 6)), 1.0)
