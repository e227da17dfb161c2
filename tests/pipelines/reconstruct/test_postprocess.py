"""Post-processing: phase-randomisation correction, Guinier B-factor, MTF, inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft

from pipelines.errors import StageInputError
from pipelines.reconstruct import create_mask, fourier_shell_correlation, lowpass_map
from pipelines.reconstruct.postprocess import (
    postprocess,
    randomise_phases,
    read_mtf_star,
)
from pipelines.simulate.volumes import phantom_volume

PX = 2.0


def _blurred(volume: np.ndarray, bfactor_a2: float) -> np.ndarray:
    """``volume`` with its amplitudes multiplied by ``exp(-B s^2 / 4)``."""
    box = volume.shape[0]
    k = np.fft.fftfreq(box, PX)
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.fft.rfftfreq(box, PX) ** 2
    ft = scipy.fft.rfftn(volume) * np.exp(-0.25 * bfactor_a2 * s2)
    return np.asarray(scipy.fft.irfftn(ft, s=volume.shape))


def test_phase_randomisation_keeps_amplitudes_and_low_shells(
    rng: np.random.Generator,
) -> None:
    volume = rng.standard_normal((24, 24, 24))
    shuffled = randomise_phases(volume, 5, rng)
    fsc = fourier_shell_correlation(volume, shuffled, PX).fsc
    assert fsc[:6].min() > 0.999
    assert np.abs(fsc[8:]).max() < 0.2


def test_corrected_fsc_removes_the_mask_correlation(rng: np.random.Generator) -> None:
    """Signal only to shell 9 (12 Å low-pass with its cosine edge: 10.7 Å),
    independent noise in each half, a tight mask: beyond it the masked FSC is
    inflated by the mask, the corrected one is not."""
    truth = phantom_volume(48, PX, rng)
    signal = lowpass_map(truth, pixel_size_a=PX, resolution_a=12.0)
    signal /= signal.std()
    h1 = signal + rng.standard_normal(signal.shape)
    h2 = signal + rng.standard_normal(signal.shape)
    mask = create_mask(
        truth,
        pixel_size_a=PX,
        lowpass_a=None,
        threshold=0.1,
        extend_px=0,
        soft_edge_px=3,
    )
    result = postprocess(h1, h2, mask, pixel_size_a=PX, bfactor_a2=0.0)
    beyond = slice(11, None)
    assert result.fsc_unmasked.fsc[beyond].mean() == pytest.approx(0.0, abs=0.02)
    assert result.fsc_masked.fsc[beyond].mean() > 0.1  # spurious, from the mask
    assert result.fsc_corrected.fsc[beyond].mean() == pytest.approx(0.0, abs=0.08)
    assert result.randomise_from_shell == 8
    assert result.resolution_a == pytest.approx(11.0, rel=0.05)
    assert result.fsc_corrected.fsc[1:8].min() > 0.9


def _shell_amplitude(volume: np.ndarray) -> np.ndarray:
    box = volume.shape[0]
    k = np.fft.fftfreq(box) * box
    r = np.sqrt(
        k[:, None, None] ** 2
        + k[None, :, None] ** 2
        + np.fft.rfftfreq(box) ** 2 * box**2
    )
    shells = np.rint(r).astype(int)
    amplitude = np.abs(scipy.fft.rfftn(volume))
    inside = shells <= box // 2
    return np.bincount(shells[inside], amplitude[inside]) / np.bincount(shells[inside])


def test_bfactor_of_a_blurred_map_is_found_and_undone(
    rng: np.random.Generator,
) -> None:
    white = rng.standard_normal((40, 40, 40))
    blurred = _blurred(white, 120.0)
    h1 = blurred + 1e-4 * rng.standard_normal(white.shape)
    h2 = blurred + 1e-4 * rng.standard_normal(white.shape)
    result = postprocess(h1, h2, np.ones(white.shape), pixel_size_a=PX)
    assert result.resolution_a == pytest.approx(2 * PX, rel=0.02)  # Nyquist
    assert result.bfactor_a2 == pytest.approx(-120.0, rel=0.05)
    amplitude = _shell_amplitude(result.sharpened)
    assert amplitude[16] / amplitude[4] == pytest.approx(1.0, rel=0.1)  # flat again


def test_mtf_division_raises_each_shell_by_one_over_the_mtf(
    rng: np.random.Generator, shared_data: Path
) -> None:
    mtf = read_mtf_star(
        shared_data / "real" / "mtf_falcon4EC_300kV.star", detector_pixel_size_a=PX
    )
    volume = rng.standard_normal((32, 32, 32))
    ones = np.ones(volume.shape)
    plain = postprocess(volume, volume, ones, pixel_size_a=PX, bfactor_a2=0.0)
    divided = postprocess(
        volume, volume, ones, pixel_size_a=PX, bfactor_a2=0.0, mtf=mtf
    )
    ratio = _shell_amplitude(divided.sharpened) / _shell_amplitude(plain.sharpened)
    expected = 1.0 / mtf.at(np.arange(17) / (32 * PX))
    np.testing.assert_allclose(ratio[1:15], expected[1:15], rtol=1e-6)
    assert expected[14] > 1.5  # the Falcon 4 MTF is well below 1 near Nyquist


def test_inputs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="half1/half2/mask"):
        postprocess(
            np.zeros((8, 8, 8)),
            np.zeros((8, 8, 8)),
            np.zeros((6, 6, 6)),
            pixel_size_a=1.0,
        )
    with pytest.raises(StageInputError, match=r"missing\.star"):
        read_mtf_star(tmp_path / "missing.star", detector_pixel_size_a=1.0)
