"""Blob picker: multi-scale Laplacian of Gaussian on a downscaled micrograph.

The micrograph is Fourier-cropped to a coarse pixel (about a tenth of the smallest
diameter), optionally phase-flipped with its CTF (which turns the ringing image of
a particle back into a blob), and filtered in Fourier space with scale-normalised
LoG kernels ``sigma^2 * 4 pi^2 k^2 exp(-2 pi^2 sigma^2 k^2)`` whose blob diameter
``2 sqrt(2) sigma`` spans ``diameter_range_a``.  Each response is expressed in
robust standard deviations (median absolute deviation of the map); the maximum
over scales is the score, its scale the diameter.  Local maxima above
``threshold_sd`` are kept, then non-maximum suppression at ``min_distance_a`` and an
edge margin.  Coordinates come back in the original micrograph's pixels.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from pipelines.ctf_model import CtfParams, ctf_2d
from pipelines.errors import StageInputError
from pipelines.pick_filters import downscale_shape, fourier_crop
from pipelines.picks import Picks, suppress_non_maxima

__all__ = ["find_peaks", "pick_blob", "robust_sd"]


def robust_sd(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation."""
    flat = values.ravel()
    return float(1.4826 * np.median(np.abs(flat - np.median(flat)))) or 1.0


def find_peaks(
    score: np.ndarray, *, threshold: float, window_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of local maxima of ``score`` above ``threshold``."""
    size = max(3, int(window_px) | 1)
    local_max = ndimage.maximum_filter(score, size=size, mode="nearest")
    rows, cols = np.nonzero((score >= local_max) & (score > threshold))
    return rows, cols


def pick_blob(
    micrograph: np.ndarray,
    *,
    pixel_size_a: float,
    diameter_range_a: tuple[float, float],
    threshold_sd: float = 4.5,
    min_distance_a: float | None = None,
    edge_px: int = 0,
    downscale_to_a: float | None = None,
    n_scales: int = 5,
    ctf: CtfParams | None = None,
    dark_particles: bool = True,
    workers: int = -1,
) -> Picks:
    """Pick blob-like particles of a diameter in ``diameter_range_a`` (Å).

    micrograph: ``(ny, nx)``; ``edge_px`` (original pixels) excludes picks whose
    centre is closer to the border; ``min_distance_a`` defaults to the smallest
    diameter; ``downscale_to_a`` defaults to a tenth of the smallest diameter (never
    finer than the micrograph).  ``ctf`` phase-flips before filtering.
    """
    image = np.asarray(micrograph)
    if image.ndim != 2:
        raise StageInputError(
            "<array>", "micrograph.shape", image.shape, "need (ny, nx)"
        )
    d_min, d_max = sorted(float(d) for d in diameter_range_a)
    if d_min <= 0 or pixel_size_a <= 0:
        raise StageInputError(
            "<array>", "diameter_range_a", diameter_range_a, "must be positive"
        )
    pick_px_a = max(pixel_size_a, downscale_to_a or d_min / 10.0)
    small_shape = downscale_shape(image.shape, pick_px_a / pixel_size_a)
    scale_y = image.shape[0] / small_shape[0]
    scale_x = image.shape[1] / small_shape[1]
    pick_px_a = pixel_size_a * scale_x

    small = fourier_crop(image - image.mean(), small_shape, workers=workers)
    if dark_particles:
        small = -small
    spectrum = scipy.fft.rfft2(small, workers=workers)
    if ctf is not None:
        spectrum *= np.sign(ctf_2d(small_shape, pick_px_a, ctf))
    ky = np.fft.fftfreq(small_shape[0])[:, None].astype(np.float32)
    kx = np.fft.rfftfreq(small_shape[1])[None, :].astype(np.float32)
    k2 = ky * ky + kx * kx
    diameters_a = np.geomspace(d_min, d_max, n_scales) if d_max > d_min else [d_min]
    sigmas = np.asarray(diameters_a) / pick_px_a / (2.0 * np.sqrt(2.0))
    s2 = (sigmas * sigmas)[:, None, None].astype(np.float32)
    kernels = s2 * (4.0 * np.pi**2) * k2 * np.exp(-2.0 * np.pi**2 * s2 * k2)
    responses = scipy.fft.irfft2(
        spectrum[None] * kernels, s=small_shape, workers=workers
    )
    sds = np.array([robust_sd(r) for r in responses[:, ::4, ::4]])
    medians = np.median(responses[:, ::4, ::4].reshape(len(sigmas), -1), axis=1)
    responses = (responses - medians[:, None, None]) / sds[:, None, None]
    best_scale = np.argmax(responses, axis=0)
    score = np.take_along_axis(responses, best_scale[None], axis=0)[0]

    min_dist_px = (min_distance_a or d_min) / pick_px_a
    rows, cols = find_peaks(score, threshold=threshold_sd, window_px=int(min_dist_px))
    power_map = _local_power(small, d_max / pick_px_a / 2.0, workers=workers)
    picks = Picks(
        x_px=cols * scale_x,
        y_px=rows * scale_y,
        score=score[rows, cols].astype(np.float64),
        power=power_map[rows, cols].astype(np.float64),
        diameter_a=np.asarray(diameters_a, dtype=np.float64)[best_scale[rows, cols]],
        pixel_size_a=pixel_size_a,
        shape=(int(image.shape[0]), int(image.shape[1])),
    )
    picks = suppress_non_maxima(picks, min_dist_px * scale_x)
    ny, nx = image.shape
    inside = (
        (picks.x_px >= edge_px)
        & (picks.x_px <= nx - 1 - edge_px)
        & (picks.y_px >= edge_px)
        & (picks.y_px <= ny - 1 - edge_px)
    )
    return picks.take(inside)


def _local_power(image: np.ndarray, radius_px: float, *, workers: int) -> np.ndarray:
    """Mean of ``image**2`` in a disc about every pixel, over the global mean."""
    ny, nx = image.shape
    y = np.minimum(np.arange(ny), ny - np.arange(ny))[:, None]
    x = np.minimum(np.arange(nx), nx - np.arange(nx))[None, :]
    disc = ((y * y + x * x) <= radius_px * radius_px).astype(np.float32)
    disc /= disc.sum()
    squared = image * image
    local = scipy.fft.irfft2(
        scipy.fft.rfft2(squared, workers=workers)
        * scipy.fft.rfft2(disc, workers=workers),
        s=image.shape,
        workers=workers,
    )
    return np.asarray(local / max(float(squared.mean()), 1e-30), dtype=np.float32)
