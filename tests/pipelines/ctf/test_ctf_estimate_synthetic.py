"""A check of the synthetic Thon-ring generator (:mod:`pipelines.simulate.thon`)."""

from __future__ import annotations

import numpy as np
import scipy.fft

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.simulate.thon import make_thon_micrograph


def test_synthetic_spectrum_has_minima_at_the_ctf_zeros(
    rng: np.random.Generator,
) -> None:
    params = CtfParams(defocus_u_a=15000.0, defocus_v_a=15000.0, cs_mm=2.7)
    image = make_thon_micrograph(params, rng=rng, dose_e_per_a2=200.0, contrast=0.5)
    power = np.abs(scipy.fft.rfft2(image - image.mean())) ** 2
    ctf = ctf_2d(image.shape, 1.0, params, dtype=np.float64)
    k = np.hypot(
        scipy.fft.fftfreq(image.shape[0])[:, None],
        scipy.fft.rfftfreq(image.shape[1])[None, :],
    )
    band = (k > 1 / 20) & (k < 1 / 6)
    near_zero = band & (ctf**2 < 0.05)
    near_peak = band & (ctf**2 > 0.95)
    # Where the CTF vanishes only background is left: clearly less power.
    assert power[near_zero].mean() < 0.7 * power[near_peak].mean()
    assert image.dtype == np.float32
    assert image.min() >= 0
    assert abs(image.mean() - 200.0) < 10.0
