"""Likelihood of particles against every class x in-plane rotation x shift, as BLAS.

For particle ``b`` (transform ``X_b``, CTF ``C_b``), shift ``t`` (phase ``S_t``) and
rotated reference ``R_j`` (``j`` = class x psi), with ``sigma2`` the noise variance
per real degree of freedom (half of ``E|noise|^2`` per Fourier pixel), the Gaussian
log-likelihood up to a per-particle constant is

    L[b, t, j] = sum_p w_p Re(X_b S_t conj(R_j)) C_b / sigma2
               - 1/2 sum_p w_p C_b^2 |R_j|^2 / sigma2

(``w_p`` = Hermitian weight).  The first sum is one real matrix product of
``(B*T, 2P)`` by ``(2P, J)``; the second is ``(B, P)`` by ``(P, J)``.  A Gaussian
prior on the shift and the class fractions are added; the posterior over all poses
is normalised by log-sum-exp, and poses below ``prune_threshold`` times the
particle's best pose are dropped (a significance cutoff; the kept weights are
renormalised), so the weighted sums of the M-step are sparse matrix products.
The products run on the array module ``xp`` (numpy, or cupy on a GPU; see
:mod:`pipelines.xp`); the posterior and the sums are computed with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.sparse
import scipy.special

from pipelines.class2d.sampling import PoseSampling
from pipelines.xp import to_numpy

__all__ = ["PoseWeights", "accumulate_sums", "compute_pose_weights", "score_poses"]


def _stack_real(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a.real, a.imag], axis=-1)


def score_poses(
    particles: np.ndarray,
    ctf: np.ndarray,
    inv_sigma2: np.ndarray,
    rotated_refs: np.ndarray,
    sampling: PoseSampling,
    *,
    xp: ModuleType = np,
) -> np.ndarray:
    """Log-likelihoods ``(B, T, J)`` float32 (no priors) of ``particles`` ``(B, P)``.

    ``ctf`` ``(B, P)``, ``inv_sigma2`` ``(P,)``, ``rotated_refs`` ``(J, P)``; the
    products run on ``xp`` and the result comes back as a numpy array.
    """
    n, n_pix = particles.shape
    x = xp.asarray(particles, dtype=xp.complex64)
    c = xp.asarray(ctf, dtype=xp.float32)
    refs = xp.asarray(rotated_refs, dtype=xp.complex64)
    weight = c * xp.asarray(inv_sigma2 * sampling.hermitian_weight, dtype=xp.float32)
    shifted = x[:, None, :] * xp.asarray(sampling.phases)[None, :, :]
    shifted *= weight[:, None, :]
    stacked = xp.concatenate([shifted.real, shifted.imag], axis=-1)
    cross = stacked.reshape(n * sampling.n_shifts, 2 * n_pix) @ (
        xp.concatenate([refs.real, refs.imag], axis=-1).T
    )
    power = refs.real**2 + refs.imag**2
    norm = (0.5 * c * weight) @ power.T
    return to_numpy(cross.reshape(n, sampling.n_shifts, -1) - norm[:, None, :])


@dataclass(frozen=True, slots=True, kw_only=True)
class PoseWeights:
    """Pruned posterior of a chunk of ``B`` particles over ``T`` shifts x ``J`` poses.

    ``weights`` is sparse ``(B*T, J)`` (rows = particle-major, shift-minor) summing to
    1 per particle; ``best_shift``/``best_pose`` ``(B,)`` index the MAP pose,
    ``max_probability`` its posterior, ``class_probability`` ``(B, K)``.
    ``product_macs`` counts the multiply-adds of the likelihood products that
    were evaluated; ``coarse_kept`` and ``fine_evaluated`` are the mean numbers
    of coarse poses kept and fine poses scored per particle (coarse-then-fine
    search; 0 and ``T * J`` for the exhaustive one).
    """

    weights: scipy.sparse.csr_matrix
    best_shift: np.ndarray
    best_pose: np.ndarray
    max_probability: np.ndarray
    class_probability: np.ndarray
    log_evidence: np.ndarray
    kept_fraction: float
    product_macs: float = 0.0
    coarse_kept: float = 0.0
    fine_evaluated: float = 0.0


def compute_pose_weights(
    log_likelihood: np.ndarray,
    sampling: PoseSampling,
    *,
    log_class_prior: np.ndarray,
    offset_sigma_px: float,
    prune_threshold: float = 1e-4,
) -> PoseWeights:
    """Posterior over (shift, class x psi) from :func:`score_poses` output."""
    n, n_shift, n_pose = log_likelihood.shape
    n_class = log_class_prior.size
    shift2 = np.sum(sampling.shifts_px**2, axis=1)
    log_prior_shift = -0.5 * shift2 / max(offset_sigma_px, 1e-3) ** 2
    log_prior_pose = np.repeat(log_class_prior, n_pose // n_class)
    score = (
        log_likelihood.astype(np.float64)
        + log_prior_shift[None, :, None]
        + log_prior_pose[None, None, :]
    ).reshape(n, -1)
    best = np.argmax(score, axis=1)
    log_z = scipy.special.logsumexp(score, axis=1)
    prob = np.exp(score - log_z[:, None])
    max_prob = prob[np.arange(n), best]
    keep = prob >= prune_threshold * max_prob[:, None]
    kept = np.where(keep, prob, 0.0)
    kept /= kept.sum(axis=1, keepdims=True)
    rows, cols = np.nonzero(kept.reshape(n * n_shift, n_pose))
    values = kept.reshape(n * n_shift, n_pose)[rows, cols]
    weights = scipy.sparse.csr_matrix(
        (values.astype(np.float32), (rows, cols)), shape=(n * n_shift, n_pose)
    )
    class_prob = prob.reshape(n, n_shift, n_class, -1).sum(axis=(1, 3))
    return PoseWeights(
        weights=weights,
        best_shift=best // n_pose,
        best_pose=best % n_pose,
        max_probability=max_prob,
        class_probability=class_prob,
        log_evidence=log_z,
        kept_fraction=float(keep.mean()),
        product_macs=float(n * n_pose * sampling.n_pixels * (2 * n_shift + 1)),
        fine_evaluated=float(n_shift * n_pose),
    )


def accumulate_sums(
    particles: np.ndarray,
    ctf: np.ndarray,
    inv_sigma2: np.ndarray,
    weights: scipy.sparse.csr_matrix,
    sampling: PoseSampling,
    *,
    dense_above: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums in the rotated frames: numerator ``(J, P)`` complex64
    ``sum gamma C X S / sigma2`` and denominator ``(J, P)`` float32
    ``sum gamma C^2 / sigma2`` (to be turned back by -psi and summed per class).

    ``weights`` ``(B*T, J)`` from :class:`PoseWeights`.  When more than
    ``dense_above`` of the poses survive pruning, the products run as dense BLAS
    (faster than a sparse product at that density); otherwise as sparse ones over
    the (particle, shift) rows that carry weight (only those are shifted).
    """
    n, n_pix = particles.shape
    n_shift = sampling.n_shifts
    ctf2 = ctf * ctf * inv_sigma2[None, :]
    density = weights.nnz / max(weights.shape[0] * weights.shape[1], 1)
    if density > dense_above:
        data = particles[:, None, :] * sampling.phases[None, :, :]
        data *= (ctf * inv_sigma2[None, :])[:, None, :]
        flat = _stack_real(data.reshape(n * n_shift, n_pix))
        dense = weights.toarray()
        stacked = dense.T @ flat
        per_particle = dense.reshape(n, n_shift, -1).sum(axis=1)
        denominator = per_particle.T @ ctf2
    else:
        rows = np.nonzero(np.diff(weights.indptr))[0]
        b, t = rows // n_shift, rows % n_shift
        data = particles[b] * sampling.phases[t]
        data *= ctf[b] * inv_sigma2[None, :]
        stacked = weights[rows].T.tocsr() @ _stack_real(data)
        per_particle = _sum_over_shifts(weights, n, n_shift)
        denominator = per_particle.T @ ctf2
    numerator = stacked[:, :n_pix] + 1j * stacked[:, n_pix:]
    return (
        np.asarray(numerator, dtype=np.complex64),
        np.asarray(denominator, dtype=np.float32),
    )


def _sum_over_shifts(
    weights: scipy.sparse.csr_matrix, n: int, n_shift: int
) -> scipy.sparse.csr_matrix:
    """``(B*T, J)`` -> ``(B, J)``: a sparse aggregation matrix product."""
    rows = np.repeat(np.arange(n), n_shift)
    agg = scipy.sparse.csr_matrix(
        (np.ones(n * n_shift, dtype=np.float32), (rows, np.arange(n * n_shift))),
        shape=(n, n * n_shift),
    )
    return (agg @ weights).tocsr()
