"""CTF estimation on micrographs from the project's simulator (particles in ice)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.model import CtfParams

micrograph = pytest.importorskip("pipelines.simulate.micrograph")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("u_a", "v_a", "angle_deg"), [(15500.0, 14500.0, 30.0), (25000.0, 24600.0, -50.0)]
)
def test_simulated_particles_in_ice(u_a: float, v_a: float, angle_deg: float) -> None:
    rng = np.random.default_rng(11)
    params = micrograph.MicrographParams(
        shape_px=(2048, 2048),
        n_particles=150,
        ice_phase_sd_rad=0.1,
        ctf=CtfParams(
            defocus_u_a=u_a, defocus_v_a=v_a, astigmatism_angle_deg=angle_deg
        ),
    )
    image, truth = micrograph.simulate_micrograph(params, rng, dose_e_per_a2=40.0)
    fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7)
    print(
        f"simulator: U {fit.defocus_u_a:.0f} V {fit.defocus_v_a:.0f} "
        f"angle {fit.astigmatism_angle_deg:.1f} FOM {fit.figure_of_merit:.3f}"
    )
    assert fit.trusted, fit.reasons
    assert fit.defocus_u_a == pytest.approx(truth.ctf.defocus_u_a, rel=0.01)
    assert fit.defocus_v_a == pytest.approx(truth.ctf.defocus_v_a, rel=0.01)
    angle_error = abs((fit.astigmatism_angle_deg - angle_deg + 90.0) % 180.0 - 90.0)
    assert angle_error <= 5.0
