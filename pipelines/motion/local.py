"""Patch-based local motion fitted by RELION's third-order space-time polynomial.

The local correction on top of the global shifts is

    L(z, u, v) = sum_g sum_p c[g, p] * basis_g(u, v) * z**p,   p = 1, 2, 3
    basis = (1, u, u², v, v², uv),  u = x / nx - 0.5,  v = y / ny - 0.5

with ``z`` the frame index counted from the first frame (so ``L = 0`` there) and
``x, y`` unbinned pixels: RELION's ``ThirdOrderPolynomialModel`` (coefficient index
``3 g + p - 1``, 18 per axis), so its STAR blocks round-trip.  Each patch of the
globally aligned frames is aligned like the whole frame (against the sum of its
other frames); a patch's shifts are known only up to a constant, so the fit matches
frame-mean-centred data with frame-mean-centred model values.  Patches whose fit
residual is an outlier (> 3 × the median) are dropped and the fit repeated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.motion.align import _one_blas_thread, align_stack, fft_kwargs
from pipelines.motion.dose import DamageModel
from pipelines.motion.spectra import crop_spectrum_to
from pipelines.xp import fft_module, to_numpy

__all__ = ["LocalMotion", "align_patches", "evaluate_local_model", "spatial_basis"]

N_COEFFS_PER_AXIS = 18
SIGNIFICANCE = 1e-3  # false-alarm rate of the test that accepts a local model
CV_FOLDS = 5  # patch folds of the cross-validation that must also accept it
# iterations of the grouped (coarse) patch pass: only a start for the per-frame
# pass, which iterates to convergence; at 4096² it never met the 0.01 px tolerance
# in 10 (the patches' noise), and the 7 iterations after the third were 1.5 CPU s
COARSE_ITERATIONS = 3
# the per-frame patch pass stops when no patch's frame moves by more than this
# (search px): at 4096² (bin 4) it then stops after 6 iterations instead of 9,
# 1.1 CPU s less; the last three moved the patch shifts by 0.006 px RMS (0.07
# px at most, unbinned) against their 0.8 px scatter about the fitted model
PATCH_TOLERANCE_PX = 0.03
# the per-frame patch pass ends early, and the local model is rejected, once
# the F-test on its current estimate (from iteration REJECT_FROM_ITERATION on)
# is below REJECT_MARGIN × the critical value: the second iteration's F value
# was 1.00-1.05 × the converged estimate's on the benchmark and test movies,
# so a movie this far below the line is
# rejected by the converged estimate too; the iterations left (2 of 4 on the
# 4096² benchmark movie) are not paid (docs/motion_speed.md, tenth revision)
REJECT_FROM_ITERATION = 1
REJECT_MARGIN = 0.85
# the first iteration's F value is 0.86-1.11 × the converged estimate's (the
# benchmark, test and 24 simulated movies), so its margin is stricter: below
# 0.75 × the critical value the converged F is below 0.75 / 0.86 = 0.87 × it
# (docs/motion_speed.md, thirteenth revision)
FIRST_REJECT_MARGIN = 0.75
# half-width (unbinned px) of the patch passes' correlation windows, rounded up
# to whole binned px: at 4096² (bin 4) 3 × 3 lags instead of align_stack's
# 5 × 5, ~0.1 CPU s less over the two patch passes (alone); an iteration moves a
# patch's frame by at most 1 binned px, and the shifts where the iterations stop
# (peak at the window's centre) are the same: on the kept 4096² benchmark movie the
# patch shifts are identical (docs/motion_speed.md, fourteenth revision).
# At bin 1 the window is align_stack's (4 px) as before
PATCH_WINDOW_PX = 4.0
# the grouped pass (only a start for the per-frame pass) runs on the patch
# spectra cropped to COARSE_CROP of their band where the boxes are at least
# COARSE_CROP_MIN_BOX_PX (1024² movies and up; the small test and simulated
# movies as before): a quarter of its correlation work, 0.15-0.25 CPU s at
# 4096²; the kept benchmark movie's converged patch shifts move by <= 0.009 px
# (docs/motion_speed.md, fourteenth revision)
COARSE_CROP = 0.5
COARSE_CROP_MIN_BOX_PX = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalMotion:
    """Fitted local model and the patch measurements it came from.

    ``coefficients`` is ``(2, 18)`` (x row, y row; RELION order, unbinned px,
    ``z`` in frames); ``patch_centers_px`` ``(n_patches, 2)`` [x, y] unbinned px;
    ``patch_shifts_px`` ``(n_patches, n_frames, 2)``: the measured local
    correction of each patch (gauge fixed by the model, 0 at the first frame);
    ``patch_used`` ``(n_patches,)`` bool; ``rms_residual_px`` of the fit;
    ``significant``: the model explains the patch data better than no local motion
    by more than noise would (F-test at ``SIGNIFICANCE``) *and* predicts patches it
    was not fitted to better than no local motion does (cross-validation across
    patches; see :func:`align_patches`).
    """

    coefficients: np.ndarray
    patch_centers_px: np.ndarray
    patch_shifts_px: np.ndarray
    patch_used: np.ndarray
    rms_residual_px: float
    significant: bool = True


def spatial_basis(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(..., 6)`` values of ``(1, u, u², v, v², uv)``."""
    return np.stack([np.ones_like(u), u, u * u, v, v * v, u * v], axis=-1)


def evaluate_local_model(
    coefficients: np.ndarray, z: np.ndarray, u: np.ndarray, v: np.ndarray
) -> NDArray[np.float64]:
    """Local correction ``(n_z, n_points, 2)`` [x, y] at frames ``z`` and ``(u, v)``."""
    zpow = np.stack([z, z**2, z**3], axis=-1).astype(np.float64)  # (nz, 3)
    basis = spatial_basis(np.asarray(u, float), np.asarray(v, float))  # (np, 6)
    c = coefficients.reshape(2, 6, 3)
    correction: NDArray[np.float64] = np.einsum("zp,ng,agp->zna", zpow, basis, c)
    return correction


def _design(n_frames: int, basis: np.ndarray) -> tuple[np.ndarray, float]:
    scale = float(max(n_frames - 1, 1))
    z = np.arange(n_frames, dtype=np.float64) / scale
    zpow = np.stack([z, z**2, z**3], axis=-1)
    zpow -= zpow.mean(axis=0)
    # rows (patch, frame), columns 3 g + p
    design = basis[:, None, :, None] * zpow[None, :, None, :]
    return design.reshape(basis.shape[0] * n_frames, 18), scale


def _fit(
    data: np.ndarray, basis: np.ndarray, used: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n_frames = data.shape[1]
    design, scale = _design(n_frames, basis[used])
    centred = data[used] - data[used].mean(axis=1, keepdims=True)
    rhs = centred.reshape(-1, 2)
    coef, *_ = np.linalg.lstsq(design, rhs, rcond=None)  # (18, 2)
    powers = np.tile(np.arange(1, 4), 6)
    coef = coef / scale ** powers[:, None]  # back to z in frames
    return coef.T.copy(), _model_centred(coef, n_frames, basis)


def _model_centred(
    coef: np.ndarray, n_frames: int, basis: np.ndarray
) -> NDArray[np.float64]:
    z = np.arange(n_frames, dtype=np.float64)
    zpow = np.stack([z, z**2, z**3], axis=-1)
    zpow -= zpow.mean(axis=0)
    c = coef.reshape(6, 3, 2)
    model: NDArray[np.float64] = np.einsum("ng,zp,gpa->nza", basis, zpow, c)
    return model


def _predicts_held_out_patches(
    data: np.ndarray, basis: np.ndarray, used: np.ndarray, py: int, px: int
) -> bool:
    """Cross-validation across patches: the model fitted without a fold of patches
    must predict that fold's centred shifts better than zero local motion does,
    summed over ``CV_FOLDS`` folds.

    The F-test assumes noise independent between frames; a patch's shifts are not
    (each frame is aligned against the sum of the others, and noise peaks persist),
    so small, noisy patches can pass it with a model worse than none (1024², 3 px
    local motion: 1.3 px field error).  Noise is independent *between* patches, so
    predicting unseen patches is the honest check.  Folds follow a Latin-square
    pattern (one patch per row and column where the grid allows) so that held-out
    patches are interpolated, not extrapolated."""
    rows, cols = np.divmod(np.arange(py * px), px)
    fold_of = (rows + 2 * cols) % CV_FOLDS
    centred = data - data.mean(axis=1, keepdims=True)
    rss_model = rss_none = 0.0
    for fold in range(CV_FOLDS):
        held = used & (fold_of == fold)
        train = used & ~held
        if not held.any() or train.sum() < 8:
            continue
        _, model = _fit(data, basis, train)
        rss_model += float(np.sum((centred[held] - model[held]) ** 2))
        rss_none += float(np.sum(centred[held] ** 2))
    return rss_none > 0 and rss_model < rss_none


@dataclass(frozen=True, slots=True)
class _FitTest:
    """The polynomial fitted to the patch data and its F-test against no local
    motion (:func:`_fit_and_test`)."""

    coefficients: np.ndarray  # (2, 18)
    used: np.ndarray  # (n_patches,) bool: not an outlier
    rms: np.ndarray  # (n_patches,) RMS residual of each patch, px
    f_value: float  # 0 when the test cannot be made
    critical: float  # the F distribution's upper SIGNIFICANCE point (inf: none)


def _fit_and_test(data: np.ndarray, basis: np.ndarray) -> _FitTest:
    """Fit the polynomial to ``data`` ``(n_patches, n_frames, 2)`` (unbinned px)
    at the patches' ``basis``, drop the patches whose residual is > 3 × the
    median and fit again, and make the F-test: does the model reduce the
    residual more than 36 noise dimensions would?"""
    n_frames = data.shape[1]
    used = np.ones(data.shape[0], dtype=bool)
    coef, model = _fit(data, basis, used)
    centred = data - data.mean(axis=1, keepdims=True)
    rms = np.sqrt(((centred - model) ** 2).sum(axis=-1).mean(axis=-1))
    outliers = rms > 3.0 * np.median(rms)
    if outliers.any() and (~outliers).sum() >= 6:
        used = ~outliers
        coef, model = _fit(data, basis, used)
        rms = np.sqrt(((centred - model) ** 2).sum(axis=-1).mean(axis=-1))
    n_used = int(used.sum())
    rss_model = float(np.sum(((centred - model)[used]) ** 2))
    rss_none = float(np.sum(centred[used] ** 2))
    dof = 2 * n_used * (n_frames - 1) - 2 * N_COEFFS_PER_AXIS
    f_value, critical = 0.0, float("inf")
    if dof > 0 and rss_model > 0:
        f_value = ((rss_none - rss_model) / (2 * N_COEFFS_PER_AXIS)) / (rss_model / dof)
        # the F distribution's upper SIGNIFICANCE point (scipy.stats.f.isf, without
        # importing scipy.stats: 0.8 CPU s on every import of the motion stage)
        import scipy.special  # ~0.3 s: on the first local fit, not with the module

        critical = float(
            scipy.special.fdtri(2 * N_COEFFS_PER_AXIS, dof, 1.0 - SIGNIFICANCE)
        )
    return _FitTest(coef, used, rms, float(f_value), critical)


def align_patches(
    aligned: Any,
    bin_factor: int,
    full_shape: tuple[int, int],
    *,
    patches: tuple[int, int],
    bfactor_px2: float,
    max_shift_px: float = 4.0,
    group_half_width: int = 0,
    damage: DamageModel | None = None,
    workers: int = -1,
    xp: ModuleType = np,
) -> LocalMotion:
    """Measure and fit local motion on globally aligned, binned frames.

    ``aligned`` is ``(n_frames, my, mx)`` float32 (binned by ``bin_factor`` from
    ``full_shape``); ``patches`` is ``(n_y, n_x)``; ``bfactor_px2`` and
    ``max_shift_px`` are in unbinned pixels (the frames are globally aligned: a
    patch searches only a few pixels).  ``damage`` weights each frame by its
    expected damaged signal (matched filter); ``group_half_width`` > 0 aligns
    triangle-weighted sums of neighbouring frames first, as the global alignment.
    The per-frame pass ends early, the model rejected (``significant`` False,
    the fit of that estimate returned), once the F-test on its estimate is
    below ``REJECT_MARGIN`` × the critical value (``FIRST_REJECT_MARGIN`` after
    the first iteration) from iteration ``REJECT_FROM_ITERATION`` on; a model
    that is kept is always fitted to the converged estimate.
    """
    fft = fft_module(xp)
    n_frames, my, mx = aligned.shape
    py, px = patches
    box_y = min(my, 2 * round(0.625 * my / py))
    box_x = min(mx, 2 * round(0.625 * mx / px))
    starts = []
    for j in range(py):
        for i in range(px):
            cy = (j + 0.5) * my / py
            cx = (i + 0.5) * mx / px
            y0 = int(np.clip(round(cy - box_y / 2), 0, my - box_y))
            x0 = int(np.clip(round(cx - box_x / 2), 0, mx - box_x))
            starts.append((y0, x0))
    stack = xp.stack(
        [aligned[:, y0 : y0 + box_y, x0 : x0 + box_x] for y0, x0 in starts]
    )
    stack -= stack.mean(axis=(-3, -2, -1), keepdims=True)
    taper_y = xp.asarray(np.hanning(box_y + 2)[1:-1] ** 0.5, dtype=xp.float32)
    taper_x = xp.asarray(np.hanning(box_x + 2)[1:-1] ** 0.5, dtype=xp.float32)
    stack *= taper_y[:, None] * taper_x[None, :]
    spectra = fft.rfft2(
        stack.astype(xp.float32, copy=False), axes=(-2, -1), **fft_kwargs(xp, workers)
    )
    del stack
    if damage is not None:
        spectra *= damage.filters((box_y, box_x), bin_factor, xp=xp)[None]
    start = xp.zeros((len(starts), n_frames, 2))
    refine_half = max(1, int(np.ceil(PATCH_WINDOW_PX / bin_factor)))
    if group_half_width > 0:
        coarse, coarse_shape = spectra, (box_y, box_x)
        if min(box_y, box_x) >= COARSE_CROP_MIN_BOX_PX:
            coarse_shape = (
                2 * int(box_y * COARSE_CROP / 2),
                2 * int(box_x * COARSE_CROP / 2),
            )
            coarse = crop_spectrum_to(spectra, coarse_shape, xp=xp)
        cut = box_y / coarse_shape[0]
        start = align_stack(
            coarse,
            coarse_shape,
            bfactor_px2=bfactor_px2 / (bin_factor * cut) ** 2,
            max_shift_px=max_shift_px / (bin_factor * cut),
            group_half_width=group_half_width,
            initial_shifts_px=start,
            n_iterations=COARSE_ITERATIONS,
            refine_half_px=max(1, int(np.ceil(PATCH_WINDOW_PX / (bin_factor * cut)))),
            workers=workers,
            xp=xp,
        ) * xp.asarray([box_x / coarse_shape[1], box_y / coarse_shape[0]])
        del coarse
    ny, nx = full_shape
    centers = np.array(
        [
            ((x0 + box_x / 2) * bin_factor, (y0 + box_y / 2) * bin_factor)
            for y0, x0 in starts
        ]
    )
    basis = spatial_basis(centers[:, 0] / nx - 0.5, centers[:, 1] / ny - 0.5)
    early: list[_FitTest] = []  # the fit that ended the iterations, if one did

    def clearly_rejected(current: Any, iteration: int) -> bool:
        if iteration < REJECT_FROM_ITERATION:
            return False
        fit = _fit_and_test(to_numpy(current) * bin_factor, basis)
        margin = FIRST_REJECT_MARGIN if iteration == 1 else REJECT_MARGIN
        if fit.f_value < margin * fit.critical:
            early.append(fit)
            return True
        return False

    shifts = align_stack(
        spectra,
        (box_y, box_x),
        bfactor_px2=bfactor_px2 / bin_factor**2,
        max_shift_px=max_shift_px / bin_factor,
        n_iterations=10,
        tolerance_px=PATCH_TOLERANCE_PX,
        initial_shifts_px=start,
        stop=clearly_rejected,
        refine_half_px=refine_half,
        workers=workers,
        xp=xp,
    )
    data = to_numpy(shifts) * bin_factor  # (n_patches, n_frames, 2) unbinned px
    # the fits' least squares (1000 x 18) on one BLAS thread, as the iterations'
    # (``clearly_rejected`` runs inside ``align_stack``'s limit): threaded
    # OpenBLAS spent 0.35-0.53 CPU s on the fit and the cross-validation's five
    # on the loaded 2-core VM, one thread 0.009 (docs/motion_speed.md,
    # twelfth revision (local path))
    with _one_blas_thread(np):
        fit = early[0] if early else _fit_and_test(data, basis)
        coef, used, rms = fit.coefficients, fit.used, fit.rms
        significant = not early and fit.f_value > fit.critical
        if significant:
            significant = _predicts_held_out_patches(data, basis, used, py, px)
    # fix each patch's gauge so that its data match the model at frame 0
    values = evaluate_local_model(coef, np.arange(n_frames), basis[:, 1], basis[:, 3])
    offset = (data - values.transpose(1, 0, 2)).mean(axis=1, keepdims=True)
    return LocalMotion(
        coefficients=coef,
        patch_centers_px=centers,
        patch_shifts_px=data - offset,
        patch_used=used,
        rms_residual_px=float(np.sqrt(np.mean(rms[used] ** 2))),
        significant=significant,
    )
