"""The E-step of the 3D pose search: every (class, orientation, shift) of a grid
scored against a batch of particles, coarse then fine.

The log-likelihood of particle ``i`` at class ``k``, rotation ``r`` and origin ``t``
is, up to a constant per particle,

    L = sum_k 2 Re(conj(X_i S_t) C_i P_kr) / s2 - C_i^2 |P_kr|^2 / s2

over the half-plane Fourier pixels within the resolution limit (``s2`` the noise
power per shell, ``S_t`` the phase ramp of the origin, ``P_kr`` the central slice).
The coarse pass evaluates it for every pose on the pixels within a smaller radius
as two real matrix products per block of particles (BLAS); the poses holding
``adaptive_fraction`` of each particle's coarse posterior (at most
``max_candidates``) are rescored on every pixel by a numba kernel, and their
posterior (with the class fractions as prior) is the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.class3d import _kernels
from pipelines.class3d.orientations import PoseGrid
from pipelines.class3d.pixels import PixelSet, prepare_particles
from pipelines.reconstruct.particles import PosedParticles

__all__ = ["PoseSearchResult", "project_pixels", "search_poses"]

_BLOCK_VALUES = 2**22  # scores held at once in the coarse pass (32 MB of float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoseSearchResult:
    """Per particle ``(B, C)``: candidate class, rotation (grid index) and shift
    (index into the shift grid), -1 where unused, and their posterior (rows sum
    to 1); ``log_likelihood`` ``(B,)`` the best score; ``residual_power``
    ``(N // 2 + 1,)`` the mean |X - C P|^2 per shell at the best poses, with its
    pixel ``counts``."""

    candidate_class: np.ndarray
    candidate_rotation: np.ndarray
    candidate_shift: np.ndarray
    posterior: np.ndarray
    log_likelihood: np.ndarray
    residual_power: np.ndarray
    residual_counts: np.ndarray

    def best(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Class, rotation index, shift index and posterior of each particle's
        most probable pose, ``(B,)`` each."""
        j = np.argmax(self.posterior, axis=1)
        rows = np.arange(len(j))
        return (
            self.candidate_class[rows, j],
            self.candidate_rotation[rows, j],
            self.candidate_shift[rows, j],
            self.posterior[rows, j],
        )


def project_pixels(
    transforms: np.ndarray, rotations: np.ndarray, pixels: PixelSet, padding: int
) -> np.ndarray:
    """Central slices ``(K * R, M)`` complex64 of ``transforms`` ``(K, Np, Np,
    Np // 2 + 1)`` at ``rotations`` ``(R, 3, 3)`` on ``pixels`` (class-major)."""
    n_rot = rotations.shape[0]
    out = np.empty((transforms.shape[0] * n_rot, pixels.n_pixels), dtype=np.complex64)
    kx = np.ascontiguousarray(pixels.kx * padding)
    ky = np.ascontiguousarray(pixels.ky * padding)
    kz = np.zeros_like(kx)
    rots = np.ascontiguousarray(rotations, dtype=np.float64)
    for k in range(transforms.shape[0]):  # a loop over classes (K is small)
        _kernels.gather_pixels(
            transforms[k], rots, kx, ky, kz, out[k * n_rot : (k + 1) * n_rot]
        )
    return out


def shift_phases(shifts_px: np.ndarray, pixels: PixelSet) -> np.ndarray:
    """``exp(-2 pi i k . t / N)`` ``(T, M)`` complex64: multiplying a transform by
    row ``t`` shifts the image by the origin ``t``."""
    arg = shifts_px[:, :1] * pixels.kx[None, :] + shifts_px[:, 1:] * pixels.ky[None, :]
    return np.asarray(np.exp(-2j * np.pi * arg / pixels.box_px), dtype=np.complex64)


def _coarse_candidates(
    x: np.ndarray,
    ctf_w: np.ndarray,
    ctf2_w: np.ndarray,
    projections: np.ndarray,
    phases: np.ndarray,
    log_prior: np.ndarray,
    adaptive_fraction: float,
    max_candidates: int,
) -> np.ndarray:
    """Flat pose indices ``(B, C)`` (``t * KR + kr``; -1 unused) holding
    ``adaptive_fraction`` of each particle's coarse posterior."""
    b, m = x.shape
    n_shift, n_pose = phases.shape[0], projections.shape[0]
    p_real = np.ascontiguousarray(projections.real.T, dtype=np.float32)  # (m, KR)
    p_imag = np.ascontiguousarray(projections.imag.T, dtype=np.float32)
    p_power = p_real * p_real + p_imag * p_imag
    n_cand = min(max_candidates, n_shift * n_pose)
    out = np.full((b, n_cand), -1, dtype=np.int64)
    block = max(1, _BLOCK_VALUES // (n_shift * n_pose))
    for start in range(0, b, block):  # a loop over blocks of particles
        sl = slice(start, min(start + block, b))
        shifted = x[sl, None, :] * phases[None, :, :]  # (bb, T, m)
        w = ctf_w[sl, None, :]
        a_real = (shifted.real * w).reshape(-1, m)
        a_imag = (shifted.imag * w).reshape(-1, m)
        cross = a_real @ p_real + a_imag @ p_imag  # (bb * T, KR)
        power = ctf2_w[sl] @ p_power  # (bb, KR)
        score = 2.0 * cross.reshape(-1, n_shift, n_pose) - power[:, None, :]
        score = (score + log_prior[None, None, :]).reshape(len(cross) // n_shift, -1)
        top = np.argpartition(-score, n_cand - 1, axis=1)[:, :n_cand]
        top_scores = np.take_along_axis(score, top, axis=1)
        order = np.argsort(-top_scores, axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        peak = top_scores[:, :1]
        total = np.exp(score - peak).sum(axis=1, dtype=np.float64)
        mass = np.cumsum(np.exp(top_scores - peak), axis=1) / total[:, None]
        # keep each candidate until the mass before it reaches the fraction
        before = np.concatenate([np.zeros((len(mass), 1)), mass[:, :-1]], axis=1)
        out[sl] = np.where(before < adaptive_fraction, top, -1)
    return out


def search_poses(
    *,
    transforms: np.ndarray,
    grid: PoseGrid,
    fine_grid: PoseGrid,
    children: np.ndarray,
    shifts_px: np.ndarray,
    particles: PosedParticles,
    rows: np.ndarray,
    pixels: PixelSet,
    n_coarse_pixels: int,
    noise_power: np.ndarray,
    log_class_prior: np.ndarray,
    mask: np.ndarray,
    padding: int,
    adaptive_fraction: float = 0.999,
    max_candidates: int = 128,
) -> PoseSearchResult:
    """Score the poses of particles ``rows`` (see the module docstring): the coarse
    pass on ``grid``, the kept coarse rotations refined into their ``children``
    ``(Rc, W)`` on ``fine_grid``; candidate rotations index ``fine_grid``."""
    x, ctf = prepare_particles(particles, rows, pixels, mask)
    s2 = np.maximum(noise_power[pixels.shell], 1e-30).astype(np.float32)
    ctf_w = ctf / s2
    ctf2_w = ctf * ctf / s2
    mc = max(1, n_coarse_pixels)
    coarse_pixels = PixelSet(
        box_px=pixels.box_px,
        kx=pixels.kx[:mc],
        ky=pixels.ky[:mc],
        shell=pixels.shell[:mc],
        row=pixels.row[:mc],
        col=pixels.col[:mc],
    )
    phases = shift_phases(shifts_px, pixels)
    n_classes = transforms.shape[0]
    n_coarse, n_fine = grid.n_rotations, fine_grid.n_rotations
    flat = _coarse_candidates(
        x[:, :mc],
        ctf_w[:, :mc],
        ctf2_w[:, :mc],
        project_pixels(transforms, grid.rotations, coarse_pixels, padding),
        phases[:, :mc],
        np.repeat(log_class_prior, n_coarse).astype(np.float32),
        adaptive_fraction,
        max_candidates,
    )
    valid_coarse = flat >= 0
    coarse_pose = np.where(valid_coarse, flat % (n_classes * n_coarse), 0)
    klass = coarse_pose // n_coarse
    kids = children[coarse_pose % n_coarse]  # (B, C, W)
    valid = valid_coarse[:, :, None] & (kids >= 0)
    pose = np.where(valid, klass[:, :, None] * n_fine + kids, -1).reshape(len(x), -1)
    shift = np.broadcast_to(
        np.where(valid_coarse, flat // (n_classes * n_coarse), 0)[:, :, None],
        valid.shape,
    ).reshape(len(x), -1)
    valid = valid.reshape(len(x), -1)
    projections = project_pixels(transforms, fine_grid.rotations, pixels, padding)
    fine = np.empty(pose.shape, dtype=np.float64)
    shift = np.ascontiguousarray(shift)
    _kernels.score_candidates(x, ctf_w, ctf2_w, projections, phases, pose, shift, fine)
    log_prior = np.repeat(log_class_prior, n_fine)
    fine = np.where(valid, fine + log_prior[np.maximum(pose, 0)], -np.inf)
    best_score = fine.max(axis=1)
    posterior = np.exp(fine - best_score[:, None])
    posterior /= posterior.sum(axis=1, keepdims=True)
    j = np.argmax(posterior, axis=1)
    b = np.arange(len(j))
    best_pose, best_shift = pose[b, j], shift[b, j]
    residual = x * phases[best_shift] - ctf * projections[best_pose]
    n_shells = pixels.box_px // 2 + 1
    shell = np.broadcast_to(pixels.shell, residual.shape).ravel()
    power = np.bincount(shell, np.abs(residual.ravel()) ** 2, minlength=n_shells)
    counts = np.bincount(shell, minlength=n_shells).astype(np.float64)
    return PoseSearchResult(
        candidate_class=np.where(valid, pose // n_fine, -1),
        candidate_rotation=np.where(valid, pose % n_fine, -1),
        candidate_shift=np.where(valid, shift, -1),
        posterior=posterior,
        log_likelihood=best_score,
        residual_power=power[:n_shells],
        residual_counts=counts[:n_shells],
    )
