"""The pose search of the gold-standard refinement (:mod:`.refine`): the E-step
and the insertion of the kept poses.

:func:`search_global` scores every rotation of a grid times every origin near
the previous one; :func:`search_local` rotations ``R_prev exp([w])``
(:func:`local_rotations`) times origins near the previous one.  Both score a
block of particles at a time by real matrix products (BLAS) of the particles'
weighted Fourier pixels and the references' central slices (gathered by a
numba kernel), keep each particle's ``max_poses`` most probable poses
(:class:`Entries`), write its best pose into :class:`Poses` and return the
residual power per shell (the next noise estimate).  :func:`insert_entries`
back-projects the kept poses, once per symmetry operator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.class3d import _kernels
from pipelines.class3d.orientations import pose_grid, shift_grid
from pipelines.class3d.pixels import (
    PixelSet,
    padded_transforms,
    pixel_set,
    prepare_particles,
    soft_circle,
)
from pipelines.reconstruct.backproject import FourierSums, insert_transforms
from pipelines.reconstruct.particles import PosedParticles
from pipelines.reconstruct.symmetry import symmetry_matrices

if TYPE_CHECKING:
    from pipelines.class3d.refine import RefineConfig

__all__ = [
    "Entries",
    "Poses",
    "Sampling",
    "angle_deg",
    "insert_entries",
    "local_rotations",
    "search_global",
    "search_local",
    "shell_power",
]

_BLOCK_VALUES = 2**23  # scores held at once (32 MB of float32)
_ENTRY_BYTES = 2**26  # padded slices prepared at once for the insertion


@dataclass(slots=True)
class Poses:
    """Per particle: best rotation, origin, max posterior; per half: noise."""

    rotations: np.ndarray
    origin_px: np.ndarray
    max_posterior: np.ndarray
    noise_power: np.ndarray  # (2, N // 2 + 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entries:
    """Poses to insert: particle (row), rotation ``(E, 3, 3)``, origin ``(E, 2)``,
    weight ``(E,)``."""

    row: np.ndarray
    rotation: np.ndarray
    origin_px: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampling:
    """One iteration's sampling: angular and offset steps, local or global,
    CC (first iteration) or likelihood, the search's Fourier radius."""

    step_deg: float
    offset_step_px: float
    local: bool
    cc: bool
    radius_px: int


def local_rotations(step_deg: float, range_steps: float) -> np.ndarray:
    """Rotations ``(J, 3, 3)`` ``exp([w])`` for rotation vectors ``w`` on a cubic
    lattice of ``step_deg`` within ``range_steps`` steps (the identity first)."""
    n = int(np.floor(range_steps))
    axis = np.arange(-n, n + 1, dtype=np.float64)
    lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    lattice = lattice[np.linalg.norm(lattice, axis=1) <= range_steps + 1e-9]
    lattice = lattice[np.argsort(np.linalg.norm(lattice, axis=1), kind="stable")]
    w = lattice * np.radians(step_deg)
    theta = np.linalg.norm(w, axis=1)
    k = np.zeros((len(w), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    k -= np.transpose(k, (0, 2, 1))
    safe = np.where(theta > 0, theta, 1.0)
    a = np.where(theta > 0, np.sin(theta) / safe, 1.0)[:, None, None]
    b = np.where(theta > 0, (1.0 - np.cos(theta)) / safe**2, 0.5)[:, None, None]
    return np.asarray(np.eye(3) + a * k + b * (k @ k))


def angle_deg(a: np.ndarray, b: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """The smallest angle ``(n,)`` between rotations ``a`` and ``b S`` over the
    symmetry operators ``S``."""
    bs = np.einsum("nij,sjk->nsik", b, ops)
    trace = np.einsum("nij,nsij->ns", a, bs)
    cosine = np.clip((trace.max(axis=1) - 1.0) / 2.0, -1.0, 1.0)
    return np.asarray(np.degrees(np.arccos(cosine)))


def _phases(origin_px: np.ndarray, pixels: PixelSet) -> np.ndarray:
    """``exp(-2 pi i k . t / N)`` ``(..., M)`` complex64 for origins ``(..., 2)``."""
    arg = origin_px[..., :1] * pixels.kx + origin_px[..., 1:] * pixels.ky
    return np.asarray(np.exp(-2j * np.pi * arg / pixels.box_px), dtype=np.complex64)


def shell_power(values: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
    """Sum of ``|values|^2`` ``(B, M)`` per shell and the pixel counts."""
    shell = np.broadcast_to(shells, values.shape).ravel()
    power = np.bincount(shell, np.abs(values.ravel()) ** 2, minlength=n_shells)
    counts = np.bincount(shell, minlength=n_shells).astype(np.float64)
    return np.stack([power[:n_shells], counts[:n_shells]])


def _select(
    score: np.ndarray, k: int, cc: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``k`` flat pose indices ``(B, k)`` of ``score`` ``(B, P)``, their
    weights (posterior renormalised over the ``k``; the best alone for CC) and
    each particle's max posterior."""
    k = min(k, score.shape[1])
    top = np.argpartition(-score, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(score, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    top_scores = np.take_along_axis(top_scores, order, axis=1).astype(np.float64)
    if cc:
        weights = np.zeros(top.shape)
        weights[:, 0] = 1.0
        return top, weights, np.ones(len(top))
    peak = top_scores[:, :1]
    total = np.exp(score.astype(np.float64) - peak).sum(axis=1)
    kept = np.exp(top_scores - peak)
    return top, kept / kept.sum(axis=1, keepdims=True), 1.0 / total


def _scores(
    cross: np.ndarray, power: np.ndarray, x_power: np.ndarray, cc: bool
) -> np.ndarray:
    """Log-likelihood ``2 cross - power`` (up to a constant per particle) or the
    normalised cross-correlation ``cross / sqrt(power |X|^2)``; ``cross``
    ``(B, T, R)``, ``power`` ``(B, 1 or T, R)``, ``x_power`` ``(B,)``."""
    if cc:
        norm = np.sqrt(np.maximum(power, 1e-30) * x_power[:, None, None])
        return np.asarray(cross / norm, dtype=np.float32)
    return np.asarray(2.0 * cross - power, dtype=np.float32)


def _prepared(
    particles: PosedParticles,
    rows: np.ndarray,
    origin_px: np.ndarray,
    pixels: PixelSet,
    mask: np.ndarray,
    noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Transforms recentred by the previous origins ``(B, M)``, CTFs, ``C / s2``
    and ``C^2 / s2``."""
    x, ctf = prepare_particles(particles, rows, pixels, mask)
    x = x * _phases(origin_px[rows], pixels)
    s2 = np.maximum(noise[pixels.shell], 1e-30).astype(np.float32)
    return x, ctf, ctf / s2, ctf * ctf / s2


def search_global(
    transform: np.ndarray,
    particles: PosedParticles,
    rows: np.ndarray,
    poses: Poses,
    noise: np.ndarray,
    sampling: Sampling,
    config: RefineConfig,
) -> tuple[Entries, np.ndarray]:
    """Every rotation of the grid x every origin near the previous one."""
    pixels = pixel_set(config.box_px, sampling.radius_px)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    grid = pose_grid(sampling.step_deg)
    deltas = shift_grid(config.offset_range_px, sampling.offset_step_px)
    slices = np.empty((grid.n_rotations, pixels.n_pixels), dtype=np.complex64)
    _gather(transform, grid.rotations, pixels, config.padding, slices)
    p_stack = np.ascontiguousarray(np.concatenate([slices.real, slices.imag], 1).T)
    p_power = np.ascontiguousarray((slices.real**2 + slices.imag**2).T)
    shift_phase = _phases(deltas, pixels)  # (T, M)
    n_t, n_r = len(deltas), grid.n_rotations
    block = max(1, _BLOCK_VALUES // (n_t * n_r))
    parts = []
    stats = np.zeros((2, config.box_px // 2 + 1))
    for start in range(0, len(rows), block):  # a loop over blocks of particles
        sub = rows[start : start + block]
        x, ctf, ctf_w, ctf2_w = _prepared(
            particles, sub, poses.origin_px, pixels, mask, noise
        )
        shifted = x[:, None, :] * shift_phase[None]  # (b, T, M)
        a = np.concatenate(
            [shifted.real * ctf_w[:, None], shifted.imag * ctf_w[:, None]], axis=2
        )
        cross = (a.reshape(-1, a.shape[2]) @ p_stack).reshape(len(sub), n_t, n_r)
        power = (ctf2_w @ p_power)[:, None, :]
        x_power = (np.abs(x) ** 2).sum(axis=1)
        score = _scores(cross, power, x_power, sampling.cc).reshape(len(sub), -1)
        top, weights, best_p = _select(score, config.max_poses, sampling.cc)
        t_index, r_index = top // n_r, top % n_r
        best_t, best_r = t_index[:, 0], r_index[:, 0]
        residual = shifted[np.arange(len(sub)), best_t] - ctf * slices[best_r]
        stats += shell_power(residual, pixels.shell, config.box_px // 2 + 1)
        parts.append(
            (
                sub,
                grid.rotations[r_index],
                poses.origin_px[sub][:, None, :] + deltas[t_index],
                weights,
                best_p,
            )
        )
    return _entries_from(parts, poses), stats


def _gather(
    transform: np.ndarray,
    rotations: np.ndarray,
    pixels: PixelSet,
    padding: int,
    out: np.ndarray,
) -> None:
    """Central slices of ``transform`` at ``rotations`` ``(R, 3, 3)`` on ``pixels``
    into ``out`` ``(R, M)``."""
    kx = np.ascontiguousarray(pixels.kx * padding)
    ky = np.ascontiguousarray(pixels.ky * padding)
    _kernels.gather_pixels(
        transform,
        np.ascontiguousarray(rotations, dtype=np.float64),
        kx,
        ky,
        np.zeros_like(kx),
        out,
    )


def search_local(
    transform: np.ndarray,
    particles: PosedParticles,
    rows: np.ndarray,
    poses: Poses,
    noise: np.ndarray,
    sampling: Sampling,
    config: RefineConfig,
) -> tuple[Entries, np.ndarray]:
    """Rotations and origins near each particle's previous pose."""
    pixels = pixel_set(config.box_px, sampling.radius_px)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    near = local_rotations(sampling.step_deg, config.local_range_steps)
    deltas = shift_grid(
        config.local_range_steps * sampling.offset_step_px, sampling.offset_step_px
    )
    shift_phase = _phases(deltas, pixels)
    n_j, n_t, m = len(near), len(deltas), pixels.n_pixels
    block = max(1, min(_BLOCK_VALUES // (n_j * n_t), _ENTRY_BYTES // (n_j * m * 8)))
    parts = []
    stats = np.zeros((2, config.box_px // 2 + 1))
    for start in range(0, len(rows), block):  # a loop over blocks of particles
        sub = rows[start : start + block]
        b = len(sub)
        x, ctf, ctf_w, ctf2_w = _prepared(
            particles, sub, poses.origin_px, pixels, mask, noise
        )
        rotations = np.einsum("bik,jkl->bjil", poses.rotations[sub], near)
        flat = np.empty((b * n_j, m), dtype=np.complex64)
        _gather(transform, rotations.reshape(-1, 3, 3), pixels, config.padding, flat)
        slices = flat.reshape(b, n_j, m)
        shifted = x[:, None, :] * shift_phase[None]  # (b, T, M)
        a = np.concatenate(
            [shifted.real * ctf_w[:, None], shifted.imag * ctf_w[:, None]], axis=2
        )
        p_stack = np.concatenate([slices.real, slices.imag], axis=2)  # (b, J, 2M)
        cross = np.matmul(a, np.transpose(p_stack, (0, 2, 1)))  # (b, T, J)
        power = np.einsum("bm,bjm->bj", ctf2_w, slices.real**2 + slices.imag**2)
        x_power = (np.abs(x) ** 2).sum(axis=1)
        score = _scores(cross, power[:, None, :], x_power, sampling.cc)
        top, weights, best_p = _select(
            score.reshape(b, -1), config.max_poses, sampling.cc
        )
        t_index, j_index = top // n_j, top % n_j
        rows_b = np.arange(b)
        residual = shifted[rows_b, t_index[:, 0]] - ctf * slices[rows_b, j_index[:, 0]]
        stats += shell_power(residual, pixels.shell, config.box_px // 2 + 1)
        parts.append(
            (
                sub,
                rotations[rows_b[:, None], j_index],
                poses.origin_px[sub][:, None, :] + deltas[t_index],
                weights,
                best_p,
            )
        )
    return _entries_from(parts, poses), stats


def _entries_from(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    poses: Poses,
) -> Entries:
    """The blocks' poses to insert (weight > 0); the best pose of each particle
    written into ``poses``."""
    row = np.concatenate([np.repeat(p[0], p[3].shape[1]) for p in parts])
    rotation = np.concatenate([p[1].reshape(-1, 3, 3) for p in parts])
    origin = np.concatenate([p[2].reshape(-1, 2) for p in parts])
    weight = np.concatenate([p[3].ravel() for p in parts])
    for sub, rot, org, _, best_p in parts:  # a loop over blocks
        poses.rotations[sub] = rot[:, 0]
        poses.origin_px[sub] = org[:, 0]
        poses.max_posterior[sub] = best_p
    keep = weight > 1e-4
    return Entries(
        row=row[keep],
        rotation=rotation[keep],
        origin_px=origin[keep],
        weight=weight[keep],
    )


def insert_entries(
    particles: PosedParticles, entries: Entries, config: RefineConfig
) -> FourierSums:
    """Fourier sums of the weighted poses, once per symmetry operator."""
    n, pad = config.box_px, config.padding
    npad = n * pad
    ops = symmetry_matrices(config.symmetry)
    mask = soft_circle(n, config.mask_radius_px)
    ky = np.fft.fftfreq(npad, 1.0 / npad)[None, :, None]
    kx = np.arange(npad // 2 + 1)[None, None, :]
    total = FourierSums(
        data=np.zeros((npad, npad, npad // 2 + 1), dtype=np.complex128),
        weight=np.zeros((npad, npad, npad // 2 + 1)),
        box_px=n,
        padding=pad,
        n_particles=0,
    )
    block = max(1, _ENTRY_BYTES // (npad * (npad // 2 + 1) * 12))
    for start in range(0, len(entries.row), block):  # a loop over blocks of poses
        stop = min(start + block, len(entries.row))
        rows, where = np.unique(entries.row[start:stop], return_inverse=True)
        fimages, ctf2 = padded_transforms(particles, rows, mask, pad)
        t = entries.origin_px[start:stop]
        w = entries.weight[start:stop].astype(np.float32)[:, None, None]
        phase = np.exp((-2j * np.pi / npad) * (t[:, 0, None, None] * kx)) * np.exp(
            (-2j * np.pi / npad) * (t[:, 1, None, None] * ky)
        )
        slices = (fimages[where] * phase.astype(np.complex64)) * w
        rotations = np.einsum("eij,sjk->esik", entries.rotation[start:stop], ops)
        total = total + insert_transforms(
            slices,
            ctf2[where] * w,
            np.repeat(np.arange(stop - start), len(ops)),
            rotations.reshape(-1, 3, 3),
            box_px=n,
            padding=pad,
        )
    return dataclasses.replace(total, n_particles=len(np.unique(entries.row)))
