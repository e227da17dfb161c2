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
Where the particle's own scale is in the CTF's first lobe (mean ``|CTF|`` at the
largest diameter's frequency at least ``OWN_SCALE_TRANSFER``: small particles, or far
from focus; e.g. 30-50 Å at 2.7 µm, 0.70) the energy is not needed and loses them
among their neighbours: the CTF-multiplied image itself keeps each particle a blob of
its own sign, found with the LoG kernels as without a CTF.

Before any of it, what real micrographs add to the simulator is taken out: the
micrograph minus a robust quadratic surface (ice-thickness gradients; a ramp left in
wraps round the periodic border as a step), carbon, contamination and other regions
of extreme local mean or variance found on a block-averaged copy and filled with the
median (no picks there, and no step to ring through the Fourier crop), and the
cropped micrograph in robust units with its background above two largest diameters
low-passed away (8-bit or gain-normalised scaling does not matter).

Each response is put in robust standard deviations (median absolute deviation of
the map).  The threshold is chosen per micrograph from its own peak scores
(:func:`pipelines.picking.threshold.mixture_threshold`: two Gaussians fitted to the
local maxima's scores, the threshold where a peak is as likely particle as noise,
far outliers above the particle component dropped; never below 2 SD where the
scores are not bimodal; ``DEFAULT_THRESHOLD_SD`` with too few peaks to fit); a given
``threshold_sd`` overrides it.  Local
maxima above it are kept, then non-maximum suppression at ``min_distance_a`` and an
edge margin.  Coordinates come back in the original micrograph's pixels.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.errors import StageInputError
from pipelines.picking.filters import downscale_shape, fourier_crop
from pipelines.picking.picks import Picks, drop_edge_picks, suppress_non_maxima
from pipelines.picking.threshold import mixture_threshold

__all__ = [
    "DEFAULT_THRESHOLD_SD",
    "OWN_SCALE_TRANSFER",
    "find_peaks",
    "outlier_mask",
    "own_scale_transfer",
    "pick_blob",
    "robust_sd",
    "subtract_background",
]

DEFAULT_THRESHOLD_SD = 4.5  # with too few peaks to fit a mixture
# with a CTF: at least this mean |CTF| at the largest diameter's own frequency, and
# the particle is a blob in the CTF-multiplied image (LoG); below it, local energy
OWN_SCALE_TRANSFER = 0.5
FLATTEN_DIAMETERS = 2.0  # background low-pass: Gaussian sigma, in largest diameters
FIT_OUTLIER_SD = 4.0  # blocks beyond this are left out of the background fit
OUTLIER_PIXEL_SD = 1.0  # local mean this far from the ice, in pixel noise SDs
OUTLIER_VARIANCE_RATIO = 4.0  # local variance this many times the median (or 1/x)
OUTLIER_AREA_DISCS = 2.0  # ... where the region is larger than this many particles
_SURFACE_BAND_ROWS = 256  # rows per band of the background subtraction


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


def subtract_background(image: np.ndarray) -> np.ndarray:
    """``image`` minus its robust least-squares quadratic surface, float32.

    Removes ice-thickness gradients before any FFT: a ramp left in would wrap
    round the periodic border as a step, and its ringing would swamp the particles.
    The surface is fitted to 64 x 64 block means, leaving out blocks beyond
    ``FIT_OUTLIER_SD`` of the median, then (three rounds) of the fit: carbon and
    contamination do not bend it.
    """
    ny, nx = image.shape
    step = max(1, min(ny, nx) // 64)
    by, bx = ny // step, nx // step
    blocks = image[: by * step, : bx * step].reshape(by, step, bx, step)
    sample = blocks.mean(axis=(1, 3), dtype=np.float64).ravel()
    y = np.linspace(-1.0, 1.0, ny)
    x = np.linspace(-1.0, 1.0, nx)
    centre = (np.arange(by) * step + 0.5 * (step - 1)).astype(int)
    middle = (np.arange(bx) * step + 0.5 * (step - 1)).astype(int)
    ys, xs = np.meshgrid(y[centre], x[middle], indexing="ij")
    design = np.stack(
        [b.ravel() for b in (np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys)],
        axis=1,
    )
    residual = sample - np.median(sample)  # start from the robust constant
    keep = np.abs(residual) <= FIT_OUTLIER_SD * robust_sd(residual)
    for _ in range(3):
        kept = design[keep]  # normal equations: a 6 x 6 solve
        c = np.linalg.solve(kept.T @ kept, kept.T @ sample[keep])
        residual = sample - design @ c
        spread = robust_sd(residual[keep])
        keep = np.abs(residual - np.median(residual[keep])) <= FIT_OUTLIER_SD * spread
    row = (c[0] + c[1] * x + c[3] * x * x).astype(np.float32)
    column = (c[2] * y + c[5] * y * y).astype(np.float32)
    cross = (c[4] * y).astype(np.float32)
    x32 = x.astype(np.float32)
    flat = np.empty(image.shape, dtype=np.float32)
    # one pass over the micrograph, in bands of rows (the surface of a band is small)
    for r0 in range(0, ny, _SURFACE_BAND_ROWS):
        r1 = min(ny, r0 + _SURFACE_BAND_ROWS)
        surface = row[None, :] + column[r0:r1, None] + cross[r0:r1, None] * x32[None, :]
        np.subtract(image[r0:r1], surface, out=flat[r0:r1], casting="unsafe")
    return flat


def outlier_mask(
    image: np.ndarray, d_min_px: float, d_max_px: float, *, pixel_sd: float
) -> np.ndarray:
    """Carbon, contamination and other regions no particle is in: ``(ny, nx)`` bool.

    ``image`` is flattened (zero background), possibly block-averaged; ``pixel_sd``
    is the noise of the unbinned micrograph.  Where the local mean over a quarter of
    the smallest diameter is beyond ``OUTLIER_PIXEL_SD`` pixel noise SDs (a particle's
    mean contrast is a fraction of one), or the local variance over half of it is
    ``OUTLIER_VARIANCE_RATIO`` times the micrograph's median or less than its
    inverse, the region, when larger than ``OUTLIER_AREA_DISCS`` particle discs and
    grown by the largest radius, is masked.
    """
    mean = ndimage.gaussian_filter(image, 0.25 * d_min_px)
    wide_mean = ndimage.gaussian_filter(image, 0.5 * d_min_px)
    square = ndimage.gaussian_filter(image * image, 0.5 * d_min_px)
    log_var = np.log(np.maximum(square - wide_mean * wide_mean, 1e-12))
    masked: np.ndarray = np.abs(mean - np.median(mean)) > OUTLIER_PIXEL_SD * pixel_sd
    masked |= np.abs(log_var - np.median(log_var)) > np.log(OUTLIER_VARIANCE_RATIO)
    # a particle is no larger than its disc: only larger regions are masked
    labels, n = ndimage.label(masked)
    if n == 0:
        return masked
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    large = areas > OUTLIER_AREA_DISCS * np.pi * (0.5 * d_max_px) ** 2
    large[0] = False
    masked = np.asarray(large[labels], dtype=bool)
    if not masked.any():
        return masked
    grown = ndimage.distance_transform_edt(~masked) <= 0.5 * d_max_px
    return np.asarray(grown, dtype=bool)


def _fill_outliers(
    flat: np.ndarray,
    pixel_size_a: float,
    d_min_a: float,
    d_max_a: float,
    small_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Outlier regions found on a block-averaged copy (no ringing) at a fifth of
    the smallest diameter; the flattened micrograph with them set to the median of
    the rest (a step left in would ring through the Fourier crop), and the mask on
    the picking grid ``small_shape``."""
    ny, nx = flat.shape
    factor = max(1, int(0.2 * d_min_a / pixel_size_a))
    by, bx = ny // factor, nx // factor
    binned = flat[: by * factor, : bx * factor].reshape(by, factor, bx, factor)
    binned_px_a = pixel_size_a * factor
    block_means = binned.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    mask = outlier_mask(
        block_means,
        d_min_a / binned_px_a,
        d_max_a / binned_px_a,
        pixel_sd=robust_sd(flat[::4, ::4]),
    )
    if not mask.any():
        return flat, np.zeros(small_shape, dtype=bool)
    rows = np.minimum(np.arange(ny) // factor, by - 1)
    cols = np.minimum(np.arange(nx) // factor, bx - 1)
    full = mask[np.ix_(rows, cols)]
    # the fill level: the median of the unmasked block means (the median of the
    # full-size pixels took half of a 4096² pick)
    level = np.float32(np.median(block_means[~mask]))
    filled = np.where(full, level, flat)
    small_rows = np.minimum(
        (np.arange(small_shape[0]) * ny / small_shape[0]).astype(int), ny - 1
    )
    small_cols = np.minimum(
        (np.arange(small_shape[1]) * nx / small_shape[1]).astype(int), nx - 1
    )
    return filled.astype(np.float32, copy=False), full[np.ix_(small_rows, small_cols)]


def pick_blob(
    micrograph: np.ndarray,
    *,
    pixel_size_a: float,
    diameter_range_a: tuple[float, float],
    threshold_sd: float | None = None,
    min_distance_a: float | None = None,
    edge_px: int = 0,
    downscale_to_a: float | None = None,
    n_scales: int = 5,
    ctf: CtfParams | None = None,
    dark_particles: bool = True,
    mask_outliers: bool = True,
    workers: int = -1,
) -> Picks:
    """Pick blob-like particles of a diameter in ``diameter_range_a`` (Å).

    micrograph: ``(ny, nx)``; ``edge_px`` (original pixels) excludes picks whose
    centre is closer to the border; ``min_distance_a`` defaults to the smallest
    diameter; ``downscale_to_a`` defaults to a tenth of the smallest diameter (never
    finer than the micrograph; a twentieth with ``ctf``).  ``ctf`` switches to the
    CTF-matched local energy (module docstring).  ``threshold_sd`` fixes the
    threshold in robust standard deviations; by default (``None``) it is chosen from
    the micrograph's own peak scores.  ``mask_outliers`` drops picks on carbon,
    contamination and other regions of extreme local mean or variance.
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

    flat = subtract_background(image)
    outliers = np.zeros(small_shape, dtype=bool)
    if mask_outliers:  # carbon / contamination: filled before any FFT, never picked
        flat, outliers = _fill_outliers(flat, pixel_size_a, d_min, d_max, small_shape)
    small = fourier_crop(flat, small_shape, workers=workers)
    if dark_particles:
        small = -small
    ky = np.fft.fftfreq(small_shape[0])[:, None].astype(np.float32)
    kx = np.fft.rfftfreq(small_shape[1])[None, :].astype(np.float32)
    k2 = ky * ky + kx * kx
    # 8-bit or gain-normalised input: robust units; ice gradients: flattened away
    small = (small - np.median(small)) / robust_sd(small[::2, ::2])
    spectrum = scipy.fft.rfft2(small, workers=workers)
    background_px = FLATTEN_DIAMETERS * d_max / pick_px_a
    spectrum *= 1.0 - np.exp(-2.0 * np.pi**2 * background_px**2 * k2)
    small = scipy.fft.irfft2(spectrum, s=small_shape, workers=workers)
    signed = True  # a LoG of the (CTF-multiplied) image: blobs of the particle's sign
    if ctf is not None:
        spectrum, signed = _ctf_filtered(
            spectrum, ctf, k2, pick_px_a, (d_min, d_max), small_shape, workers
        )
    diameters_a = np.geomspace(d_min, d_max, n_scales) if d_max > d_min else [d_min]
    if signed:
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
    if signed:
        score = np.take_along_axis(responses, best_scale[None], axis=0)[0]
    else:  # the largest scales straddle neighbours: detect at the middle scale
        score = responses[len(diameters_a) // 2]

    score = np.where(outliers, -np.inf, score)

    min_dist_px = (min_distance_a or d_min) / pick_px_a
    rows, cols = find_peaks(
        score,
        threshold=0.0 if threshold_sd is None else threshold_sd,
        window_px=int(min_dist_px),
    )
    if threshold_sd is None:  # from this micrograph's own peak scores
        chosen = mixture_threshold(score[rows, cols], fallback=DEFAULT_THRESHOLD_SD)
        peak = score[rows, cols]
        keep = (peak >= chosen.lower) & (peak <= chosen.upper)
        rows, cols = rows[keep], cols[keep]
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


def _ctf_filtered(
    spectrum: np.ndarray,
    ctf: CtfParams,
    k2: np.ndarray,
    pick_px_a: float,
    diameters_a: tuple[float, float],
    shape: tuple[int, int],
    workers: int,
) -> tuple[np.ndarray, bool]:
    """The spectrum to detect on with the CTF, and whether it is signed (LoG) or
    the local energy (centre-surround).  Where the particle's own scale lies in the
    CTF's first lobe (mean ``|CTF|`` at the largest diameter's frequency at least
    ``OWN_SCALE_TRANSFER``: small particles, or far from focus), the image
    multiplied by the CTF (> 0 there: the amplitude contrast at k = 0) keeps each
    particle a blob of its own sign, which the LoG finds; nearer focus the particle
    has almost no power at its own scale and only the local energy shows it."""
    d_min, d_max = diameters_a
    transfer = ctf_2d(shape, pick_px_a, ctf)
    if own_scale_transfer(transfer, k2, pick_px_a / d_max) >= OWN_SCALE_TRANSFER:
        return spectrum * transfer, True
    energy = _ctf_energy_spectrum(
        spectrum, transfer, k2, pick_px_a, d_min, shape, workers
    )
    return energy, False


def own_scale_transfer(transfer: np.ndarray, k2: np.ndarray, k_px: float) -> float:
    """Mean ``|CTF|`` over the ring of radial frequency ``0.9 .. 1.1 k_px`` (cycles
    per pixel of the grid of ``transfer`` and ``k2``): how much of a particle of
    diameter ``1 / k_px`` pixels reaches the image at its own scale."""
    k = np.sqrt(k2)
    ring = (k >= 0.9 * k_px) & (k <= 1.1 * k_px)
    if not ring.any():
        return 0.0
    return float(np.abs(transfer[ring]).mean())


def _ctf_energy_spectrum(
    spectrum: np.ndarray,
    transfer: np.ndarray,
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
    band = scipy.fft.irfft2(spectrum * transfer * envelope, s=shape, workers=workers)
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
