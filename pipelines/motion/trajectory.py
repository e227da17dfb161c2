"""Smoothing of a measured drift trajectory (real drift is smooth in time).

Per-frame shifts measured by cross-correlation scatter around the true path with an
error that grows as frames lose signal (low dose per frame, radiation damage).  The
specimen's drift is smooth, so the trajectory is fitted by a penalised least-squares
(Whittaker) smoother,

    minimise  |s - m|² + λ |D₃ s|²,

``D₃`` the third difference in frame index (constant velocity and constant
acceleration cost nothing, so the fast, decelerating start of a drift is not
flattened, which a second-difference penalty does and which then offsets every
frame when the path is re-referenced to frame 0), with ``λ`` chosen by generalised
cross-validation (GCV: ``n RSS / (n - tr H)²``, Craven & Wahba 1979), so a clean,
precise measurement is left almost untouched and a noisy one is smoothed hard.  The
same idea (a smooth model in time) is used by MotionCor2's and RELION's fits; this
is an independent formulation.  The smoother is a linear map of the ``n_frames``
values (one ``n × n`` solve per candidate ``λ``: no per-pixel work).  A frame whose
measurement is an outlier (a noise peak picked at low dose) is down-weighted
(Huber weights, iterated), so it neither drags its neighbours nor inflates ``λ``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ROBUST_CUTOFF", "ROBUST_ITERATIONS", "SMOOTHING_GRID", "smooth_trajectory"]

# candidate λ: from almost no smoothing to a near-parabola over 40 frames
SMOOTHING_GRID = np.logspace(-2, 6, 65)
# Huber down-weighting of frames whose residual exceeds this many MAD scales
ROBUST_CUTOFF = 2.5
ROBUST_ITERATIONS = 3


def _whittaker(
    shifts: np.ndarray, weights: np.ndarray, lambdas: np.ndarray
) -> tuple[np.ndarray, float]:
    """Weighted Whittaker smooth ``argmin Σ w |s - m|² + λ |D₃ s|²`` with ``λ`` the
    GCV minimiser over ``lambdas`` (weighted RSS, ``tr H`` of ``(W + λP)⁻¹ W``)."""
    n = shifts.shape[0]
    d3 = np.diff(np.eye(n), 3, axis=0)
    penalty = d3.T @ d3
    w = np.diag(weights)
    best: tuple[float, np.ndarray, float] | None = None
    for lam in lambdas:  # a 40 × 40 solve per candidate λ: no per-pixel work
        hat = np.linalg.solve(w + lam * penalty, w)
        smoothed = hat @ shifts
        rss = float(np.sum(weights[:, None] * (smoothed - shifts) ** 2))
        dof = 2.0 * float(np.trace(hat))
        gcv = 2.0 * n * rss / max(2.0 * n - dof, 1e-12) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, smoothed, float(lam))
    if best is None:
        raise ValueError("smoothing needs at least one candidate λ")
    return best[1], best[2]


def smooth_trajectory(
    shifts_px: np.ndarray, *, smoothing: float | None = None, robust: bool = True
) -> tuple[np.ndarray, float]:
    """Smoothed shifts ``(n_frames, 2)`` and the ``λ`` used.

    ``shifts_px`` ``(n_frames, 2)`` [x, y]; ``smoothing`` ``λ`` (≥ 0) or None to
    choose it by GCV over :data:`SMOOTHING_GRID` (both axes share one ``λ``).  With
    ``robust`` a frame whose residual is far outside the others' (Huber weights,
    ``ROBUST_CUTOFF`` × the MAD scale of the residual lengths) is down-weighted and
    the fit repeated (``ROBUST_ITERATIONS`` times): a single mis-measured frame
    otherwise pulls the GCV choice and its neighbours.  The result is re-referenced
    to its first frame (row 0 is ``[0, 0]``).  Fewer than 4 frames are returned
    unchanged.
    """
    shifts = np.asarray(shifts_px, dtype=np.float64)
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError(f"shifts_px must be (n_frames, 2), got {shifts.shape}")
    n = shifts.shape[0]
    if n < 4:
        return shifts - shifts[0], 0.0
    if smoothing is not None and (smoothing < 0 or not np.isfinite(smoothing)):
        raise ValueError(f"smoothing must be a finite λ >= 0, got {smoothing!r}")
    lambdas = SMOOTHING_GRID if smoothing is None else np.array([smoothing])
    weights = np.ones(n)
    smoothed, lam = _whittaker(shifts, weights, lambdas)
    for _ in range(ROBUST_ITERATIONS if robust else 0):
        residual = np.linalg.norm(shifts - smoothed, axis=1)
        scale = 1.4826 * float(np.median(residual))
        if scale <= 0:
            break
        limit = ROBUST_CUTOFF * scale
        weights = np.minimum(1.0, limit / np.maximum(residual, 1e-300))
        smoothed, lam = _whittaker(shifts, weights, lambdas)
    return smoothed - smoothed[0], lam
