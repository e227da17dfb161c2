"""Blob picker: multi-scale Laplacian of Gaussian on a downscaled micrograph.

Without a CTF (smooth, high-contrast blobs) the micrograph is Fourier-cropped to a
coarse pixel (a tenth of the smallest diameter) and filtered in Fourier space with
scale-normalised LoG kernels ``sigma^2 * 4 pi^2 k^2 exp(-2 pi^2 sigma^2 k^2)`` whose
blob diameter ``2 sqrt(2) sigma`` spans ``diameter_range_a``; the best scale gives
the score and the diameter.

With the micrograph's CTF (what real particles need: near focus a particle has
almost no power at its own scale, so a LoG of the image sees nothing, phase-flipped
or not) the cropped micrograph (pixel a twentieth of the smallest diameter) is
multiplied by its CTF (phase flip weighted by ``|CTF|``, the CTF's matched filter)
and low-passed at a fifth of the diameter; the square of that band is the local
energy, a blob of particle size wherever a particle is.  The energy is filtered with
centre-surround kernels (the mean over a ball's projection minus the mean over the
shell out to 1.6 diameters, the LoG's role for a flat-topped blob); the middle scale
detects (larger ones straddle neighbours), the best scale gives the diameter.

Each response is put in robust standard deviations (median absolute deviation of
the map).  Local maxima above ``threshold_sd`` are kept, then non-maximum
suppression at ``min_distance_a`` and an edge margin.  Coordinates come back in the
original micrograph's pixels.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.errors import StageInputError
from pipelines.picking.filters import downscale_shape, fourier_crop
from pipelines.picking.picks import Picks, drop_edge_picks, suppress_non_maxima

__all__ = ["find_peaks", "pick_blob", "robust_sd"]


def robust_sd(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation."""
    flat = values.ravel()
    return float(1.4826 * np.median(np.abs(flat - np.median(flat)))) or 1.0


def find_peaks(
    score: np.ndarray, *, threshold: float, window_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of local maxima of ``score`` at or above ``threshold`` (as
    :func:`pipelines.picking.picks.filter_picks`: thresholds after picking equal re-picking)."""
    size = max(3, int(window_px) | 1)
    local_max = ndimage.maximum_filter(score, size=size, mode="nearest")
    rows, cols = np.nonzero((score >= local_max) & (score >= threshold))
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
    finer than the micrograph; a twentieth with ``ctf``).  ``ctf`` switches to the
    CTF-matched local energy (module docstring).
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
    default_px_a = d_min / (10.0 if ctf is None else 20.0)
    pick_px_a = max(pixel_size_a, downscale_to_a or default_px_a)
    small_shape = downscale_shape(image.shape, pick_px_a / pixel_size_a)
    scale_y = image.shape[0] / small_shape[0]
    scale_x = image.shape[1] / small_shape[1]
    pick_px_a = pixel_size_a * scale_x

    small = fourier_crop(image - image.mean(), small_shape, workers=workers)
    if dark_particles:
        small = -small
    spectrum = scipy.fft.rfft2(small, workers=workers)
    ky = np.fft.fftfreq(small_shape[0])[:, None].astype(np.float32)
    kx = np.fft.rfftfreq(small_shape[1])[None, :].astype(np.float32)
    k2 = ky * ky + kx * kx
    if ctf is not None:
        spectrum = _ctf_energy_spectrum(
            spectrum, ctf, k2, pick_px_a, d_min, small_shape, workers
        )
    diameters_a = np.geomspace(d_min, d_max, n_scales) if d_max > d_min else [d_min]
    if ctf is None:
        sigmas = np.asarray(diameters_a) / pick_px_a / (2.0 * np.sqrt(2.0))
        s2 = (sigmas * sigmas)[:, None, None].astype(np.float32)
        kernels = s2 * (4.0 * np.pi**2) * k2 * np.exp(-2.0 * np.pi**2 * s2 * k2)
    else:
        kernels = _centre_surround(np.asarray(diameters_a) / pick_px_a, k2)
    responses = scipy.fft.irfft2(
        spectrum[None] * kernels, s=small_shape, workers=workers
    )
    sds = np.array([robust_sd(r) for r in responses[:, ::4, ::4]])
    medians = np.median(responses[:, ::4, ::4].reshape(len(diameters_a), -1), axis=1)
    responses = (responses - medians[:, None, None]) / sds[:, None, None]
    best_scale = np.argmax(responses, axis=0)
    if ctf is None:
        score = np.take_along_axis(responses, best_scale[None], axis=0)[0]
    else:  # the largest scales straddle neighbours: detect at the middle scale
        score = responses[len(diameters_a) // 2]

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
    return drop_edge_picks(picks, image.shape, edge_px)


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


def _ctf_energy_spectrum(
    spectrum: np.ndarray,
    ctf: CtfParams,
    k2: np.ndarray,
    pick_px_a: float,
    d_min_a: float,
    shape: tuple[int, int],
    workers: int,
) -> np.ndarray:
    """Spectrum of the local energy of the CTF-matched, low-passed micrograph.

    Near focus a particle's image has almost no power at the particle's own scale
    (the CTF is about the amplitude contrast there), so a LoG of the image itself
    sees nothing.  Multiplying by the CTF (phase flip weighted by ``|CTF|``, the
    matched filter of the CTF) and low-passing at a fifth of the diameter keeps the
    band where the signal is; its square is a blob of particle size wherever a
    particle is, which the centre-surround kernels then find.
    """
    envelope = np.exp(-k2 * (d_min_a / 5.0 / pick_px_a) ** 2)
    band = scipy.fft.irfft2(
        spectrum * ctf_2d(shape, pick_px_a, ctf) * envelope, s=shape, workers=workers
    )
    energy = band * band
    return np.asarray(scipy.fft.rfft2(energy - energy.mean(), workers=workers))


def _ball_transfer(diameter_px: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """Fourier transform of the projection of a ball (value 1 at k = 0):
    ``3 (sin x - x cos x) / x^3`` with ``x = pi d k``; ``(n_scales, *k2.shape)``."""
    x = np.pi * diameter_px[:, None, None] * np.sqrt(k2)[None]
    x = np.maximum(x, 1e-4)
    return np.asarray(3.0 * (np.sin(x) - x * np.cos(x)) / x**3, dtype=np.float32)


def _centre_surround(diameter_px: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """Zero-mean kernels: mean over a ball's projection of ``diameter_px`` minus the
    mean over the shell out to 1.6 diameters (the local background)."""
    inner = _ball_transfer(diameter_px, k2)
    outer = _ball_transfer(1.6 * diameter_px, k2)
    v_outer = 1.6**3  # relative volumes (projected weights) of the two balls
    return np.asarray(inner - (v_outer * outer - inner) / (v_outer - 1.0))
