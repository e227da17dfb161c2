"""Any box size in, an even box inside: Fourier resampling of particles and averages.

The classifier's Fourier pixel grid, half-set moments and pose search are built for
an even box (a Nyquist row, a centre at ``N // 2`` with as many pixels on each
side in Fourier space).  Particle sets from other programs come in any size, so a
stack of odd box ``N`` is resampled in Fourier space to the *working box*
:func:`working_box_px` = ``N + 1`` (zero-padding its spectrum: nothing is lost and
the image is interpolated exactly, with the box centre ``N // 2`` kept on the
centre ``M // 2``), at the pixel size ``pixel_size_a * N / M`` that keeps the
physical field of view.  Even boxes are used as they are.

Why ``N + 1`` and not the next size with small prime factors: the run time is the
likelihood matrix products over the ``~ pi M^2 / 4`` Fourier pixels, which grow as
``M^2``, while the FFTs (one per particle per pass, pocketfft/cuFFT handle any size
in ``O(M log M)``) are a few percent of it; so the smallest even box is the
cheapest, and an even input keeps exactly the box and results it had before.

Outputs go back to the input box: class averages are resampled to ``N``
(:func:`resample_images`), origins are written in Å (the same physical shift at
either pixel size) and psi is a rotation about the same centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.fft

from pipelines.class2d.particles import ParticleStack
from pipelines.errors import StageInputError

__all__ = [
    "resample_images",
    "to_working_box",
    "working_box_px",
    "working_pixel_size_a",
]


def working_box_px(box_px: int) -> int:
    """The even box the classifier works at for an input box of ``box_px``."""
    if box_px < 8:
        raise StageInputError("<argument>", "box_px", box_px, "must be >= 8")
    return box_px + box_px % 2


def working_pixel_size_a(pixel_size_a: float, box_px: int) -> float:
    """The pixel size at :func:`working_box_px` that keeps the field of view
    (``pixel_size_a`` itself, bit for bit, for an even box)."""
    working = working_box_px(box_px)
    return pixel_size_a if working == box_px else pixel_size_a * box_px / working


def resample_images(images: np.ndarray, box_px: int) -> np.ndarray:
    """``images`` ``(..., N, N)`` resampled in Fourier space to ``(..., box_px,
    box_px)`` float32 over the same field of view (spectrum zero-padded or
    cropped about the zero frequency; the centre pixel ``N // 2`` goes to
    ``box_px // 2``; values keep their scale, so a constant stays that constant).
    A same-size call returns a float32 copy."""
    n = int(images.shape[-1])
    if images.ndim < 2 or images.shape[-2] != n:
        raise StageInputError("<array>", "images", images.shape, "must be (..., N, N)")
    if box_px < 2:
        raise StageInputError("<argument>", "box_px", box_px, "must be >= 2")
    if box_px == n:
        return np.array(images, dtype=np.float32)
    axes = (-2, -1)
    spectrum = scipy.fft.fftshift(
        scipy.fft.fft2(scipy.fft.ifftshift(images, axes=axes), axes=axes), axes=axes
    )
    size = min(n, box_px)
    # the common centred block: frequencies -(size // 2) ... (size - 1) // 2
    low_n, low_m = n // 2 - size // 2, box_px // 2 - size // 2
    block = (slice(None),) * (images.ndim - 2)
    out = np.zeros((*images.shape[:-2], box_px, box_px), dtype=np.complex128)
    out[(*block, slice(low_m, low_m + size), slice(low_m, low_m + size))] = spectrum[
        (*block, slice(low_n, low_n + size), slice(low_n, low_n + size))
    ]
    resampled = scipy.fft.fftshift(
        scipy.fft.ifft2(scipy.fft.ifftshift(out, axes=axes), axes=axes), axes=axes
    ).real * ((box_px / n) ** 2)
    return np.asarray(resampled, dtype=np.float32)


def to_working_box(particles: ParticleStack) -> ParticleStack:
    """The stack at :func:`working_box_px` of its box (itself when even), its pixel
    size scaled so the field of view and the CTFs stay the same."""
    box = particles.box_px
    working = working_box_px(box)
    if working == box:
        return particles
    return dataclasses.replace(
        particles,
        images=resample_images(particles.images, working),
        pixel_size_a=working_pixel_size_a(particles.pixel_size_a, box),
    )
