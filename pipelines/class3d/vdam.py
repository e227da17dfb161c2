"""VDAM initial model: mini-batch E-steps over a pose grid and a gradient-like
update of the running Fourier sums (RELION-4's ``--grad``, our reading).

One mini-batch: the E-step (:mod:`.expectation`) gives each particle a handful of
posterior-weighted poses; they are back-projected (``pipelines.reconstruct``'s
insertion kernel) into per-class, per-half sums ``D_b`` (data) and ``W_b``
(CTF^2), and the running sums move by the step ``eta`` of the schedule:
``D <- (1 - eta) D + eta D_b`` (``W`` the same).  Each class's map is
``D / (W + 1 / tau^2)`` with ``tau^2`` from its half-set FSC times ``T``, low-pass
at the current limit, masked by a soft sphere.  A class whose fraction falls below
``inactive_fraction / K`` in the middle phase is replaced by a perturbed copy of
the largest one.  The run starts from random poses (a blob per class).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from pipelines.class2d.schedule import in_middle_phase, minibatch_size, step_size
from pipelines.class3d.expectation import PoseSearchResult, search_poses
from pipelines.class3d.orientations import (
    PoseGrid,
    children_of,
    pose_grid,
    shift_grid,
)
from pipelines.class3d.pixels import (
    PixelSet,
    padded_transforms,
    pixel_set,
    prepare_particles,
    soft_circle,
)
from pipelines.class3d.state import (
    InitialModelConfig,
    InitialModelState,
    restore_rng,
)
from pipelines.errors import StageInputError
from pipelines.io.checkpoint import rng_state_of
from pipelines.reconstruct.backproject import (
    FourierSums,
    insert_transforms,
    ssnr_from_fsc,
    weights_to_map,
)
from pipelines.reconstruct.particles import PosedParticles
from pipelines.simulate.projection import prepare_volume_transform

__all__ = [
    "Assignment",
    "assign_particles",
    "initialise_state",
    "reference_transforms",
    "run_minibatches",
    "vdam_step",
]

_ENTRY_BYTES = 2**26  # padded slices prepared at once for the insertion


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Best pose of each particle: ``class_index`` ``(n,)``, ``rotations``
    ``(n, 3, 3)``, ``origin_px`` ``(n, 2)``, ``max_posterior`` ``(n,)``."""

    class_index: np.ndarray
    rotations: np.ndarray
    origin_px: np.ndarray
    max_posterior: np.ndarray


@functools.lru_cache(maxsize=4)
def _pose_grids(
    step_deg: float, oversampling: int
) -> tuple[PoseGrid, PoseGrid, np.ndarray]:
    """The coarse grid (``oversampling`` times the step), the fine grid and the
    coarse -> fine map (the identity without oversampling)."""
    fine = pose_grid(step_deg)
    if oversampling <= 1:
        return fine, fine, np.arange(fine.n_rotations)[:, None]
    coarse = pose_grid(oversampling * step_deg)
    return coarse, fine, children_of(coarse, fine)


def _grids(config: InitialModelConfig) -> tuple[PoseGrid, np.ndarray]:
    """The fine pose grid and the origins."""
    return (
        _pose_grids(config.angular_step_deg, config.oversampling)[1],
        shift_grid(config.offset_range_px, config.offset_step_px),
    )


def _ball_mask(config: InitialModelConfig) -> np.ndarray:
    n = config.box_px
    z, y, x = np.indices((n, n, n)) - n // 2
    r = np.sqrt(x * x + y * y + z * z)
    t = np.clip((r - config.mask_radius_px) / 3.0, 0.0, 1.0)
    return np.asarray(0.5 + 0.5 * np.cos(np.pi * t), dtype=np.float32)


def _half_fsc(
    data: np.ndarray, weight: np.ndarray, box_px: int, padding: int
) -> np.ndarray:
    """FSC ``(N // 2 + 1,)`` of the two halves' ``D / W`` per shell (padded grid,
    sampled at every ``padding``-th shell)."""
    npad = data.shape[-3]
    k = np.arange(npad) - npad // 2
    kx = np.arange(npad // 2 + 1)
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx**2)
    shells = np.rint(radius / padding).astype(np.int64)
    n = box_px // 2 + 1
    inside = shells < n
    with np.errstate(invalid="ignore", divide="ignore"):
        v1 = np.where(weight[0] > 1e-6, data[0] / weight[0], 0.0)
        v2 = np.where(weight[1] > 1e-6, data[1] / weight[1], 0.0)
    cross = np.bincount(shells[inside], (v1 * np.conj(v2)).real[inside], minlength=n)
    p1 = np.bincount(shells[inside], (np.abs(v1) ** 2)[inside], minlength=n)
    p2 = np.bincount(shells[inside], (np.abs(v2) ** 2)[inside], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(p1 * p2 > 0, cross / np.sqrt(p1 * p2), 0.0)
    fsc[0] = 1.0
    return np.asarray(fsc)


def _class_maps(
    config: InitialModelConfig, data: np.ndarray, weight: np.ndarray, radius_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Maps ``(K, N, N, N)`` and half-set FSCs ``(K, N // 2 + 1)`` of the sums."""
    n = config.box_px
    mask = _ball_mask(config)
    maps = np.empty((data.shape[0], n, n, n), dtype=np.float32)
    fscs = np.empty((data.shape[0], n // 2 + 1))
    shells = np.arange(n // 2 + 1)
    for k in range(data.shape[0]):  # a loop over classes
        fsc = _half_fsc(data[k], weight[k], n, config.padding)
        ssnr = config.tau2_fudge * ssnr_from_fsc(fsc, whole_map=True)
        ssnr = np.where(shells <= radius_px, ssnr, 0.0)
        sums = FourierSums(
            data=data[k, 0] + data[k, 1],
            weight=weight[k, 0] + weight[k, 1],
            box_px=n,
            padding=config.padding,
            n_particles=0,
        )
        volume = weights_to_map(sums, ssnr=ssnr)
        if config.positive:
            volume = np.maximum(volume, 0.0)
        maps[k] = volume * mask
        fscs[k] = fsc
    return maps, fscs


def reference_transforms(config: InitialModelConfig, maps: np.ndarray) -> np.ndarray:
    """Padded, centred half-transforms ``(K, Np, Np, Np // 2 + 1)`` of ``maps``."""
    return np.stack(
        [prepare_volume_transform(m, oversampling=config.padding) for m in maps]
    )


def _insert(
    config: InitialModelConfig,
    particles: PosedParticles,
    rows: np.ndarray,
    entries: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    shifts_px: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class, per-half sums of weighted poses.

    ``entries`` = (particle position in ``rows``, class, rotation ``(E, 3, 3)``,
    index into the origins ``shifts_px`` ``(T, 2)``, weight).
    """
    n, pad = config.box_px, config.padding
    npad = n * pad
    k_classes = config.n_classes
    data = np.zeros((k_classes, 2, npad, npad, npad // 2 + 1), dtype=np.complex128)
    weight = np.zeros(data.shape, dtype=np.float64)
    position, klass, rotation, shift_index, w = entries
    mask = soft_circle(n, config.mask_radius_px)
    ky = np.fft.fftfreq(npad, 1.0 / npad)[:, None]
    kx = np.arange(npad // 2 + 1)[None, :]
    # one phase ramp per origin of the grid (exp(-2 pi i k . t / Np))
    phases = np.exp(
        (-2j * np.pi / npad)
        * (shifts_px[:, 0, None, None] * kx + shifts_px[:, 1, None, None] * ky)
    ).astype(np.complex64)
    per_particle = npad * (npad // 2 + 1) * 12 * (1 + config.max_inserted_poses)
    block = max(1, _ENTRY_BYTES // per_particle)
    half = (rows % 2).astype(np.int64)  # particles split by index parity
    for start in range(0, len(rows), block):  # a loop over blocks of particles
        stop = min(start + block, len(rows))
        fimages, ctf2 = padded_transforms(particles, rows[start:stop], mask, pad)
        chosen = (position >= start) & (position < stop)
        local = position[chosen] - start
        ww = w[chosen].astype(np.float32)[:, None, None]
        slices = fimages[local] * phases[shift_index[chosen]] * ww
        weights2 = ctf2[local] * ww
        group = klass[chosen] * 2 + half[position[chosen]]
        for g in np.unique(group):  # a loop over (class, half) groups
            pick = np.nonzero(group == g)[0]
            sums = insert_transforms(
                slices[pick],
                weights2[pick],
                np.arange(len(pick)),
                rotation[chosen][pick],
                box_px=n,
                padding=pad,
            )
            data[g // 2, g % 2] += sums.data
            weight[g // 2, g % 2] += sums.weight
    return data, weight


def _sample_rows(n_particles: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n_particles, size=min(size, n_particles), replace=False))


def initialise_state(
    config: InitialModelConfig, particles: PosedParticles, rng: np.random.Generator
) -> InitialModelState:
    """Random poses and classes for a first batch, reconstructed into one blob per
    class; the noise spectrum from the same particles' power."""
    if particles.box_px != config.box_px:
        raise StageInputError(
            "<array>", "images", particles.images.shape, f"box must be {config.box_px}"
        )
    grid, shifts = _grids(config)
    size = minibatch_size(0, particles.n_particles, config.schedule)
    rows = _sample_rows(particles.n_particles, max(size, 2 * config.n_classes), rng)
    n = len(rows)
    entries = (
        np.arange(n),
        rng.integers(0, config.n_classes, n),
        grid.rotations[rng.integers(0, grid.n_rotations, n)],
        np.full(n, int(np.argmin(np.hypot(shifts[:, 0], shifts[:, 1])))),
        np.ones(n),
    )
    data, weight = _insert(config, particles, rows, entries, shifts)
    radius = config.initial_radius_px
    maps, fsc = _class_maps(config, data, weight, radius)
    pixels = pixel_set(config.box_px, config.box_px // 2)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    from_images = _image_power(particles, rows, pixels, mask)
    return InitialModelState(
        data=data,
        weight=weight,
        maps=maps,
        class_fractions=np.full(config.n_classes, 1.0 / config.n_classes),
        noise_power=from_images,
        half_fsc=fsc,
        radius_px=radius,
        minibatch_index=0,
        particles_processed=0,
        substitutions=0,
        rng_state=rng_state_of(rng),
    )


def _image_power(
    particles: PosedParticles, rows: np.ndarray, pixels: PixelSet, mask: np.ndarray
) -> np.ndarray:
    """Mean |X|^2 per shell of the masked images (signal and noise: the first
    noise estimate, an overestimate that keeps the first posteriors broad)."""
    x, _ = prepare_particles(particles, rows, pixels, mask)
    n_shells = pixels.box_px // 2 + 1
    shell = np.broadcast_to(pixels.shell, x.shape).ravel()
    power = np.bincount(shell, np.abs(x.ravel()) ** 2, minlength=n_shells)
    counts = np.bincount(shell, minlength=n_shells)
    out = power[:n_shells] / np.maximum(counts[:n_shells], 1)
    out[0] = out[1]
    return np.asarray(out)


def _radius_for(
    config: InitialModelConfig, state: InitialModelState, index: int
) -> int:
    """The resolution limit of mini-batch ``index``: the schedule's (linear from
    the initial to the final limit over the first 80 % of the run), held to 3
    shells beyond the largest class's half-set FSC = 0.143."""
    n = config.schedule.n_minibatches
    progress = min(1.0, index / max(0.8 * (n - 1), 1.0))
    low, high = config.initial_radius_px, config.final_radius_px
    scheduled = round(low + progress * (high - low))
    fsc = state.half_fsc[int(np.argmax(state.class_fractions))]
    below = np.nonzero(fsc[1:] < 0.143)[0]
    measured = int(below[0]) + 1 if len(below) else len(fsc) - 1
    return int(np.clip(min(scheduled, measured + 3), low, high))


def _entries(
    config: InitialModelConfig,
    result: PoseSearchResult,
    grid: PoseGrid,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``max_inserted_poses`` draws per particle from its posterior, each weighing
    ``1 / draws`` (repeated draws of a pose add up): an unbiased estimate of the
    posterior-weighted insertion at a bounded cost, where keeping the top few
    poses would favour noise peaks of broad posteriors.  What :func:`_insert`
    back-projects."""
    m = config.max_inserted_poses
    b, c = result.posterior.shape
    cumulative = np.cumsum(result.posterior, axis=1)
    draws = rng.random((b, m)) * cumulative[:, -1:]
    picked = np.minimum(
        (cumulative[:, None, :] <= draws[:, :, None]).sum(axis=2), c - 1
    )  # (b, m) candidate index of each draw
    counts = np.zeros((b, c))
    np.add.at(counts, (np.repeat(np.arange(b), m), picked.ravel()), 1.0 / m)
    keep = counts > 0
    position = np.broadcast_to(np.arange(b)[:, None], (b, c))[keep]
    klass = result.candidate_class[keep]
    rot = result.candidate_rotation[keep]
    shift = result.candidate_shift[keep]
    return position, klass, grid.rotations[rot], shift, counts[keep]


def _search(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    rows: np.ndarray,
    radius_px: int,
) -> tuple[PoseSearchResult, PoseGrid, np.ndarray]:
    coarse_grid, grid, children = _pose_grids(
        config.angular_step_deg, config.oversampling
    )
    shifts = shift_grid(config.offset_range_px, config.offset_step_px)
    pixels = pixel_set(config.box_px, radius_px)
    coarse = max(config.initial_radius_px, config.coarse_radius_fraction * radius_px)
    prior = np.log(np.maximum(state.class_fractions, 1e-6))
    excess = config.noise_fudge_initial - 1.0
    fudge = 1.0 + excess * 0.5 ** (
        state.minibatch_index / max(config.noise_fudge_halflife, 1e-9)
    )
    result = search_poses(
        transforms=reference_transforms(config, state.maps),
        grid=coarse_grid,
        fine_grid=grid,
        children=children,
        shifts_px=shifts,
        particles=particles,
        rows=rows,
        pixels=pixels,
        n_coarse_pixels=pixels.within(min(coarse, radius_px)),
        noise_power=state.noise_power * fudge,
        log_class_prior=prior,
        mask=soft_circle(config.box_px, config.mask_radius_px),
        padding=config.padding,
        adaptive_fraction=config.adaptive_fraction,
        max_candidates=config.max_candidates,
    )
    return result, grid, shifts


def _substitute(
    config: InitialModelConfig,
    data: np.ndarray,
    weight: np.ndarray,
    fractions: np.ndarray,
    rng: np.random.Generator,
) -> int:
    """Replace inactive classes by a perturbed copy of the largest (in place)."""
    inactive = np.nonzero(fractions < config.inactive_fraction / config.n_classes)[0]
    largest = int(np.argmax(fractions))
    for k in inactive:  # a loop over classes
        noise = rng.standard_normal(data[largest].shape) * 0.1
        data[k] = data[largest] * (1.0 + noise)
        weight[k] = weight[largest]
        fractions[k] = fractions[largest] = fractions[largest] / 2.0
    return len(inactive)


def vdam_step(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    rows: np.ndarray | None = None,
) -> InitialModelState:
    """One mini-batch: draw it (or take ``rows``), E-step, back-project, step."""
    rng = restore_rng(state)
    index = state.minibatch_index
    schedule = config.schedule
    if rows is None:
        size = minibatch_size(index, particles.n_particles, schedule)
        rows = _sample_rows(particles.n_particles, size, rng)
    radius = _radius_for(config, state, index)
    result, grid, shifts = _search(config, state, particles, rows, radius)
    data_b, weight_b = _insert(
        config, particles, rows, _entries(config, result, grid, rng), shifts
    )
    eta = step_size(index, schedule)
    data = (1.0 - eta) * state.data + eta * data_b
    weight = (1.0 - eta) * state.weight + eta * weight_b
    batch_fractions = np.bincount(
        result.candidate_class[result.candidate_class >= 0],
        result.posterior[result.candidate_class >= 0],
        minlength=config.n_classes,
    ) / len(rows)
    fractions = (1.0 - eta) * state.class_fractions + eta * batch_fractions
    substituted = 0
    if config.n_classes > 1 and in_middle_phase(index, schedule):
        substituted = _substitute(config, data, weight, fractions, rng)
    measured = result.residual_power / np.maximum(result.residual_counts, 1)
    noise = np.where(
        result.residual_counts > 0,
        (1.0 - eta) * state.noise_power + eta * measured,
        state.noise_power,
    )
    maps, fsc = _class_maps(config, data, weight, radius)
    return dataclasses.replace(
        state,
        data=data,
        weight=weight,
        maps=maps,
        class_fractions=fractions / fractions.sum(),
        noise_power=noise,
        half_fsc=fsc,
        radius_px=radius,
        minibatch_index=index + 1,
        particles_processed=state.particles_processed + len(rows),
        substitutions=state.substitutions + substituted,
        rng_state=rng_state_of(rng),
    )


def run_minibatches(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    *,
    n_minibatches: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> InitialModelState:
    """Step until the schedule ends (or ``n_minibatches`` more steps)."""
    total = config.schedule.n_minibatches
    stop = (
        total
        if n_minibatches is None
        else min(total, state.minibatch_index + n_minibatches)
    )
    while state.minibatch_index < stop:  # a loop over mini-batches
        state = vdam_step(config, state, particles)
        if on_progress is not None:
            on_progress(state.minibatch_index, total)
    return state


def assign_particles(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    *,
    batch_size: int = 2000,
) -> Assignment:
    """The most probable class, rotation and origin of every particle."""
    n = particles.n_particles
    klass = np.empty(n, dtype=np.int64)
    rotations = np.empty((n, 3, 3))
    origins = np.empty((n, 2))
    best_p = np.empty(n)
    for start in range(0, n, batch_size):  # a loop over batches of particles
        rows = np.arange(start, min(start + batch_size, n))
        result, grid, shifts = _search(config, state, particles, rows, state.radius_px)
        k, r, t, p = result.best()
        klass[rows], rotations[rows], origins[rows], best_p[rows] = (
            k,
            grid.rotations[r],
            shifts[t],
            p,
        )
    return Assignment(
        class_index=klass, rotations=rotations, origin_px=origins, max_posterior=best_p
    )
