"""The averaged amplitude spectrum of a micrograph and its background subtraction.

The first half of CTF estimation (Rohou & Grigorieff 2015, CTFFIND4): the micrograph
is cut into overlapping square tiles, the power spectra of all tiles are averaged (one
batched ``rfft2`` per chunk of tiles), the square root gives the amplitude spectrum,
and a smooth, rotationally symmetric background is removed so that only the Thon-ring
oscillation is left.

Spectra stay in the unshifted ``rfft2`` layout: shape ``(tile_px, tile_px // 2 + 1)``,
row ``iy`` is frequency ``fftfreq(tile_px)[iy]``, column ``ix`` is ``ix / tile_px``
(cycles per pixel).  The half plane is all there is: a real image has a
centro-symmetric spectrum, and the astigmatism angle has a period of 180°.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.xp import fft_module, to_numpy

__all__ = [
    "average_amplitude_spectrum",
    "radial_index",
    "refine_background",
    "subtract_background",
    "tile_starts",
]

# At most this many float32 values per batched rfft2 (about 256 MiB of complex64).
_BATCH_VALUES = 32 * 1024 * 1024


def tile_starts(size_px: int, tile_px: int) -> np.ndarray:
    """First pixels of tiles of ``tile_px`` covering ``size_px`` with about 50 % overlap."""
    if tile_px > size_px:
        raise ValueError(f"tile_px={tile_px} is larger than the image ({size_px} px)")
    count = max(1, int(np.floor((size_px - tile_px) / (tile_px / 2))) + 1)
    return np.round(np.linspace(0, size_px - tile_px, count)).astype(np.int64)


def average_amplitude_spectrum(
    micrograph: Any,
    tile_px: int,
    *,
    workers: int = -1,
    xp: ModuleType = np,
) -> tuple[np.ndarray, int]:
    """The amplitude spectrum averaged over overlapping tiles, and the tile count.

    ``micrograph`` is ``(ny, nx)``; each tile has its mean removed, the power spectra
    ``|rfft2(tile)|^2`` are averaged and the square root is returned as float64
    ``(tile_px, tile_px // 2 + 1)`` numpy (the FFTs run on ``xp``'s device).
    """
    fft = fft_module(xp)
    image = xp.asarray(micrograph, dtype=xp.float32)
    ys = tile_starts(image.shape[0], tile_px)
    xs = tile_starts(image.shape[1], tile_px)
    corners = [(int(y), int(x)) for y in ys for x in xs]
    per_batch = max(1, _BATCH_VALUES // (tile_px * tile_px))
    power = xp.zeros((tile_px, tile_px // 2 + 1), dtype=xp.float64)
    for first in range(0, len(corners), per_batch):
        chunk = corners[first : first + per_batch]
        tiles = xp.stack([image[y : y + tile_px, x : x + tile_px] for y, x in chunk])
        tiles -= tiles.mean(axis=(-2, -1), keepdims=True)
        kwargs = {"workers": workers} if xp is np else {}
        spectra = fft.rfft2(tiles, **kwargs)
        power += (spectra.real**2 + spectra.imag**2).sum(axis=0, dtype=xp.float64)
    power /= len(corners) * float(tile_px) ** 2
    return np.sqrt(to_numpy(power)), len(corners)


def radial_index(tile_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequency coordinates of the rfft2 grid of a ``tile_px`` tile, in pixels.

    Returns ``(radius_px, ky_px, kx_px)``, each ``(tile_px, tile_px // 2 + 1)``.
    """
    ky = np.fft.fftfreq(tile_px, d=1.0 / tile_px)[:, None]
    kx = np.arange(tile_px // 2 + 1, dtype=np.float64)[None, :]
    ky_full = np.broadcast_to(ky, (tile_px, kx.size))
    kx_full = np.broadcast_to(kx, (tile_px, kx.size))
    return np.hypot(ky_full, kx_full), ky_full, kx_full


def _radial_mean(
    values: np.ndarray, shell: np.ndarray, mask: np.ndarray
) -> NDArray[np.float64]:
    n_shells = int(shell.max()) + 1
    sums = np.bincount(shell[mask], weights=values[mask], minlength=n_shells)
    counts = np.bincount(shell[mask], minlength=n_shells)
    profile = np.full(n_shells, np.nan)
    filled = counts > 0
    profile[filled] = sums[filled] / counts[filled]
    # Shells without pixels (only the DC shell in practice) take their neighbour.
    filled_profile: NDArray[np.float64] = np.interp(
        np.arange(n_shells), np.flatnonzero(filled), profile[filled]
    )
    return filled_profile


def subtract_background(
    amplitude: np.ndarray,
    *,
    box_px: int,
    clip_sigma: float = 4.0,
) -> NDArray[np.float64]:
    """Remove the smooth radial background and flatten the ring contrast.

    ``amplitude`` is an rfft2-layout amplitude spectrum ``(t, t // 2 + 1)``.  The
    background is the rotational average smoothed by a running mean of ``box_px``
    shells (wide enough to span a Thon-ring period at the low-resolution limit, as
    CTFFIND's box convolution); the residual is divided by its running RMS over the
    same shells, so that every ring weighs alike, and clipped at ``clip_sigma``
    times its RMS.
    The central cross (``kx == 0`` or ``ky == 0``), where tile edges leave streaks,
    is set to zero.  Returns float64 of the same shape.
    """
    from scipy.ndimage import uniform_filter1d  # scipy: ~0.5 s, on first use

    radius, ky, kx = radial_index(amplitude.shape[0])
    shell = np.rint(radius).astype(np.int64)
    off_axes = (ky != 0) & (kx != 0)
    profile = _radial_mean(amplitude, shell, off_axes)
    size = max(3, int(box_px) | 1)
    background = uniform_filter1d(profile, size, mode="nearest")
    residual = amplitude - np.interp(radius, np.arange(background.size), background)
    power = _radial_mean(residual**2, shell, off_axes)
    rms = np.sqrt(uniform_filter1d(power, size, mode="nearest"))
    scale = np.interp(radius, np.arange(rms.size), rms)
    flat: NDArray[np.float64] = np.divide(
        residual, scale, out=np.zeros_like(residual), where=scale > 0
    )
    limit = clip_sigma * float(np.sqrt(np.mean(flat[off_axes] ** 2)))
    flat = np.clip(flat, -limit, limit)
    flat[~off_axes] = 0.0
    return flat


def _spline_basis(x: np.ndarray, start: float, stop: float, n_knots: int) -> np.ndarray:
    """Cubic B-spline design matrix ``(x.size, n_knots + 2)`` on [start, stop].

    Knots are evenly spaced in sqrt(x): denser at low frequency, where the
    background falls steeply.
    """
    from scipy.interpolate import BSpline  # scipy: ~0.5 s, on first use

    inner = np.linspace(np.sqrt(start), np.sqrt(stop), n_knots) ** 2
    inner[0], inner[-1] = start, stop
    knots = np.concatenate([[start] * 3, inner, [stop] * 3])
    design = BSpline.design_matrix(np.clip(x, start, stop), knots, 3)
    return np.asarray(design.toarray())


def refine_background(
    amplitude: np.ndarray,
    model: np.ndarray,
    *,
    first_shell: int,
    knot_spacing_px: float,
    envelope_floor: float = 0.1,
    smoothness: float = 3.0,
    clip_sigma: float = 4.0,
) -> NDArray[np.float64]:
    """Background subtraction that knows where the rings are.

    With a first fit's CTF² ``model`` (rfft2 layout, like ``amplitude``), the
    rotational average is fitted by linear least squares as
    ``background(r) + envelope(r) * model(r)`` with both smooth (cubic B-splines,
    knots every ``knot_spacing_px`` shells from ``first_shell`` on), so that the
    background is no longer pulled by rings wider than the smoothing box.  The
    residual ``amplitude - background`` is divided by the fitted envelope (at least
    ``envelope_floor`` of its maximum), so that it approximates CTF², and clipped at
    ``clip_sigma`` times its RMS.
    """
    radius, ky, kx = radial_index(amplitude.shape[0])
    shell = np.rint(radius).astype(np.int64)
    off_axes = (ky != 0) & (kx != 0)
    data = _radial_mean(amplitude, shell, off_axes)
    ring = _radial_mean(model, shell, off_axes)
    r = np.arange(data.size, dtype=np.float64)
    last = min(data.size - 1, amplitude.shape[0] // 2)
    n_knots = max(4, int(np.ceil((last - first_shell) / knot_spacing_px)) + 1)
    used = slice(first_shell, last + 1)
    basis = _spline_basis(r[used], first_shell, last, n_knots)
    design = np.hstack([basis, basis * ring[used, None]])
    # A curvature penalty on both splines (P-splines) keeps background and envelope
    # apart where the model barely changes (phase plates at low frequency).
    n_coef = basis.shape[1]
    curvature = np.diff(np.eye(n_coef), 2, axis=0) * smoothness
    zeros = np.zeros_like(curvature)
    penalty = np.vstack([np.hstack([curvature, zeros]), np.hstack([zeros, curvature])])
    coef, *_ = np.linalg.lstsq(
        np.vstack([design, penalty]),
        np.concatenate([data[used], np.zeros(penalty.shape[0])]),
        rcond=None,
    )
    background = np.interp(r, r[used], basis @ coef[: basis.shape[1]])
    envelope = np.interp(r, r[used], basis @ coef[basis.shape[1] :])
    # Divide by the fitted ring envelope (smooth, unlike a running RMS that follows
    # rings wider than its window), held above a floor where the rings fade.
    envelope = np.maximum(envelope, envelope_floor * max(float(envelope.max()), 1e-30))
    residual = amplitude - np.interp(radius, r, background)
    scale = np.interp(radius, r, envelope)
    flat: NDArray[np.float64] = np.divide(
        residual, scale, out=np.zeros_like(residual), where=scale > 0
    )
    limit = clip_sigma * float(np.sqrt(np.mean(flat[off_axes] ** 2)))
    flat = np.clip(flat, -limit, limit)
    flat[~off_axes] = 0.0
    return flat
