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
values, computed by one ``n × n`` eigendecomposition: no per-pixel work.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SMOOTHING_GRID", "smooth_trajectory"]

# candidate λ: from almost no smoothing to a near-parabola over 40 frames
SMOOTHING_GRID = np.logspace(-2, 6, 65)


def smooth_trajectory(
    shifts_px: np.ndarray, *, smoothing: float | None = None
) -> tuple[np.ndarray, float]:
    """Smoothed shifts ``(n_frames, 2)`` and the ``λ`` used.

    ``shifts_px`` ``(n_frames, 2)`` [x, y]; ``smoothing`` ``λ`` (≥ 0) or None to
    choose it by GCV over :data:`SMOOTHING_GRID` (both axes share one ``λ``).  The
    result is re-referenced to its first frame (row 0 is ``[0, 0]``).  Fewer than 4
    frames are returned unchanged.
    """
    shifts = np.asarray(shifts_px, dtype=np.float64)
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError(f"shifts_px must be (n_frames, 2), got {shifts.shape}")
    n = shifts.shape[0]
    if n < 4:
        return shifts - shifts[0], 0.0
    if smoothing is not None and (smoothing < 0 or not np.isfinite(smoothing)):
        raise ValueError(f"smoothing must be a finite λ >= 0, got {smoothing!r}")
    d3 = np.diff(np.eye(n), 3, axis=0)
    eigenvalues, basis = np.linalg.eigh(d3.T @ d3)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    coords = basis.T @ shifts  # (n, 2) in the penalty's eigenbasis
    lambdas = SMOOTHING_GRID if smoothing is None else np.array([smoothing])
    # gains (n_lambda, n): the smoother's response on each eigenvector
    gains = 1.0 / (1.0 + lambdas[:, None] * eigenvalues[None, :])
    residual = ((1.0 - gains)[:, :, None] * coords[None]) ** 2
    rss = residual.sum(axis=(1, 2))
    dof = 2.0 * gains.sum(axis=1)  # two axes
    gcv = 2.0 * n * rss / np.maximum(2.0 * n - dof, 1e-12) ** 2
    best = int(np.argmin(gcv))
    smoothed = basis @ (gains[best][:, None] * coords)
    return smoothed - smoothed[0], float(lambdas[best])
