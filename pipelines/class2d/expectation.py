"""The E-step over a set of particles: rotated references, chunked likelihoods,
weighted sums turned back into each class's frame, noise residuals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.class2d.fourier import (
    images_to_pixels,
    padded_grids,
    rotate_transforms,
    scatter_pixels,
    shell_average,
)
from pipelines.class2d.likelihood import (
    PoseWeights,
    accumulate_sums,
    compute_pose_weights,
    score_poses,
)
from pipelines.class2d.particles import ParticleStack, prepare_batch
from pipelines.class2d.pose_grid import build_coarse_grid
from pipelines.class2d.pose_search import search_coarse_fine
from pipelines.class2d.references import circular_mask
from pipelines.class2d.sampling import PoseSampling, build_sampling, restrict_sampling
from pipelines.class2d.state import Class2dConfig, PoseSearch
from pipelines.xp import array_module

__all__ = ["ExpectationSums", "expect_particles", "reference_pixels", "sampling_of"]


def sampling_of(config: Class2dConfig) -> PoseSampling:
    return build_sampling(
        config.box_px,
        radius_px=config.radius_px,
        psi_step_deg=config.psi_step_deg,
        offset_range_px=config.offset_range_px,
        offset_step_px=config.offset_step_px,
    )


def reference_pixels(
    references: np.ndarray, config: Class2dConfig, sampling: PoseSampling
) -> tuple[np.ndarray, np.ndarray]:
    """Masked references as ``(K, P)`` and all their rotations ``(K * n_psi, P)``
    (row ``k * n_psi + i`` is class ``k`` at ``psi_deg[i]``)."""
    masked = references * circular_mask(config.box_px, config.mask_radius_px)
    k = masked.shape[0]
    grids = padded_grids(masked, 2)
    index = np.repeat(np.arange(k), sampling.n_psi)
    angles = np.tile(sampling.psi_deg, k)
    rotated = rotate_transforms(grids, index, angles, sampling, oversampling=2)
    return images_to_pixels(masked, sampling), rotated


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpectationSums:
    """Sums over a set of particles, per half-set ``h`` (0 = even index, 1 = odd).

    ``numerator`` ``(2, K, P)`` complex, ``denominator`` ``(2, K, P)`` in each
    class's frame; ``class_weight`` ``(K,)``; ``residual_power`` ``(n_shells,)``
    mean ``|X - C R|^2 / 2`` at the best pose; per-particle MAP results;
    ``product_macs`` the multiply-adds of the likelihood products evaluated,
    ``coarse_kept`` / ``fine_evaluated`` mean poses per particle (see
    :class:`~pipelines.class2d.likelihood.PoseWeights`).
    """

    numerator: np.ndarray
    denominator: np.ndarray
    class_weight: np.ndarray
    residual_power: np.ndarray
    best_class: np.ndarray
    best_psi_deg: np.ndarray
    best_shift_px: np.ndarray
    max_probability: np.ndarray
    class_probability: np.ndarray
    kept_fraction: float
    product_macs: float = 0.0
    coarse_kept: float = 0.0
    fine_evaluated: float = 0.0


def _unrotate(
    sums: np.ndarray, sampling: PoseSampling, n_classes: int, chunk: int = 512
) -> np.ndarray:
    """``(K * n_psi, P)`` rotated-frame sums -> ``(K, P)`` in the class frames
    (all-zero rows, poses no particle took, are skipped)."""
    nonzero = np.nonzero(np.any(sums != 0, axis=1))[0]
    out = np.zeros((n_classes, sampling.n_pixels), dtype=np.complex64)
    for start in range(0, nonzero.size, chunk):
        rows_in = nonzero[start : start + chunk]
        grids = scatter_pixels(sums[rows_in], sampling)
        angles = -sampling.psi_deg[rows_in % sampling.n_psi]
        turned = rotate_transforms(grids, np.arange(rows_in.size), angles, sampling)
        np.add.at(out, rows_in // sampling.n_psi, turned)
    return out


def expect_particles(
    config: Class2dConfig,
    references: np.ndarray,
    noise_sigma2: np.ndarray,
    class_fractions: np.ndarray,
    particles: ParticleStack,
    indices: np.ndarray,
    *,
    accumulate: bool = True,
    radius_px: int | None = None,
) -> ExpectationSums:
    """E-step of ``indices`` against ``references`` in chunks of
    ``config.chunk_size`` particles (the only Python loop: over chunks).

    With ``radius_px`` only pixels up to that shell take part; the sums come back
    on the full pixel list (zero beyond) and the residual power beyond it is
    ``noise_sigma2`` unchanged.
    """
    full = sampling_of(config)
    if radius_px is not None and radius_px < full.radius_px:
        sampling, keep = restrict_sampling(full, radius_px)
    else:
        sampling, keep = full, np.arange(full.n_pixels)
    k = config.n_classes
    _, rotated = reference_pixels(references, config, sampling)
    inv_sigma2 = (1.0 / np.maximum(noise_sigma2, 1e-12))[sampling.shell].astype(
        np.float32
    )
    log_prior = np.log(np.maximum(class_fractions, 1e-12))
    j = rotated.shape[0]
    num = np.zeros((2, j, sampling.n_pixels), dtype=np.complex64)
    den = np.zeros((2, j, sampling.n_pixels), dtype=np.float32)
    residual = np.zeros(sampling.n_shells)
    n = len(indices)
    best_class = np.empty(n, dtype=np.int64)
    best_psi = np.empty(n)
    best_shift = np.empty((n, 2))
    max_prob = np.empty(n)
    class_prob = np.empty((n, k))
    kept = 0.0
    stats = np.zeros(3)  # product multiply-adds, coarse kept, fine evaluated
    xp = array_module(config.gpu)
    coarse_fine = config.pose_search == PoseSearch.COARSE_FINE
    grid = build_coarse_grid(sampling) if coarse_fine else None
    for start in range(0, n, config.chunk_size):
        part = np.asarray(indices[start : start + config.chunk_size])
        x, ctf = prepare_batch(particles, part, sampling, config.mask_radius_px)
        if grid is not None:
            weights = search_coarse_fine(
                x,
                ctf,
                inv_sigma2,
                rotated,
                sampling,
                grid,
                log_class_prior=log_prior,
                offset_sigma_px=config.offset_sigma_px,
                prune_threshold=config.prune_threshold,
                adaptive_fraction=config.adaptive_fraction,
                xp=xp,
            )
        else:
            weights = compute_pose_weights(
                score_poses(x, ctf, inv_sigma2, rotated, sampling, xp=xp),
                sampling,
                log_class_prior=log_prior,
                offset_sigma_px=config.offset_sigma_px,
                prune_threshold=config.prune_threshold,
            )
        stats += [
            weights.product_macs,
            weights.coarse_kept * len(part),
            weights.fine_evaluated * len(part),
        ]
        sl = slice(start, start + len(part))
        best_class[sl] = weights.best_pose // sampling.n_psi
        best_psi[sl] = sampling.psi_deg[weights.best_pose % sampling.n_psi]
        best_shift[sl] = sampling.shifts_px[weights.best_shift]
        max_prob[sl] = weights.max_probability
        class_prob[sl] = weights.class_probability
        kept += weights.kept_fraction * len(part)
        resid = (
            x * sampling.phases[weights.best_shift] - ctf * rotated[weights.best_pose]
        )
        residual += (
            0.5
            * shell_average(
                (resid.real**2 + resid.imag**2).sum(axis=0, keepdims=True), sampling
            )[0]
        )
        if accumulate:
            _accumulate_halves(x, ctf, inv_sigma2, weights, part, sampling, num, den)
    numerator = np.zeros((2, k, full.n_pixels), dtype=np.complex64)
    denominator = np.zeros((2, k, full.n_pixels), dtype=np.float32)
    if accumulate:
        for h in (0, 1):
            numerator[h][:, keep] = _unrotate(num[h], sampling, k)
            denominator[h][:, keep] = _unrotate(
                den[h].astype(np.complex64), sampling, k
            ).real
    residual_power = np.asarray(noise_sigma2, dtype=np.float64).copy()
    residual_power[: sampling.n_shells] = residual / max(n, 1)
    return ExpectationSums(
        numerator=numerator,
        denominator=denominator,
        class_weight=class_prob.sum(axis=0),
        residual_power=residual_power,
        best_class=best_class,
        best_psi_deg=best_psi,
        best_shift_px=best_shift,
        max_probability=max_prob,
        class_probability=class_prob,
        kept_fraction=kept / max(n, 1),
        product_macs=float(stats[0]),
        coarse_kept=float(stats[1]) / max(n, 1),
        fine_evaluated=float(stats[2]) / max(n, 1),
    )


def _accumulate_halves(
    x: np.ndarray,
    ctf: np.ndarray,
    inv_sigma2: np.ndarray,
    weights: PoseWeights,
    part: np.ndarray,
    sampling: PoseSampling,
    num: np.ndarray,
    den: np.ndarray,
) -> None:
    n_shift = sampling.n_shifts
    for half in (0, 1):
        rows = np.nonzero(part % 2 == half)[0]
        if rows.size == 0:
            continue
        pose_rows = (rows[:, None] * n_shift + np.arange(n_shift)[None, :]).ravel()
        n_h, d_h = accumulate_sums(
            x[rows], ctf[rows], inv_sigma2, weights.weights[pose_rows], sampling
        )
        num[half] += n_h
        den[half] += d_h
