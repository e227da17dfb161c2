"""Template picker: CTF-aware, FFT-based correlation with 2D templates.

Templates (2D class averages, or projections of a volume; white particles,
``(n_templates, box, box)``) are resampled to a coarse picking pixel, rotated to
every in-plane angle, multiplied by the micrograph's CTF (and by the micrograph's
whitening filter where ``whitening`` > 0), masked to the particle's disc, and made
zero-mean and unit-norm.  The micrograph is Fourier-cropped to the picking pixel and
negated (dark particles become white).  For every template and angle one batched
inverse FFT gives the correlation; each pixel keeps its best over templates and
angles.  The local standard deviation under the disc (two FFT convolutions, shared
by all templates) gives the score:

* ``score="correlation"`` (the default): the correlation over the micrograph's mean
  local SD, so a particle's own contrast counts.  It is the NCC times the square
  root of the position's local variance over the mean local variance: equal to the
  NCC where a position's SD is the micrograph's mean, above it where the particle
  is darker than the background.
* ``score="ncc"``: the normalised cross-correlation, each position's correlation
  over its own local SD, in [-1, 1].

``whitening`` is the exponent of the whitening filter ``1 / power ** (0.5 *
whitening)`` from the micrograph's rotationally averaged power spectrum (applied to
the micrograph and the templates): 1 is the matched filter for noise whose spectrum
is the micrograph's (the picker's default until the template score was measured on
real micrographs with a template set: docs/picking.md, *The template score*), 0
(the default) none.  Every pick carries its score (``score``; the STAR file's
``rlnAutopickFigureOfMerit``) and its power score (the local variance under the disc
over the micrograph's variance; cryoSPARC's second threshold), so both thresholds
can be set afterwards with :func:`pipelines.picking.picks.filter_picks`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.fft
from numpy.typing import NDArray
from scipy import ndimage

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.errors import StageInputError
from pipelines.picking.blob import find_peaks, robust_sd
from pipelines.picking.decoys import decoy_threshold
from pipelines.picking.filters import (
    circular_mask,
    downscale_shape,
    fourier_crop,
    radial_profile_filter,
)
from pipelines.picking.picks import Picks, drop_edge_picks, suppress_non_maxima
from pipelines.picking.threshold import MIN_PEAKS, mixture_threshold

__all__ = ["TEMPLATE_SCORES", "TemplateScore", "pick_template", "prepare_templates"]

DEFAULT_ANGLES_DEG = np.arange(0.0, 360.0, 10.0)
TemplateScore = Literal["ncc", "correlation"]
TEMPLATE_SCORES: tuple[TemplateScore, ...] = ("ncc", "correlation")


def prepare_templates(
    templates: np.ndarray,
    *,
    box_px: int,
    angles_deg: np.ndarray,
    radius_px: float,
    transfer: tuple[np.ndarray, np.ndarray] | None = None,
    ctf: CtfParams | None = None,
    pixel_size_a: float = 1.0,
) -> NDArray[np.float32]:
    """``(n_templates * n_angles, box, box)`` rotated, filtered, masked, unit templates.

    ``templates`` are already at ``pixel_size_a`` and ``box_px``.  ``transfer`` is a
    radial filter ``(k_cycles_per_px, gain)``; ``ctf`` multiplies in the CTF.
    Filtering is done in a box padded to twice the size, then cropped.
    """
    n_t = templates.shape[0]
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    centre = box_px // 2
    grid = np.arange(box_px) - centre
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    cos = np.cos(angles)[:, None, None]
    sin = np.sin(angles)[:, None, None]
    src_y = cos * yy[None] - sin * xx[None] + centre  # (n_angles, box, box)
    src_x = sin * yy[None] + cos * xx[None] + centre
    n_a = len(angles)
    coords = np.empty((3, n_t, n_a, box_px, box_px), dtype=np.float32)
    coords[0] = np.arange(n_t)[:, None, None, None]
    coords[1] = src_y[None]
    coords[2] = src_x[None]
    rotated = ndimage.map_coordinates(
        templates.astype(np.float32), coords, order=1, mode="constant", cval=0.0
    ).reshape(n_t * n_a, box_px, box_px)

    pad = 2 * box_px
    ky = np.fft.fftfreq(pad)[:, None]
    kx = np.fft.rfftfreq(pad)[None, :]
    gain = np.ones((pad, pad // 2 + 1), dtype=np.float32)
    if transfer is not None:
        gain *= np.interp(np.sqrt(ky * ky + kx * kx), *transfer).astype(np.float32)
    if ctf is not None:
        gain *= ctf_2d((pad, pad), pixel_size_a, ctf)
    padded = np.zeros((rotated.shape[0], pad, pad), dtype=np.float32)
    start = pad // 2 - centre
    padded[:, start : start + box_px, start : start + box_px] = rotated
    filtered: NDArray[np.floating[Any]] = scipy.fft.irfft2(
        scipy.fft.rfft2(padded, axes=(-2, -1)) * gain, s=(pad, pad), axes=(-2, -1)
    )[:, start : start + box_px, start : start + box_px]

    mask = circular_mask(box_px, radius_px)
    filtered = filtered * mask
    n_in = mask.sum()
    means = filtered.sum(axis=(-2, -1), keepdims=True) / n_in
    filtered = (filtered - means) * mask
    norms: NDArray[np.floating[Any]] = np.sqrt(
        (filtered * filtered).sum(axis=(-2, -1), keepdims=True)
    )
    unit: NDArray[np.floating[Any]] = filtered / np.maximum(norms, 1e-30)
    return unit.astype(np.float32)


def pick_template(
    micrograph: np.ndarray,
    templates: np.ndarray,
    *,
    pixel_size_a: float,
    diameter_a: float,
    ctf: CtfParams | None,
    template_pixel_size_a: float | None = None,
    angles_deg: np.ndarray = DEFAULT_ANGLES_DEG,
    max_false_rate: float = 0.025,
    threshold_sd: float | None = None,
    min_ncc: float | None = None,
    min_distance_a: float | None = None,
    edge_px: int = 0,
    downscale_to_a: float | None = None,
    score: TemplateScore = "correlation",
    whitening: float = 0.0,
    dark_particles: bool = True,
    chunk: int = 32,
    workers: int = -1,
) -> Picks:
    """Pick particles matching ``templates`` (``(n, box, box)`` or ``(box, box)``).

    ``score`` and ``whitening``: see the module doc.  The threshold on the score
    (``min_ncc``: named for the NCC, it thresholds either score) is ``min_ncc``
    when given, else the score map's median plus
    ``threshold_sd`` robust standard deviations when that is given, else it is
    chosen per micrograph as the blob picker's is: the NCC map's local maxima, in
    robust SDs above its median, go to
    :func:`pipelines.picking.threshold.mixture_threshold` (two Gaussians, the
    crossing; never below 2 SD where they are not bimodal; far outliers above the
    particle component dropped).  With fewer than ``MIN_PEAKS`` maxima it is
    chosen by target-decoy counting: the peaks of the anti-correlation map (the
    best match of the templates with inverted contrast) estimate how many noise
    peaks pass a threshold, and the threshold is the lowest at which they number
    at most ``max_false_rate`` of the picks
    (:func:`pipelines.picking.decoys.decoy_threshold`).  The decoys were the
    default until the real loop showed them failing on crowded micrographs: the
    gaps between particles match the inverted templates as well as particles
    match the templates (docs/picking.md, *The loop on real micrographs*).  ``downscale_to_a`` defaults
    to ``diameter_a / 24`` (never finer than the micrograph).  Correlations are
    circular: use ``edge_px`` to drop picks near the border.
    """
    image = np.asarray(micrograph)
    stack = np.asarray(templates, dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    if image.ndim != 2 or stack.ndim != 3 or stack.shape[-1] != stack.shape[-2]:
        raise StageInputError(
            "<array>", "templates.shape", stack.shape, "need (n, box, box) templates"
        )
    tps_a = template_pixel_size_a or pixel_size_a
    pick_px_a = max(pixel_size_a, downscale_to_a or diameter_a / 24.0)
    small_shape = downscale_shape(image.shape, pick_px_a / pixel_size_a, fast=True)
    scale_y = image.shape[0] / small_shape[0]
    scale_x = image.shape[1] / small_shape[1]
    pick_px_a = pixel_size_a * scale_x

    box_px = max(8, 2 * round(stack.shape[-1] * tps_a / pick_px_a / 2))
    stack = fourier_crop_or_pad(stack, box_px)
    radius_px = 0.5 * diameter_a / pick_px_a

    small = fourier_crop(image - image.mean(), small_shape, workers=workers)
    if dark_particles:
        small = -small
    spectrum = scipy.fft.rfft2(small, workers=workers)
    transfer = None
    if score not in TEMPLATE_SCORES:
        raise StageInputError(
            "<arguments>", "score", score, f"need one of {', '.join(TEMPLATE_SCORES)}"
        )
    if not 0.0 <= whitening <= 1.0:
        raise StageInputError("<arguments>", "whitening", whitening, "need 0 to 1")
    if whitening > 0.0:
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float64)
        power[0, 0] = 0.0
        k, profile = radial_profile_filter(power, small_shape)
        # whitening 1: 1 / sqrt(power), the matched filter in coloured noise;
        # 0.5: 1 / power ** 0.25, half way (docs/picking.md, *Template*)
        gain = np.maximum(profile, profile.max() * 1e-6) ** (-0.5 * whitening)
        transfer = (k, gain / gain.max())
        ky = np.fft.fftfreq(small_shape[0])[:, None]
        kx = np.fft.rfftfreq(small_shape[1])[None, :]
        spectrum *= np.interp(np.sqrt(ky * ky + kx * kx), *transfer).astype(np.float32)
        small = scipy.fft.irfft2(spectrum, s=small_shape, workers=workers)
    units = prepare_templates(
        stack,
        box_px=box_px,
        angles_deg=angles_deg,
        radius_px=radius_px,
        transfer=transfer,
        ctf=ctf,
        pixel_size_a=pick_px_a,
    )
    ncc, anti, local_var = _ncc_map(
        small, spectrum, units, radius_px, chunk, workers, local=score == "ncc"
    )
    min_dist_px = (min_distance_a or 0.8 * diameter_a) / pick_px_a
    sub = ncc[::4, ::4]
    median, spread = float(np.median(sub)), max(robust_sd(sub), 1e-12)
    upper = np.inf
    if min_ncc is not None:
        threshold = min_ncc
    elif threshold_sd is not None:
        threshold = median + threshold_sd * spread
    else:
        threshold, upper = _default_threshold(
            ncc,
            anti,
            median=median,
            spread=spread,
            window_px=int(min_dist_px),
            exclusion_px=0.75 * diameter_a / pick_px_a,
            rate=max_false_rate,
        )
    rows, cols = find_peaks(ncc, threshold=threshold, window_px=int(min_dist_px))
    keep = ncc[rows, cols] <= upper
    rows, cols = rows[keep], cols[keep]
    picks = Picks(
        x_px=cols * scale_x,
        y_px=rows * scale_y,
        score=ncc[rows, cols].astype(np.float64),
        power=(local_var[rows, cols] / max(float(small.var()), 1e-30)).astype(
            np.float64
        ),
        diameter_a=np.full(len(rows), float(diameter_a)),
        pixel_size_a=pixel_size_a,
        shape=(int(image.shape[0]), int(image.shape[1])),
    )
    picks = suppress_non_maxima(picks, min_dist_px * scale_x)
    return drop_edge_picks(picks, image.shape, edge_px)


def _default_threshold(
    ncc: np.ndarray,
    anti: np.ndarray,
    *,
    median: float,
    spread: float,
    window_px: int,
    exclusion_px: float,
    rate: float,
) -> tuple[float, float]:
    """The NCC threshold and upper limit when none is given: the mixture threshold
    of the NCC map's peaks in robust SDs (as the blob picker's), or, with too few
    peaks to fit, target-decoy counting (see :func:`pick_template`)."""
    rows, cols = find_peaks(ncc, threshold=median, window_px=window_px)
    if len(rows) < MIN_PEAKS:
        decoy = decoy_threshold(
            ncc,
            anti,
            floor=median + 2.0 * spread,
            window_px=window_px,
            exclusion_px=exclusion_px,
            rate=rate,
        )
        return decoy, np.inf
    chosen = mixture_threshold((ncc[rows, cols] - median) / spread, fallback=np.inf)
    return median + chosen.lower * spread, median + chosen.upper * spread


def fourier_crop_or_pad(stack: np.ndarray, box_px: int) -> np.ndarray:
    """Resample ``(n, b, b)`` templates to ``(n, box_px, box_px)`` (same field of view
    scaled by the pixel ratio): Fourier crop when smaller, zero-pad the image when
    larger."""
    b = stack.shape[-1]
    if box_px == b:
        return stack
    if box_px < b:
        return fourier_crop(stack, (box_px, box_px))
    out = np.zeros((stack.shape[0], box_px, box_px), dtype=np.float32)
    start = box_px // 2 - b // 2
    out[:, start : start + b, start : start + b] = stack
    return out


def _ncc_map(
    image: np.ndarray,
    spectrum: np.ndarray,
    units: np.ndarray,
    radius_px: float,
    chunk: int,
    workers: int,
    *,
    local: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best NCC over ``units`` at every pixel, the best anti-correlation (NCC with
    inverted contrast: the decoy map) and the local variance under the disc.

    ``local``: each position's correlation over its own SD under the disc (the
    NCC); else over the map's mean local SD (``"correlation"``: the NCC times the
    square root of the position's power score, so a particle's own contrast
    counts)."""
    shape = image.shape
    box = units.shape[-1]
    mask = circular_mask(box, radius_px).astype(np.float32)
    n_in = float(mask.sum())

    def padded_spectrum(kernels: np.ndarray) -> NDArray[np.complex64]:
        # kernel centre (box // 2) goes to pixel 0: correlation peaks at the centre
        full = np.zeros((kernels.shape[0], *shape), dtype=np.float32)
        full[:, :box, :box] = kernels
        full = np.roll(full, (-(box // 2), -(box // 2)), axis=(-2, -1))
        spectrum: NDArray[np.complex64] = scipy.fft.rfft2(
            full, axes=(-2, -1), workers=workers
        )
        return spectrum

    mask_ft = np.conj(padded_spectrum(mask[None])[0])
    local_sum = scipy.fft.irfft2(spectrum * mask_ft, s=shape, workers=workers)
    local_sq = scipy.fft.irfft2(
        scipy.fft.rfft2(image * image, workers=workers) * mask_ft,
        s=shape,
        workers=workers,
    )
    local_var = np.maximum(local_sq / n_in - (local_sum / n_in) ** 2, 0.0)
    if local:
        denominator = np.sqrt(np.maximum(local_var * n_in, 1e-30)).astype(np.float32)
    else:
        denominator = np.float32(np.sqrt(max(float(local_var.mean()) * n_in, 1e-30)))
    best = np.full(shape, -np.inf, dtype=np.float32)
    worst = np.full(shape, np.inf, dtype=np.float32)
    for start in range(0, units.shape[0], chunk):  # chunks of templates x angles
        kernels_ft = np.conj(padded_spectrum(units[start : start + chunk]))
        corr = scipy.fft.irfft2(
            spectrum[None] * kernels_ft, s=shape, axes=(-2, -1), workers=workers
        )
        np.maximum(best, corr.max(axis=0), out=best)
        np.minimum(worst, corr.min(axis=0), out=worst)
    return best / denominator, -worst / denominator, local_var.astype(np.float32)
