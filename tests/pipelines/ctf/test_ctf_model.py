"""Physics of the CTF model: wavelength, zeros, astigmatism axis, sign."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.ctf.model import CtfParams, ctf_2d, ctf_phase, electron_wavelength_a


@pytest.mark.parametrize(
    ("voltage_kv", "wavelength_a"),
    [(300.0, 0.019687), (200.0, 0.025079), (100.0, 0.037014)],
)
def test_wavelength_matches_tabulated_values(
    voltage_kv: float, wavelength_a: float
) -> None:
    assert electron_wavelength_a(voltage_kv) == pytest.approx(wavelength_a, rel=2e-4)


def test_first_zero_of_isotropic_ctf_is_where_the_phase_is_pi() -> None:
    # Without Cs and amplitude contrast, -sin(chi) is zero at pi*lambda*dz*k^2 = pi.
    params = CtfParams(
        defocus_u_a=20000.0, defocus_v_a=20000.0, cs_mm=0.0, amplitude_contrast=0.0
    )
    lam = electron_wavelength_a(300.0)
    k_zero = np.sqrt(1.0 / (lam * 20000.0))
    ks = np.linspace(0.5 * k_zero, 1.5 * k_zero, 20001)
    values = -np.sin(ctf_phase(np.zeros_like(ks), ks, params))
    crossing = ks[np.argmin(np.abs(values))]
    assert crossing == pytest.approx(k_zero, rel=1e-3)


def test_low_frequency_sign_is_positive_and_equals_amplitude_contrast() -> None:
    params = CtfParams(defocus_u_a=15000.0, defocus_v_a=15000.0, amplitude_contrast=0.1)
    ctf = ctf_2d((64, 64), 1.0, params, dtype=np.float64)
    assert ctf[0, 0] == pytest.approx(0.1, abs=1e-9)


def test_astigmatism_angle_sets_the_axis_of_defocus_u() -> None:
    # Along the defocus-U axis the rings are closer (more defocus): the first zero
    # comes at a lower frequency than along the perpendicular V axis.
    angle_deg = 30.0
    params = CtfParams(
        defocus_u_a=25000.0,
        defocus_v_a=15000.0,
        astigmatism_angle_deg=angle_deg,
        cs_mm=0.0,
        amplitude_contrast=0.0,
    )
    lam = electron_wavelength_a(300.0)
    ks = np.linspace(1e-4, 0.1, 80001)

    def first_zero(theta: float) -> float:
        phase = ctf_phase(ks * np.sin(theta), ks * np.cos(theta), params)
        return float(ks[np.argmax(np.abs(phase) >= np.pi)])

    theta_u = np.deg2rad(angle_deg)
    assert first_zero(theta_u) == pytest.approx(np.sqrt(1 / (lam * 25000.0)), rel=1e-3)
    assert first_zero(theta_u + np.pi / 2) == pytest.approx(
        np.sqrt(1 / (lam * 15000.0)), rel=1e-3
    )


def test_bfactor_envelope_and_rfft_shape() -> None:
    params = CtfParams(defocus_u_a=10000.0, defocus_v_a=10000.0)
    plain = ctf_2d((32, 48), 2.0, params, dtype=np.float64)
    damped = ctf_2d(
        (32, 48),
        2.0,
        CtfParams(defocus_u_a=10000.0, defocus_v_a=10000.0, bfactor_a2=200.0),
        dtype=np.float64,
    )
    assert plain.shape == (32, 25)
    assert ctf_2d((32, 48), 2.0, params, rfft=False).shape == (32, 48)
    nyquist = 1 / (2 * 2.0)
    assert damped[0, -1] == pytest.approx(plain[0, -1] * np.exp(-50.0 * nyquist**2))
