"""Synthetic Thon-ring micrographs with a known CTF (CTF tests and benchmarks): a
white "specimen" with a 1/f-like falloff, multiplied in Fourier space by the CTF of
``pipelines.ctf.model``, damped by a B-factor, plus a CTF-free structured background
(falling spectrum), a smooth ice gradient, and Poisson shot noise at the given dose.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from pipelines.ctf.model import CtfParams, ctf_2d

__all__ = ["make_thon_micrograph"]


def make_thon_micrograph(
    params: CtfParams,
    *,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_a: float = 1.0,
    dose_e_per_a2: float = 30.0,
    contrast: float = 0.05,
    background_contrast: float = 0.05,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """A float32 micrograph ``shape`` (ny, nx) in counts per pixel, CTF = ``params``.

    ``contrast`` is the standard deviation of the CTF-modulated image relative to
    the mean dose; ``background_contrast`` that of the CTF-free background.
    """
    ky = scipy.fft.fftfreq(shape[0], d=pixel_size_a)[:, None]
    kx = scipy.fft.rfftfreq(shape[1], d=pixel_size_a)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    falloff = 1.0 / (1.0 + k / 0.02)  # 1/f beyond 50 Å

    def filtered(gain: NDArray[np.float64]) -> NDArray[np.float64]:
        white = rng.standard_normal(shape)
        image: NDArray[np.float64] = scipy.fft.irfft2(
            scipy.fft.rfft2(white) * gain, s=shape
        )
        return image / float(image.std())

    ctf = ctf_2d(shape, pixel_size_a, params, dtype=np.float64)
    specimen = filtered(falloff * -ctf)  # dark particles: the image carries -CTF
    background = filtered(1.0 / (1.0 + k / 0.05) ** 2)
    # the ice gradient from a column and a row (broadcast, no full index grids)
    yy = np.arange(shape[0])[:, None] / max(shape)
    xx = np.arange(shape[1])[None, :] / max(shape)
    gradient = 0.1 * (xx - 0.5) + 0.05 * (yy - 0.5) ** 2
    mean = dose_e_per_a2 * pixel_size_a**2
    relative = contrast * specimen
    relative += 1.0
    relative += background_contrast * background
    relative += gradient
    np.clip(relative, 0.0, None, out=relative)
    relative *= mean
    counts: NDArray[np.int64] = rng.poisson(relative)
    return counts.astype(np.float32)
