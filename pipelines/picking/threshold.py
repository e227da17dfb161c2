"""A picking threshold chosen from each micrograph's own peak scores.

The local maxima of a picker's score map are of two kinds: noise peaks and particle
peaks.  A fixed threshold in robust SDs does not carry over between micrographs: on a
dense micrograph the particles themselves widen the map's spread, so the same particle
scores fewer SDs there.  :func:`mixture_threshold` fits two Gaussians to the peak
scores (expectation-maximisation, in one dimension) and puts the threshold where a
peak is as likely to belong to the upper component as to the lower.  It does so only
when the two components make a bimodal mixture (their means at least
``MIN_SEPARATION`` pooled SDs apart: below 2 a mixture of two equal Gaussians has one
mode) and the upper one holds at least ``MIN_UPPER_FRACTION`` of the peaks.  Where
they do not, the particles' and the noise's scores overlap (a crowded micrograph of
small particles, or one with no particles at all): the same crossing is used, but
never below ``UNIMODAL_FLOOR_SD``, and the result says it was not bimodal.  With
fewer than ``MIN_PEAKS`` peaks there is nothing to fit and the caller's
``fallback`` is returned.

The fit leaves out the top ``START_TRIM`` of the scores (contamination and carbon
edges score far above any particle and would pull the upper component to them), and
scores above ``OUTLIER_SD`` SDs of the upper component count as outliers: the caller
drops them with :data:`MixtureThreshold.upper`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_PEAKS",
    "MIN_SEPARATION",
    "MIN_UPPER_FRACTION",
    "OUTLIER_SD",
    "START_TRIM",
    "UNIMODAL_FLOOR_SD",
    "MixtureThreshold",
    "mixture_threshold",
]

MIN_SEPARATION = 2.0  # component means this many pooled SDs apart: bimodal
MIN_UPPER_FRACTION = 0.02  # the upper component must hold this share of the peaks
OUTLIER_SD = 4.0  # scores beyond the upper component's mean + this many SDs
START_TRIM = 0.02  # the first fit leaves out this top fraction of the scores
UNIMODAL_FLOOR_SD = 2.0  # the lowest threshold where the scores are not bimodal
MIN_PEAKS = 20  # fewer peaks than this: no fit
_EM_ROUNDS = 100


@dataclass(frozen=True, slots=True)
class MixtureThreshold:
    """The threshold, the upper limit (``inf``: none), whether the mixture was
    bimodal, and its separation (mean difference over the pooled SD)."""

    lower: float
    upper: float
    bimodal: bool
    separation: float


def _fit_two_gaussians(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and SDs of two Gaussians fitted to ``x`` by EM (sorted by
    mean); started from the halves below and above the median."""
    median = float(np.median(x))
    low, high = x[x <= median], x[x > median]
    if len(high) == 0:
        high = low
    w = np.array([0.5, 0.5])
    mu = np.array([low.mean(), high.mean()])
    sd = np.maximum(np.array([low.std(), high.std()]), 1e-3 * (x.std() + 1e-12))
    floor = 1e-3 * (x.std() + 1e-12)
    for _ in range(_EM_ROUNDS):
        z = (x[:, None] - mu[None, :]) / sd[None, :]
        like = w[None, :] * np.exp(-0.5 * z * z) / sd[None, :]
        total = like.sum(axis=1, keepdims=True)
        resp = like / np.maximum(total, 1e-300)
        n = resp.sum(axis=0)
        if np.any(n < 1e-6):
            break
        new_mu = (resp * x[:, None]).sum(axis=0) / n
        new_sd = np.sqrt((resp * (x[:, None] - new_mu) ** 2).sum(axis=0) / n)
        w, sd = n / len(x), np.maximum(new_sd, floor)
        converged = np.allclose(new_mu, mu, rtol=0.0, atol=1e-6 * (x.std() + 1e-12))
        mu = new_mu
        if converged:
            break
    order = np.argsort(mu)
    return w[order], mu[order], sd[order]


def _crossing(w: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> float:
    """The score between the two means where both weighted densities are equal
    (the lower mean if the upper component dominates everywhere between)."""
    grid = np.linspace(mu[0], mu[1], 1025)
    z = (grid[:, None] - mu[None, :]) / sd[None, :]
    log_like = np.log(w)[None, :] - np.log(sd)[None, :] - 0.5 * z * z
    upper_wins = log_like[:, 1] >= log_like[:, 0]
    return float(grid[int(np.argmax(upper_wins))]) if upper_wins.any() else mu[1]


def mixture_threshold(scores: np.ndarray, *, fallback: float) -> MixtureThreshold:
    """The threshold separating particle peaks from noise peaks in ``scores``
    (the score map's local maxima); ``fallback`` where they do not separate."""
    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < MIN_PEAKS:
        return MixtureThreshold(fallback, np.inf, False, 0.0)
    # one fit without the top ``START_TRIM`` (a handful of contamination peaks far
    # above everything would take a component; refitting with them let the upper
    # component drift into that tail on real micrographs)
    w, mu, sd = _fit_two_gaussians(x[x <= np.quantile(x, 1.0 - START_TRIM)])
    upper = float(mu[1] + OUTLIER_SD * sd[1])
    separation = float((mu[1] - mu[0]) / np.sqrt(0.5 * (sd[0] ** 2 + sd[1] ** 2)))
    crossing = _crossing(w, mu, sd)
    if separation < MIN_SEPARATION or w[1] < MIN_UPPER_FRACTION:
        return MixtureThreshold(
            max(crossing, UNIMODAL_FLOOR_SD), upper, False, separation
        )
    return MixtureThreshold(crossing, upper, True, separation)
