"""CTF zeros in simulated images, MTF files, radiation damage by dose."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.fft

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.errors import StageInputError
from pipelines.simulate.micrograph import MicrographParams, simulate_micrograph
from pipelines.simulate.optics import (
    apply_mtf,
    critical_exposure_e_per_a2,
    damage_filter,
    mtf_2d,
    read_mtf,
)

ASTIGMATIC = CtfParams(
    defocus_u_a=12000.0, defocus_v_a=9000.0, astigmatism_angle_deg=35.0, bfactor_a2=0.0
)


def ice_only_power(ctf: CtfParams, rng: np.random.Generator) -> np.ndarray:
    params = MicrographParams(
        shape_px=(256, 256),
        pixel_size_a=1.2,
        n_particles=0,
        ctf=ctf,
        ice_phase_sd_rad=0.05,
    )
    image, _ = simulate_micrograph(params, rng)
    return np.abs(scipy.fft.rfft2(image - image.mean())) ** 2


@pytest.mark.parametrize("angle_deg", [35.0, 120.0])
def test_simulated_image_has_ctf_zeros_where_the_model_predicts(
    angle_deg: float, rng: np.random.Generator
) -> None:
    truth = replace(ASTIGMATIC, astigmatism_angle_deg=angle_deg)
    power = ice_only_power(truth, rng)
    ctf = ctf_2d((256, 256), 1.2, truth)
    ring = np.hypot(
        *np.meshgrid(np.fft.fftfreq(256), np.fft.rfftfreq(256), indexing="ij")
    )
    band = (ring > 0.05) & (ring < 0.45)
    at_zeros = power[band & (np.abs(ctf) < 0.05)].mean()
    at_peaks = power[band & (np.abs(ctf) > 0.95)].mean()
    assert at_zeros < 0.01 * at_peaks
    # The astigmatism axis matters: zeros of the model turned by 90 degrees do not fit.
    wrong = ctf_2d(
        (256, 256), 1.2, replace(truth, astigmatism_angle_deg=angle_deg + 90)
    )
    assert power[band & (np.abs(wrong) < 0.05)].mean() > 0.2 * at_peaks


def test_particles_are_dark_in_a_raw_micrograph(rng: np.random.Generator) -> None:
    params = MicrographParams(
        shape_px=(512, 512),
        pixel_size_a=2.0,
        n_particles=12,
        ice_phase_sd_rad=0.0,
        ctf=CtfParams(defocus_u_a=20000.0, defocus_v_a=20000.0),
        phantom_box_px=48,
    )
    image, truth = simulate_micrograph(params, rng)
    background = np.median(image)
    yy, xx = np.mgrid[:512, :512]
    for x, y in truth.coordinates_px:
        inside = (xx - x) ** 2 + (yy - y) ** 2 < 8**2
        assert image[inside].mean() < background


def test_read_mtf_matches_the_file(shared_data: Path) -> None:
    path = shared_data / "real" / "mtf_falcon4EC_300kV.star"
    rows = [
        [float(v) for v in line.split()]
        for line in path.read_text().splitlines()
        if line.strip() and line.strip()[0].isdigit()
    ]
    table = np.array(rows)
    freq, mtf = read_mtf(path)
    np.testing.assert_allclose(freq, 2.0 * table[:, 0])  # fraction of Nyquist
    np.testing.assert_allclose(mtf, table[:, 1])
    for name in ("mtf_k2_300kV.star", "mtf_falcon3EC_300kV.star"):
        f, m = read_mtf(shared_data / "real" / name)
        assert f[0] == 0.0
        assert f[-1] <= 1.0
        assert np.all(np.diff(m) < 0.05)


def test_mtf_on_the_grid_and_applied(
    shared_data: Path, rng: np.random.Generator
) -> None:
    freq, mtf = read_mtf(shared_data / "real" / "mtf_k2_300kV.star")
    grid = mtf_2d((64, 64), freq, mtf)
    assert grid[0, 0] == pytest.approx(mtf[0], abs=1e-6)
    assert grid[0, 32] == pytest.approx(np.interp(1.0, freq, mtf), abs=1e-6)
    noise = rng.normal(size=(64, 64)).astype(np.float32)
    blurred = apply_mtf(noise, freq, mtf)
    ratio = np.abs(scipy.fft.rfft2(blurred)) / np.abs(scipy.fft.rfft2(noise))
    np.testing.assert_allclose(ratio, grid, rtol=1e-3, atol=1e-4)


def test_read_mtf_names_a_file_without_the_table(tmp_path: Path) -> None:
    bad = tmp_path / "mtf.star"
    bad.write_text("data_\nloop_\n_rlnFoo\n1\n2\n")
    with pytest.raises(StageInputError, match="rlnResolutionInversePixel"):
        read_mtf(bad)


def test_damage_attenuates_high_frequencies_more_at_high_dose() -> None:
    low, high = damage_filter((128, 128), 1.0, np.array([5.0, 40.0]), 300.0)
    assert low[0, 0] == 1.0
    assert high[0, 0] == 1.0
    k_fine, k_coarse = (0, 40), (0, 5)  # 1/3.2 Å and 1/25.6 Å
    assert high[k_fine] < low[k_fine] < 1.0
    assert high[k_fine] < high[k_coarse]
    assert np.all(high <= low + 1e-7)
    # 200 kV electrons damage more per e/Å^2: the critical exposure is 0.8 times.
    ne300 = critical_exposure_e_per_a2(np.array([0.3]), 300.0)
    ne200 = critical_exposure_e_per_a2(np.array([0.3]), 200.0)
    np.testing.assert_allclose(ne200 / ne300, 0.8)
    # At the critical exposure the amplitude is exp(-1/2).
    at_critical = damage_filter((128, 128), 1.0, float(ne300[0]), 300.0)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.rfftfreq(128), indexing="ij"))
    closest = np.unravel_index(np.argmin(np.abs(k - 0.3)), k.shape)
    assert at_critical[closest] == pytest.approx(np.exp(-0.5), abs=0.02)
