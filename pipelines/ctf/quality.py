"""How far a CTF fit holds: the equi-phase average and the fit resolution.

Every pixel of the half-plane spectrum is assigned the phase ``chi`` that the fitted
(astigmatic) CTF has there, and the spectrum is averaged in bins of equal phase
(``bins_per_ring`` bins per Thon ring, CTFFIND4's "equi-phase averaging").  In that
1D profile the model is simply ``sin²(chi)``; the Pearson correlation between data and
model in a window of ``window_rings`` rings around each bin falls when the rings stop
matching; scanning outwards from the first window where it reaches ``threshold``,
the fit resolution is the frequency where it first drops below ``threshold`` again
(or the Nyquist frequency when it never does).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from pipelines.ctf.model import CtfParams, ctf_phase
from pipelines.ctf.search import FitBand

__all__ = ["EquiphaseProfile", "equiphase_profile", "weight_band_by_rings"]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EquiphaseProfile:
    """The 1D view of a fit, one entry per phase bin (all ``(n_bins,)``).

    ``frequency_per_a`` is the mean spatial frequency of each bin, ``data`` the
    average background-subtracted spectrum, ``model`` ``sin²(chi)``, and
    ``correlation`` the windowed data-model correlation; ``fit_resolution_a`` the
    resolution where that correlation first falls below the threshold.
    """

    frequency_per_a: np.ndarray
    data: np.ndarray
    model: np.ndarray
    correlation: np.ndarray
    ring_amplitude: np.ndarray
    ring_offset: np.ndarray
    fit_resolution_a: float


def _windowed_fit(
    a: np.ndarray, b: np.ndarray, half: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlation, slope and intercept of ``a`` on ``b`` in ``[i - half, i + half]``."""
    n = a.size
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)

    def window_sum(values: np.ndarray) -> NDArray[np.float64]:
        csum: NDArray[np.float64] = np.concatenate([[0.0], np.cumsum(values)])
        return csum[hi] - csum[lo]

    count = (hi - lo).astype(np.float64)
    sa, sb = window_sum(a), window_sum(b)
    cov = window_sum(a * b) - sa * sb / count
    var_a = window_sum(a * a) - sa * sa / count
    var_b = window_sum(b * b) - sb * sb / count
    denom = np.sqrt(np.maximum(var_a * var_b, 1e-30))
    slope = cov / np.maximum(var_b, 1e-30)
    return cov / denom, slope, (sa - slope * sb) / count


def equiphase_profile(
    spectrum: np.ndarray,
    ky: np.ndarray,
    kx: np.ndarray,
    mask: np.ndarray,
    params: CtfParams,
    *,
    low_resolution_a: float,
    bins_per_ring: int = 8,
    window_rings: float = 2.0,
    threshold: float = 0.5,
) -> EquiphaseProfile:
    """Equi-phase average of ``spectrum`` under ``params`` and the fit resolution.

    ``ky``, ``kx`` are the frequencies (1/Å) of the rfft2 grid of ``spectrum``;
    ``mask`` selects the pixels to use (beyond the low-resolution limit, up to
    Nyquist, off the central cross).  Bins start at the phase of the
    low-resolution limit and stop before the phase turns back (Cs).
    """
    y, x = ky[mask], kx[mask]
    k = np.hypot(y, x)
    phase = -ctf_phase(y, x, params)  # grows with frequency while defocus dominates
    keep = k >= 1.0 / low_resolution_a
    # Beyond the turning point of the phase (spherical aberration) bins would fold.
    order = np.argsort(k)
    running_max = np.maximum.accumulate(phase[order])
    folded = np.zeros(k.size, dtype=bool)
    folded[order] = phase[order] < running_max - 1e-9
    keep &= ~folded
    if not np.any(keep):
        empty = np.zeros(0)
        return EquiphaseProfile(
            frequency_per_a=empty,
            data=empty,
            model=empty,
            correlation=empty,
            ring_amplitude=empty,
            ring_offset=empty,
            fit_resolution_a=float(low_resolution_a),
        )
    width = np.pi / bins_per_ring
    start = float(phase[keep].min())
    index = np.floor((phase[keep] - start) / width).astype(np.int64)
    n_bins = int(index.max()) + 1
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    filled = counts > 0
    data_sums = np.bincount(index, weights=spectrum[mask][keep], minlength=n_bins)
    freq_sums = np.bincount(index, weights=k[keep], minlength=n_bins)
    counts = counts[filled]
    data = data_sums[filled] / counts
    freq = freq_sums[filled] / counts
    centres = start + (np.flatnonzero(filled) + 0.5) * width
    model = np.sin(centres) ** 2
    half = max(2, round(0.5 * window_rings * bins_per_ring))
    correlation, amplitude, offset = _windowed_fit(data, model, half)
    # Scan outwards from the first window where the rings match (the lowest
    # frequencies may hold no ring yet) to the first where they no longer do.
    above = np.flatnonzero(correlation >= threshold)
    first = int(above[0]) if above.size else 0
    below = np.flatnonzero(correlation[first:] < threshold)
    last = correlation.size - 1 if below.size == 0 else first + int(below[0]) - 1
    last = max(last, 0)
    return EquiphaseProfile(
        frequency_per_a=freq,
        data=data,
        model=model,
        correlation=correlation,
        ring_amplitude=amplitude,
        ring_offset=offset,
        fit_resolution_a=float(1.0 / freq[last]),
    )


def weight_band_by_rings(band: FitBand, profile: EquiphaseProfile) -> FitBand:
    """``band`` weighted by the ring contrast of ``profile`` at each frequency."""
    if profile.frequency_per_a.size < 2:
        return band
    freq = np.maximum.accumulate(profile.frequency_per_a)
    k = np.sqrt(band.k2)
    contrast = np.clip(profile.ring_amplitude, 0.0, None)
    weight = np.interp(k, freq, contrast).astype(np.float32)
    if not float(weight.sum()) > 0:
        return band
    return replace(band, weight=weight)
