"""Fourier-space filters shared by the pickers and extraction.

Fourier cropping (downscaling without aliasing), the radial power spectrum used to
whiten a micrograph, and a circular mask.  Images are ``(..., ny, nx)``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from numpy.typing import NDArray

__all__ = [
    "circular_mask",
    "crop_spectrum",
    "downscale_shape",
    "fourier_crop",
    "radial_profile_filter",
]


def downscale_shape(
    shape: tuple[int, int], factor: float, *, fast: bool = False
) -> tuple[int, int]:
    """Even ``(ny, nx)`` after downscaling ``shape`` by ``factor`` (≥ 1).

    ``fast`` rounds each size up to an even length that FFTs fast (never beyond
    ``shape``): 394 = 2 x 197 would cost ~3x the time of 400.
    """
    out = [max(2, 2 * round(n / factor / 2)) for n in shape]
    if fast:
        out = [
            min(n, 2 * scipy.fft.next_fast_len(m // 2, real=True))
            for n, m in zip(shape, out, strict=True)
        ]
    return out[0], out[1]


def crop_spectrum(spectrum: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Keep the low frequencies of an ``rfft2`` spectrum for an image of ``out_shape``.

    ``spectrum`` is ``(..., ny, nx // 2 + 1)``; ``out_shape`` (even, no larger).
    """
    oy, ox = out_shape
    half = oy // 2
    rows = np.concatenate([spectrum[..., :half, :], spectrum[..., -half:, :]], axis=-2)
    return rows[..., : ox // 2 + 1]


def fourier_crop(
    images: np.ndarray, out_shape: tuple[int, int], *, workers: int = -1
) -> NDArray[np.float32]:
    """Downscale ``(..., ny, nx)`` images to ``(..., oy, ox)`` by Fourier cropping.

    Pixel values keep their scale (a constant image stays the same constant), and
    pixel 0 of the output sits at pixel 0 of the input: a point at ``x`` maps to
    ``x * ox / nx``.
    """
    ny, nx = images.shape[-2:]
    oy, ox = out_shape
    if (oy, ox) == (ny, nx):
        return np.asarray(images, dtype=np.float32)
    spectrum = scipy.fft.rfft2(np.asarray(images, dtype=np.float32), workers=workers)
    cropped = crop_spectrum(spectrum, out_shape)
    out: NDArray[np.float32] = scipy.fft.irfft2(cropped, s=out_shape, workers=workers)
    out *= (oy * ox) / (ny * nx)
    return out.astype(np.float32, copy=False)


def radial_profile_filter(
    power: np.ndarray, shape: tuple[int, int], *, n_bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rotational average of an ``rfft2`` power spectrum.

    Returns ``(k_edges, profile)``: ``profile[i]`` is the mean power at radial
    frequencies (cycles per pixel) in ``[k_edges[i], k_edges[i + 1])``; use
    ``np.interp`` to evaluate it on any grid.
    """
    ny, nx = shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    n_bins = n_bins or max(8, min(ny, nx) // 2)
    edges = np.linspace(0.0, np.sqrt(0.5) + 1e-9, n_bins + 1)
    index = np.clip(np.digitize(k, edges) - 1, 0, n_bins - 1)
    sums = np.bincount(index.ravel(), weights=power.ravel(), minlength=n_bins)
    counts = np.bincount(index.ravel(), minlength=n_bins)
    profile = sums / np.maximum(counts, 1)
    filled = counts > 0
    centres = 0.5 * (edges[:-1] + edges[1:])
    profile = np.interp(centres, centres[filled], profile[filled])
    return centres, profile


def circular_mask(box_px: int, radius_px: float) -> np.ndarray:
    """``(box, box)`` boolean disc of ``radius_px`` about the box centre ``box // 2``."""
    coords = np.arange(box_px) - box_px // 2
    r2 = coords[:, None] ** 2 + coords[None, :] ** 2
    return r2 <= radius_px * radius_px
