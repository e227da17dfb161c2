"""Gold-standard 3D auto-refinement (RELION's ``relion_refine --auto_refine``, our
reading).

The particles are split into two halves (``PosedParticles.subset``: the STAR's
``rlnRandomSubset``, else by row parity) and each half is refined against its own
map, from the same start (the reference low-passed to ``initial_lowpass_a``).
Per iteration and half:

1. **E-step.**  The first iteration scores every rotation of a grid at
   ``initial_step_deg`` and every origin within ``offset_range_px`` of the
   particle's previous origin by the normalised cross-correlation (RELION's
   ``--firstiter_cc``: the reference's grey scale is unknown) and keeps the best
   pose.  Later iterations score the log-likelihood ``-|X - C P|^2 / s2`` (noise
   power ``s2`` per shell from the residuals of the previous iteration): globally
   on the grid while the step is coarser than ``local_from_deg``, then locally,
   on rotations ``R_prev exp([w])`` with rotation vectors ``w`` on a cubic
   lattice of the step within ``local_range_steps`` steps, times origins on a
   square lattice of the offset step within the same number of steps around the
   previous origin.  Either way the scores of a block of particles are real
   matrix products (BLAS; batched per particle for local searches) of the
   particles' weighted Fourier pixels within the current resolution limit and the
   references' central slices (gathered by a numba kernel).
2. **M-step.**  The ``max_poses`` most probable poses of each particle,
   weighted by their posterior, are back-projected into its half's Fourier sums
   (``pipelines.reconstruct``'s insertion kernel, once per symmetry operator);
   each half map is Wiener-filtered with the SSNR from the FSC of the two
   halves.  Below ``join_halves_below_a`` (40 Å) the next iteration's references
   both take the mean of the two maps, so that they keep one orientation
   (RELION's ``--low_resol_join_halves``; 0: never); the FSC is of the maps
   apart.
3. **Sampling.**  An iteration gains resolution when the half-map FSC crosses
   0.143 in a higher (whole) shell than before; hidden variables change little when the
   mean change of the best rotation is within one step or stopped shrinking.
   After an iteration with neither a gain nor large changes the angular step (and
   the offset step) halves, unless the step is already as fine as the resolution
   asks (``resolution / diameter`` radians, the arc one resolution element
   spans at the particle's edge) or ``min_step_deg``: then the refinement has
   converged and one last iteration uses every Fourier pixel up to Nyquist.

The map of both halves' sums (Wiener-filtered with the whole-map SSNR) is the
result; :func:`pipelines.reconstruct.postprocess` gives its masked FSC.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from pipelines.class3d import _kernels
from pipelines.class3d.orientations import pose_grid, shift_grid
from pipelines.class3d.pixels import (
    PixelSet,
    padded_transforms,
    pixel_set,
    prepare_particles,
    soft_circle,
)
from pipelines.errors import StageInputError
from pipelines.reconstruct.backproject import FourierSums, insert_transforms
from pipelines.reconstruct.fsc import shell_index_grid
from pipelines.reconstruct.halves import Reconstruction, maps_from_sums
from pipelines.reconstruct.mask import lowpass_map
from pipelines.reconstruct.particles import PosedParticles
from pipelines.reconstruct.symmetry import symmetry_matrices
from pipelines.simulate.projection import prepare_volume_transform

__all__ = [
    "RefineConfig",
    "RefineIteration",
    "RefineResult",
    "local_rotations",
    "refine",
]

_BLOCK_VALUES = 2**23  # scores held at once (32 MB of float32)
_ENTRY_BYTES = 2**26  # padded slices prepared at once for the insertion


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineConfig:
    """Parameters of a gold-standard refinement (defaults: RELION's auto-refine
    where it has one; see the module docstring for what each does)."""

    box_px: int
    pixel_size_a: float
    symmetry: str = "C1"
    particle_diameter_a: float | None = None
    initial_lowpass_a: float = 40.0
    join_halves_below_a: float = 40.0
    initial_step_deg: float = 15.0
    local_from_deg: float = 7.5
    min_step_deg: float = 0.5
    local_range_steps: float = 2.0
    offset_range_px: float = 3.0
    offset_step_px: float = 1.0
    min_offset_step_px: float = 0.125
    extra_shells: int | None = None
    max_poses: int = 4
    max_iterations: int = 20
    padding: int = 2
    tau2_fudge: float = 1.0

    def __post_init__(self) -> None:
        if self.box_px < 16 or self.box_px % 2:
            raise StageInputError(
                "<argument>", "box_px", self.box_px, "must be even and >= 16"
            )
        if self.pixel_size_a <= 0:
            raise StageInputError(
                "<argument>", "pixel_size_a", self.pixel_size_a, "must be > 0"
            )
        if not 0.1 <= self.min_step_deg <= self.initial_step_deg <= 30.0:
            raise StageInputError(
                "<argument>",
                "initial_step_deg/min_step_deg",
                (self.initial_step_deg, self.min_step_deg),
                "need 0.1 <= min <= initial <= 30",
            )
        if self.max_iterations < 2 or self.max_poses < 1:
            raise StageInputError(
                "<argument>",
                "max_iterations/max_poses",
                (self.max_iterations, self.max_poses),
                "need >= 2 / >= 1",
            )
        if self.initial_lowpass_a < 2.0 * self.pixel_size_a:
            raise StageInputError(
                "<argument>",
                "initial_lowpass_a",
                self.initial_lowpass_a,
                f"must be >= Nyquist ({2.0 * self.pixel_size_a:.2f} Å)",
            )
        symmetry_matrices(self.symmetry)  # an unknown group fails here

    @property
    def mask_radius_px(self) -> float:
        """Half the particle diameter (default 0.9 of the box), in pixels."""
        diameter_a = self.particle_diameter_a or 0.9 * self.box_px * self.pixel_size_a
        return min(diameter_a / (2.0 * self.pixel_size_a), self.box_px / 2.0 - 2.0)

    @property
    def diameter_a(self) -> float:
        return 2.0 * self.mask_radius_px * self.pixel_size_a

    def shell_of(self, resolution_a: float) -> float:
        """The (fractional) Fourier shell of a resolution in Å."""
        return self.box_px * self.pixel_size_a / resolution_a

    def required_step_deg(self, resolution_a: float) -> float:
        """The angular step a resolution asks for: one resolution element at the
        particle's edge, ``resolution / diameter`` radians."""
        return float(np.degrees(resolution_a / self.diameter_a))


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineIteration:
    """One iteration: sampling, the search's resolution limit, what changed."""

    iteration: int
    step_deg: float
    offset_step_px: float
    local: bool
    final: bool
    radius_px: int
    resolution_a: float
    rotation_change_deg: float
    offset_change_px: float
    poses_per_particle: float
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineResult:
    """The final reconstruction and every particle's best pose: ``rotations``
    ``(n, 3, 3)``, ``origin_px`` ``(n, 2)``, ``max_posterior`` ``(n,)``,
    ``subset`` ``(n,)`` (1 or 2)."""

    reconstruction: Reconstruction
    rotations: np.ndarray
    origin_px: np.ndarray
    max_posterior: np.ndarray
    subset: np.ndarray
    noise_power: np.ndarray
    iterations: list[RefineIteration]

    @property
    def resolution_a(self) -> float:
        return self.reconstruction.resolution_a


@dataclass(slots=True)
class _Poses:
    """Per particle: best rotation, origin, max posterior; per half: noise."""

    rotations: np.ndarray
    origin_px: np.ndarray
    max_posterior: np.ndarray
    noise_power: np.ndarray  # (2, N // 2 + 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entries:
    """Poses to insert: particle (row), rotation ``(E, 3, 3)``, origin ``(E, 2)``,
    weight ``(E,)``."""

    row: np.ndarray
    rotation: np.ndarray
    origin_px: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class _Sampling:
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


def _angle_deg(a: np.ndarray, b: np.ndarray, ops: np.ndarray) -> np.ndarray:
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


def _shell_power(values: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
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


def _search_global(
    transform: np.ndarray,
    particles: PosedParticles,
    rows: np.ndarray,
    poses: _Poses,
    noise: np.ndarray,
    sampling: _Sampling,
    config: RefineConfig,
) -> tuple[_Entries, np.ndarray]:
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
        stats += _shell_power(residual, pixels.shell, config.box_px // 2 + 1)
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


def _search_local(
    transform: np.ndarray,
    particles: PosedParticles,
    rows: np.ndarray,
    poses: _Poses,
    noise: np.ndarray,
    sampling: _Sampling,
    config: RefineConfig,
) -> tuple[_Entries, np.ndarray]:
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
        stats += _shell_power(residual, pixels.shell, config.box_px // 2 + 1)
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
    poses: _Poses,
) -> _Entries:
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
    return _Entries(
        row=row[keep],
        rotation=rotation[keep],
        origin_px=origin[keep],
        weight=weight[keep],
    )


def _insert(
    particles: PosedParticles, entries: _Entries, config: RefineConfig
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


def _joined_below(maps: np.ndarray, shell: float) -> np.ndarray:
    """Half maps ``(2, N, N, N)`` with their Fourier components below ``shell``
    replaced by the mean of both (the references of the next iteration)."""
    ft = scipy.fft.rfftn(maps, axes=(1, 2, 3))
    low = shell_index_grid(maps.shape[-1]) < shell
    mean = 0.5 * (ft[0] + ft[1])
    ft[:, low] = mean[low]
    return np.asarray(
        scipy.fft.irfftn(ft, s=maps.shape[1:], axes=(1, 2, 3)), dtype=np.float32
    )


def _image_noise(
    particles: PosedParticles, rows: np.ndarray, config: RefineConfig
) -> np.ndarray:
    """Mean |X|^2 per shell of the masked images: the first noise estimate."""
    pixels = pixel_set(config.box_px, config.box_px // 2)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    x, _ = prepare_particles(particles, rows, pixels, mask)
    power, counts = _shell_power(x, pixels.shell, config.box_px // 2 + 1)
    out = power / np.maximum(counts, 1)
    out[0] = out[1]
    return np.asarray(out)


def _start_maps(reference: np.ndarray, config: RefineConfig) -> np.ndarray:
    volume = np.asarray(reference, dtype=np.float32)
    if volume.shape != (config.box_px,) * 3:
        raise StageInputError(
            "<array>",
            "reference",
            volume.shape,
            f"must be ({config.box_px},) * 3, the particles' box",
        )
    low = lowpass_map(
        volume,
        pixel_size_a=config.pixel_size_a,
        resolution_a=config.initial_lowpass_a,
    )
    return np.stack([low, low])


def _reference_transform(volume: np.ndarray, config: RefineConfig) -> np.ndarray:
    n = config.box_px
    z, y, x = np.indices((n, n, n)) - n // 2
    r = np.sqrt(x * x + y * y + z * z)
    t = np.clip((r - config.mask_radius_px) / 3.0, 0.0, 1.0)
    masked = volume * (0.5 + 0.5 * np.cos(np.pi * t))
    return prepare_volume_transform(masked, oversampling=config.padding)


def _next_sampling(
    config: RefineConfig,
    sampling: _Sampling,
    resolution_a: float,
    settled: bool,
) -> tuple[_Sampling, bool]:
    """The next iteration's sampling and whether the refinement has converged."""
    radius = int(
        min(
            config.box_px // 2,
            np.ceil(config.shell_of(resolution_a))
            + (config.extra_shells or max(3, config.box_px // 10)),
        )
    )
    step, offset = sampling.step_deg, sampling.offset_step_px
    converged = False
    if settled:
        fine_enough = step <= config.required_step_deg(resolution_a)
        if fine_enough or step / 2.0 < config.min_step_deg:
            converged = True
        else:
            step /= 2.0
            offset = max(offset / 2.0, config.min_offset_step_px)
    return (
        _Sampling(
            step_deg=step,
            offset_step_px=offset,
            local=step <= config.local_from_deg + 1e-9,
            cc=False,
            radius_px=config.box_px // 2 if converged else radius,
        ),
        converged,
    )


def refine(
    particles: PosedParticles,
    reference: np.ndarray,
    config: RefineConfig,
    *,
    on_iteration: Callable[[RefineIteration, Reconstruction], None] | None = None,
) -> RefineResult:
    """Refine ``particles`` against ``reference`` ``(N, N, N)`` (see the module
    docstring).  ``on_iteration(record, reconstruction)``, if given, is called
    after every iteration (the half maps of that iteration)."""
    if particles.box_px != config.box_px:
        raise StageInputError(
            "<array>", "images", particles.images.shape, f"box must be {config.box_px}"
        )
    halves = [np.nonzero(particles.subset == h)[0] for h in (1, 2)]
    if min(len(h) for h in halves) < 2:
        raise StageInputError(
            "<particles>",
            "rlnRandomSubset",
            tuple(len(h) for h in halves),
            "both half sets need at least 2 particles",
        )
    maps = _start_maps(reference, config)
    n = particles.n_particles
    poses = _Poses(
        rotations=particles.rotations.copy(),
        origin_px=particles.origin_px.copy(),
        max_posterior=np.zeros(n),
        noise_power=np.stack([_image_noise(particles, h, config) for h in halves]),
    )
    ops = symmetry_matrices(config.symmetry)
    sampling = _Sampling(
        step_deg=config.initial_step_deg,
        offset_step_px=config.offset_step_px,
        local=False,
        cc=True,
        radius_px=int(
            min(
                config.box_px // 2,
                np.ceil(config.shell_of(config.initial_lowpass_a))
                + (config.extra_shells or max(3, config.box_px // 10)),
            )
        ),
    )
    records: list[RefineIteration] = []
    best_shell, smallest_change = -1, np.inf
    final = False
    reconstruction: Reconstruction | None = None
    for iteration in range(1, config.max_iterations + 1):  # a loop over iterations
        start = time.perf_counter()
        if iteration == config.max_iterations and not final:  # the last: all data
            final = True
            sampling = dataclasses.replace(sampling, radius_px=config.box_px // 2)
        previous = poses.rotations.copy(), poses.origin_px.copy()
        sums = []
        n_entries = 0
        for h, rows in enumerate(halves):  # a loop over the two halves
            search = _search_local if sampling.local else _search_global
            entries, stats = search(
                _reference_transform(maps[h], config),
                particles,
                rows,
                poses,
                poses.noise_power[h],
                sampling,
                config,
            )
            measured = stats[0] / np.maximum(stats[1], 1)
            poses.noise_power[h] = np.where(
                stats[1] > 0, measured, poses.noise_power[h]
            )
            n_entries += len(entries.row)
            sums.append(_insert(particles, entries, config))
        reconstruction = maps_from_sums(
            sums[0],
            sums[1],
            pixel_size_a=config.pixel_size_a,
            symmetry=config.symmetry,
            tau2_fudge=config.tau2_fudge,
        )
        maps = np.stack([reconstruction.half1, reconstruction.half2])
        if config.join_halves_below_a > 0:
            maps = _joined_below(maps, config.shell_of(config.join_halves_below_a))
        change = float(np.mean(_angle_deg(poses.rotations, previous[0], ops)))
        offset_change = float(np.mean(np.hypot(*(poses.origin_px - previous[1]).T)))
        resolution = reconstruction.resolution_a
        record = RefineIteration(
            iteration=iteration,
            step_deg=sampling.step_deg,
            offset_step_px=sampling.offset_step_px,
            local=sampling.local,
            final=final,
            radius_px=sampling.radius_px,
            resolution_a=resolution,
            rotation_change_deg=change if iteration > 1 else float("nan"),
            offset_change_px=offset_change,
            poses_per_particle=round(n_entries / n, 2),
            seconds=time.perf_counter() - start,
        )
        records.append(record)
        if on_iteration is not None:
            on_iteration(record, reconstruction)
        if final:
            break
        shell = int(reconstruction.fsc.crossing_index(0.143))  # whole shells
        gained = shell > best_shell
        best_shell = max(best_shell, shell)
        settled = iteration > 1 and (
            change <= sampling.step_deg or change >= 0.9 * smallest_change
        )
        smallest_change = min(smallest_change, change) if iteration > 1 else np.inf
        step_before = sampling.step_deg
        sampling, final = _next_sampling(
            config, sampling, resolution, settled and not gained
        )
        if sampling.step_deg != step_before:
            smallest_change = np.inf
    assert reconstruction is not None  # at least one iteration ran
    return RefineResult(
        reconstruction=reconstruction,
        rotations=poses.rotations,
        origin_px=poses.origin_px,
        max_posterior=poses.max_posterior,
        subset=particles.subset.copy(),
        noise_power=poses.noise_power,
        iterations=records,
    )
