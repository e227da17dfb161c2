"""CTF estimation recovers known defocus, astigmatism and phase shift.

Micrographs come from :func:`make_thon_micrograph` (CTF of ``pipelines.ctf.model``,
1/f specimen, CTF-free background, ice gradient, Poisson noise at 30 e/Å²).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.ctf.search import make_fit_band, score_candidates
from pipelines.ctf.spectrum import radial_index
from pipelines.errors import StageInputError
from pipelines.simulate.thon import make_thon_micrograph


def _truth(mean_a: float, astig_a: float, angle_deg: float, **kw: float) -> CtfParams:
    return CtfParams(
        defocus_u_a=mean_a + astig_a / 2,
        defocus_v_a=mean_a - astig_a / 2,
        astigmatism_angle_deg=angle_deg,
        bfactor_a2=40.0,
        **kw,
    )


def _angle_error_deg(found: float, true: float) -> float:
    return abs((found - true + 90.0) % 180.0 - 90.0)


CASES = [
    (5000.0, 0.0, 0.0),
    (12000.0, 300.0, 20.0),
    (20000.0, 1000.0, -60.0),
    (28000.0, 500.0, 75.0),
    (35000.0, 800.0, -10.0),
]


def test_handful_of_cases_recovered(rng: np.random.Generator) -> None:
    errors, angle_errors = [], []
    for mean, astig, angle in CASES:
        truth = _truth(mean, astig, angle)
        image = make_thon_micrograph(truth, contrast=0.1, rng=rng)
        fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7)
        found_mean = 0.5 * (fit.defocus_u_a + fit.defocus_v_a)
        errors.append(abs(found_mean - mean) / mean)
        print(
            f"true {truth.defocus_u_a:.0f}/{truth.defocus_v_a:.0f}/{angle:.0f}  "
            f"fit {fit.defocus_u_a:.0f}/{fit.defocus_v_a:.0f}/"
            f"{fit.astigmatism_angle_deg:.1f}  FOM {fit.figure_of_merit:.3f}  "
            f"fit resolution {fit.fit_resolution_a:.2f} Å"
        )
        assert fit.trusted, fit.reasons
        assert abs(fit.astigmatism_a - astig) < 150.0
        if astig >= 200.0:
            angle_errors.append(_angle_error_deg(fit.astigmatism_angle_deg, angle))
    print(f"median |defocus error| {100 * np.median(errors):.3f} %")
    assert np.median(errors) <= 0.005
    assert max(errors) <= 0.01
    assert max(angle_errors) <= 5.0


def test_relion_conventions_u_not_below_v_and_angle_in_range(
    rng: np.random.Generator,
) -> None:
    # Truth given with V > U and an angle outside [-90, 90): the same CTF as
    # U = 16000 Å along 170 + 90 = 260 = 80 (mod 180) degrees, V = 15200 Å.
    truth = CtfParams(
        defocus_u_a=15200.0,
        defocus_v_a=16000.0,
        astigmatism_angle_deg=170.0,
        bfactor_a2=40.0,
    )
    image = make_thon_micrograph(truth, contrast=0.1, rng=rng)
    fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7)
    assert fit.defocus_u_a >= fit.defocus_v_a
    assert -90.0 <= fit.astigmatism_angle_deg < 90.0
    assert fit.defocus_u_a == pytest.approx(16000.0, rel=0.005)
    assert fit.defocus_v_a == pytest.approx(15200.0, rel=0.005)
    assert _angle_error_deg(fit.astigmatism_angle_deg, 80.0) <= 5.0
    assert fit.astigmatism_a == pytest.approx(fit.defocus_u_a - fit.defocus_v_a)


@pytest.mark.parametrize(("mean_a", "phase_deg"), [(6000.0, 60.0), (9000.0, 120.0)])
def test_phase_plate_shift_recovered(
    rng: np.random.Generator, mean_a: float, phase_deg: float
) -> None:
    truth = _truth(mean_a, 300.0, 20.0, phase_shift_deg=phase_deg)
    image = make_thon_micrograph(truth, contrast=0.1, rng=rng)
    fit = estimate_ctf(
        image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7, phase_plate=True
    )
    print(f"phase {phase_deg} -> {fit.phase_shift_deg:.1f}; mean defocus {mean_a}")
    assert abs(fit.phase_shift_deg - phase_deg) <= 10.0
    assert 0.5 * (fit.defocus_u_a + fit.defocus_v_a) == pytest.approx(mean_a, rel=0.02)


def test_without_phase_plate_phase_shift_is_zero(rng: np.random.Generator) -> None:
    image = make_thon_micrograph(_truth(15000.0, 0.0, 0.0), contrast=0.1, rng=rng)
    fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7)
    assert fit.phase_shift_deg == 0.0


def test_pure_noise_is_not_trusted(rng: np.random.Generator) -> None:
    image = rng.poisson(30.0, size=(1024, 1024)).astype(np.float32)
    fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7)
    assert not fit.trusted
    assert fit.reasons
    assert fit.figure_of_merit < 0.1


def test_defocus_outside_the_search_range_is_flagged(rng: np.random.Generator) -> None:
    image = make_thon_micrograph(_truth(20000.0, 0.0, 0.0), contrast=0.1, rng=rng)
    fit = estimate_ctf(
        image,
        pixel_size_a=1.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        defocus_range_a=(3000.0, 12000.0),
    )
    assert not fit.trusted


def test_fit_band_phase_is_ctf_model_phase() -> None:
    # The batched score builds chi from ctf_phase at zero defocus plus the defocus
    # term; its model must be ctf_model's CTF² exactly.
    truth = CtfParams(
        defocus_u_a=21000.0,
        defocus_v_a=19000.0,
        astigmatism_angle_deg=35.0,
        phase_shift_deg=40.0,
        amplitude_contrast=0.07,
    )
    _, ky_px, kx_px = radial_index(64)
    ky, kx = ky_px / 64.0, kx_px / 64.0
    model = ctf_2d((64, 64), 1.0, truth, dtype=np.float64) ** 2
    mask = (ky_px != 0) | (kx_px != 0)
    band = make_fit_band(
        model, ky, kx, mask, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07
    )
    half = 1000.0
    angle = np.deg2rad(70.0)
    candidate = np.array([[20000.0, half * np.cos(angle), half * np.sin(angle), 40.0]])
    assert score_candidates(band, candidate)[0] == pytest.approx(1.0, abs=1e-5)
    wrong = candidate + np.array([[300.0, 0.0, 0.0, 0.0]])
    assert score_candidates(band, wrong)[0] < 0.9


def test_diagnostic_arrays_are_centred_spectrum_and_model(
    rng: np.random.Generator,
) -> None:
    image = make_thon_micrograph(_truth(15000.0, 400.0, 30.0), contrast=0.1, rng=rng)
    fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7)
    expected = np.fft.fftshift(
        ctf_2d((512, 512), 1.0, fit.params, rfft=False, dtype=np.float64) ** 2
    )
    assert fit.spectrum.shape == fit.model.shape == (512, 512)
    # Row and column 0 hold the Nyquist frequency, +1/2 or -1/2 by convention.
    np.testing.assert_allclose(fit.model[1:, 1:], expected[1:, 1:], atol=1e-5)
    # The spectrum is centro-symmetric (a real image) like the model.
    np.testing.assert_allclose(
        fit.spectrum[1:, 1:], fit.spectrum[1:, 1:][::-1, ::-1], atol=1e-5
    )


def test_bad_inputs_raise_stage_input_error() -> None:
    with pytest.raises(StageInputError, match=r"micrograph\.shape"):
        estimate_ctf(
            np.zeros((2, 64, 64)), pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7
        )
    with pytest.raises(StageInputError, match="pixel_size_a"):
        estimate_ctf(np.zeros((128, 128)), pixel_size_a=0.0, voltage_kv=300, cs_mm=2.7)
    with pytest.raises(StageInputError, match="resolution_range_a"):
        estimate_ctf(
            np.zeros((128, 128)),
            pixel_size_a=1.0,
            voltage_kv=300,
            cs_mm=2.7,
            resolution_range_a=(5.0, 30.0),
        )
    with pytest.raises(StageInputError, match="smaller than 64"):
        estimate_ctf(np.zeros((32, 32)), pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7)


@pytest.mark.slow
def test_sweep_over_defocus_and_astigmatism_at_realistic_snr() -> None:
    rng = np.random.default_rng(42)
    errors, angle_errors = [], []
    for _ in range(16):
        mean = rng.uniform(5000.0, 35000.0)
        astig = rng.uniform(0.0, 1000.0)
        angle = rng.uniform(-90.0, 90.0)
        truth = _truth(mean, astig, angle)
        image = make_thon_micrograph(truth, shape=(2048, 2048), contrast=0.05, rng=rng)
        fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7)
        errors.append(abs(0.5 * (fit.defocus_u_a + fit.defocus_v_a) - mean) / mean)
        if astig >= 200.0:
            angle_errors.append(_angle_error_deg(fit.astigmatism_angle_deg, angle))
    print(
        f"median |defocus error| {100 * np.median(errors):.3f} % "
        f"(max {100 * max(errors):.3f} %); angle error where astigmatism >= 200 Å: "
        f"median {np.median(angle_errors):.2f}, max {max(angle_errors):.2f} deg"
    )
    assert np.median(errors) <= 0.005
    assert max(angle_errors) <= 5.0
