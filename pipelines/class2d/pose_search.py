"""Coarse-then-fine pose search (after RELION's adaptive oversampling; our design).

Pass 1 scores every class x psi x shift of the :class:`~pipelines.class2d.pose_grid.
CoarseGrid` on its low-resolution pixels only (by default shells up to 1/8 of the
box, at least 8: about 1/13 of the products at box 64) in one fused product with
the priors, and keeps per particle the most probable coarse poses that together
hold ``adaptive_fraction`` (0.999) of that posterior.  Pass 2 scores the fine
neighbourhoods of the kept poses on all the current pixels
(:mod:`~pipelines.class2d.pose_blocks`).  By default the coarse grid has the fine
psi and shifts (the coarse pass differs only in resolution): coarsening psi or
shifts by 2 (``build_coarse_grid(psi_factor=2, shift_factor=2)``) let the
discretisation error pick wrong classes in our tests.  The posterior, pruning and
:class:`PoseWeights` are those of the exhaustive search restricted to the scored
poses (the others get weight 0).  When pass 2 would cost more than
``dense_fallback`` times the exhaustive products (diffuse posteriors, early in a
run) the chunk is scored exhaustively instead.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import numpy as np
import scipy.sparse
from numpy.typing import NDArray

from pipelines.class2d.likelihood import PoseWeights, compute_pose_weights, score_poses
from pipelines.class2d.pose_blocks import LISTED_COST, FineBlocks
from pipelines.class2d.pose_grid import CoarseGrid
from pipelines.class2d.sampling import PoseSampling
from pipelines.xp import to_numpy

__all__ = [
    "score_with_priors",
    "search_coarse_fine",
    "select_coarse_poses",
]

PSI_BLOCKS = (1, 3, 6, 12)  # psi blocks per class tried for the fine products


def _shift_log_prior(
    sampling: PoseSampling, offset_sigma_px: float
) -> NDArray[np.float64]:
    shift2: NDArray[np.float64] = np.sum(sampling.shifts_px**2, axis=1)
    return -0.5 * shift2 / max(offset_sigma_px, 1e-3) ** 2


def score_with_priors(
    particles: np.ndarray,
    ctf: np.ndarray,
    inv_sigma2: np.ndarray,
    rotated_refs: np.ndarray,
    sampling: PoseSampling,
    *,
    log_prior_shift: np.ndarray,
    log_prior_pose: np.ndarray,
    xp: ModuleType = np,
) -> np.ndarray:
    """:func:`~pipelines.class2d.likelihood.score_poses` plus the log-priors of
    the shift ``(T,)`` and pose ``(J,)`` as ONE product ``(B*T, 3P+2) x
    (3P+2, J)`` (the norm term and the priors ride along as extra columns, so
    the big ``(B, T, J)`` float32 result is written once) -> ``(B, T, J)``."""
    n, n_pix = particles.shape
    n_shift = sampling.n_shifts
    x = xp.asarray(particles, dtype=xp.complex64)
    c = xp.asarray(ctf, dtype=xp.float32)
    weight = c * xp.asarray(inv_sigma2 * sampling.hermitian_weight, dtype=xp.float32)
    shifted = x[:, None, :] * xp.asarray(sampling.phases)[None, :, :]
    shifted *= weight[:, None, :]
    left = xp.empty((n, n_shift, 3 * n_pix + 2), dtype=xp.float32)
    left[..., :n_pix] = shifted.real
    left[..., n_pix : 2 * n_pix] = shifted.imag
    left[..., 2 * n_pix : 3 * n_pix] = (0.5 * c * weight)[:, None, :]
    left[..., -2] = xp.asarray(log_prior_shift, dtype=xp.float32)[None, :]
    left[..., -1] = 1.0
    refs = xp.asarray(rotated_refs, dtype=xp.complex64)
    right = xp.concatenate(
        [
            refs.real,
            refs.imag,
            -(refs.real**2 + refs.imag**2),
            xp.ones((refs.shape[0], 1), dtype=xp.float32),
            xp.asarray(log_prior_pose, dtype=xp.float32)[:, None],
        ],
        axis=1,
    )
    out = left.reshape(n * n_shift, -1) @ right.T
    return to_numpy(out.reshape(n, n_shift, -1))


def select_coarse_poses(
    score: np.ndarray, adaptive_fraction: float, *, bins_per_decade: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``score`` ``(B, N)`` (log-posterior, unnormalised), the most
    probable entries holding at least ``adaptive_fraction`` of its probability mass:
    ``(particle, entry)`` index arrays, particle-major.

    Only entries within ``log(10 N / (1 - adaptive_fraction))`` of the row's best
    are candidates (the others hold at most a tenth of the allowed loss together).
    Without sorting, the candidates' mass is binned by log10 probability
    (``bins_per_decade``) and whole bins are kept from the top until the fraction
    is reached, so the set can exceed the minimal one by entries within one bin
    (a factor 1.26) of its smallest member.
    """
    n, n_pose = score.shape
    loss = max(1.0 - adaptive_fraction, 1e-12)
    margin = np.log(10.0 * n_pose / loss)
    top = score.max(axis=1)
    b, e = np.nonzero(score >= (top - margin)[:, None])
    log_p = (score[b, e] - top[b]).astype(np.float64)
    p = np.exp(log_p)
    p /= np.bincount(b, weights=p, minlength=n)[b]
    n_bins = int(np.ceil(margin / np.log(10.0) * bins_per_decade)) + 2
    level = np.minimum(
        (-np.log10(p) * bins_per_decade).astype(np.int64), n_bins - 1
    )  # 0 = the most probable tenth of a decade
    mass = np.bincount(b * n_bins + level, weights=p, minlength=n * n_bins).reshape(
        n, n_bins
    )
    before = np.cumsum(mass, axis=1) - mass  # mass of the bins above each bin
    last = np.sum(before < adaptive_fraction, axis=1) - 1  # deepest bin needed
    keep = level <= last[b]
    return b[keep], e[keep]


def search_coarse_fine(
    particles: np.ndarray,
    ctf: np.ndarray,
    inv_sigma2: np.ndarray,
    rotated_refs: np.ndarray,
    sampling: PoseSampling,
    grid: CoarseGrid,
    *,
    log_class_prior: np.ndarray,
    offset_sigma_px: float,
    prune_threshold: float = 1e-4,
    adaptive_fraction: float = 0.999,
    dense_fallback: float = 0.7,
    xp: ModuleType = np,
) -> PoseWeights:
    """Posterior of ``particles`` ``(B, P)`` over the fine poses of ``sampling``
    (``rotated_refs`` ``(K * n_psi, P)``, class-major) by the two passes above.

    When the blocks of pass 2 would cost more than ``dense_fallback`` times the
    exhaustive products (diffuse posteriors, early in a run), the chunk is scored
    exhaustively instead.
    """
    n = particles.shape[0]
    n_class = log_class_prior.size
    n_psi, n_shift = sampling.n_psi, sampling.n_shifts
    coarse = grid.sampling
    n_psi_c = coarse.n_psi
    coarse_rows = (
        np.arange(n_class)[:, None] * n_psi + grid.psi_index[None, :]
    ).ravel()
    pix = grid.pixel_index
    coarse_score = score_with_priors(
        particles[:, pix],
        ctf[:, pix],
        inv_sigma2[pix],
        rotated_refs[coarse_rows][:, pix],
        coarse,
        log_prior_shift=_shift_log_prior(coarse, offset_sigma_px),
        log_prior_pose=np.repeat(log_class_prior, n_psi_c),
        xp=xp,
    ).reshape(n, -1)
    b, entry = select_coarse_poses(coarse_score, adaptive_fraction)
    n_coarse_j = n_class * n_psi_c
    tc, jc = entry // n_coarse_j, entry % n_coarse_j
    k, ic = jc // n_psi_c, jc % n_psi_c
    fine_t = grid.shift_neighbours[tc]  # (kept, shift neighbours)
    fine_psi = grid.psi_neighbours[ic]  # (kept, psi neighbours)
    coarse_macs = n * n_coarse_j * coarse.n_pixels * (2 * coarse.n_shifts + 1)
    dense_macs = n * n_class * n_psi * sampling.n_pixels * (2 * n_shift + 1)
    budget = dense_fallback * dense_macs
    listed = b.size * fine_t.shape[1] * fine_psi.shape[1] * 3.0 * sampling.n_pixels
    blocks = None
    if listed * (LISTED_COST if xp is np else 1.0) <= budget:  # else: diffuse
        codes = (
            (b[:, None, None] * n_shift + fine_t[:, :, None]) * n_class
            + k[:, None, None]
        ) * n_psi + fine_psi[:, None, :]
        codes = np.unique(codes[np.broadcast_to(fine_t[:, :, None] >= 0, codes.shape)])
        if xp is np:  # the numba sampled product
            blocks = FineBlocks(codes, sampling, n_class)
        else:  # block products: the cheapest grouping
            blocks = min(
                (FineBlocks(codes, sampling, n_class, split) for split in PSI_BLOCKS),
                key=lambda candidate: candidate.cost,
            )
    if blocks is None or blocks.cost > budget:  # diffuse: dense is cheaper
        weights = compute_pose_weights(
            score_poses(particles, ctf, inv_sigma2, rotated_refs, sampling, xp=xp),
            sampling,
            log_class_prior=log_class_prior,
            offset_sigma_px=offset_sigma_px,
            prune_threshold=prune_threshold,
        )
        fine_macs, evaluated = float(dense_macs), n_shift * n_class * n_psi * n
    else:
        ll = blocks.score(particles, ctf, inv_sigma2, rotated_refs, xp=xp)
        weights = _fine_posterior(
            ll,
            blocks.bt,
            blocks.k * n_psi + blocks.psi,
            n=n,
            sampling=sampling,
            log_class_prior=log_class_prior,
            offset_sigma_px=offset_sigma_px,
            prune_threshold=prune_threshold,
        )
        fine_macs, evaluated = blocks.macs, blocks.bt.size
    return dataclasses.replace(
        weights,
        product_macs=float(coarse_macs + fine_macs),
        coarse_kept=b.size / max(n, 1),
        fine_evaluated=evaluated / max(n, 1),
    )


def _fine_posterior(
    ll: np.ndarray,
    bt: np.ndarray,
    pose: np.ndarray,
    *,
    n: int,
    sampling: PoseSampling,
    log_class_prior: np.ndarray,
    offset_sigma_px: float,
    prune_threshold: float,
) -> PoseWeights:
    """Normalised, pruned posterior over the scored triplets (sorted by particle)."""
    n_shift, n_psi = sampling.n_shifts, sampling.n_psi
    n_class = log_class_prior.size
    n_pose = n_class * n_psi
    b, t = bt // n_shift, bt % n_shift
    k = pose // n_psi
    score = (
        ll.astype(np.float64)
        + _shift_log_prior(sampling, offset_sigma_px)[t]
        + log_class_prior[k]
    )
    starts = np.searchsorted(b, np.arange(n))
    top = np.maximum.reduceat(score, starts)
    log_z = top + np.log(np.add.reduceat(np.exp(score - top[b]), starts))
    prob = np.exp(score - log_z[b])
    order = np.lexsort((-score, b))
    best = order[starts]
    max_prob = prob[best]
    keep = prob >= prune_threshold * max_prob[b]
    kept = np.where(keep, prob, 0.0)
    kept /= np.bincount(b, weights=kept, minlength=n)[b]
    weights = scipy.sparse.csr_matrix(
        (kept[keep].astype(np.float32), (bt[keep], pose[keep])),
        shape=(n * n_shift, n_pose),
    )
    class_prob = np.bincount(
        b * n_class + k, weights=prob, minlength=n * n_class
    ).reshape(n, n_class)
    return PoseWeights(
        weights=weights,
        best_shift=t[best],
        best_pose=pose[best],
        max_probability=max_prob,
        class_probability=class_prob,
        log_evidence=log_z,
        kept_fraction=float(np.count_nonzero(keep)) / max(n * n_shift * n_pose, 1),
    )
