"""Synthetic Thon-ring micrographs with a known CTF, and a check of the generator.

:func:`make_thon_micrograph` is imported by the CTF tests and benchmarks: a white
"specimen" with a 1/f-like falloff, multiplied in Fourier space by the CTF of
``pipelines.ctf_model``, damped by a B-factor, plus a CTF-free structured background
(falling spectrum), a smooth ice gradient, and Poisson shot noise at the given dose.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from pipelines.ctf_model import CtfParams, ctf_2d


def make_thon_micrograph(
    params: CtfParams,
    *,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_a: float = 1.0,
    dose_e_per_a2: float = 30.0,
    contrast: float = 0.05,
    background_contrast: float = 0.05,
    rng: np.random.Generator,
) -> np.ndarray:
    """A float32 micrograph ``shape`` (ny, nx) in counts per pixel, CTF = ``params``.

    ``contrast`` is the standard deviation of the CTF-modulated image relative to
    the mean dose; ``background_contrast`` that of the CTF-free background.
    """
    ky = scipy.fft.fftfreq(shape[0], d=pixel_size_a)[:, None]
    kx = scipy.fft.rfftfreq(shape[1], d=pixel_size_a)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    falloff = 1.0 / (1.0 + k / 0.02)  # 1/f beyond 50 Å

    def filtered(gain: np.ndarray) -> np.ndarray:
        white = rng.standard_normal(shape)
        image = scipy.fft.irfft2(scipy.fft.rfft2(white) * gain, s=shape)
        return image / image.std()

    ctf = ctf_2d(shape, pixel_size_a, params, dtype=np.float64)
    specimen = filtered(falloff * -ctf)  # dark particles: the image carries -CTF
    background = filtered(1.0 / (1.0 + k / 0.05) ** 2)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    gradient = 0.1 * (xx - 0.5) + 0.05 * (yy - 0.5) ** 2
    mean = dose_e_per_a2 * pixel_size_a**2
    relative = 1.0 + contrast * specimen + background_contrast * background + gradient
    counts = rng.poisson(mean * np.clip(relative, 0.0, None))
    return counts.astype(np.float32)


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
