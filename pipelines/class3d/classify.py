"""3D classification (RELION's Class3D, ``relion_refine --ref --K``): K references,
expectation-maximisation over every particle.

One iteration: every particle's poses are searched against the K references
(:func:`pipelines.class3d.expectation.search_poses`, the initial model's E-step:
coarse matrix products over the whole pose grid, the kept poses rescored to the
current limit, the class fractions as prior); each particle's posterior is drawn
from ``max_inserted_poses`` times and back-projected into its class's half-set
sums (the initial model's insertion), and each class's map is ``D / (W + 1 /
tau^2)`` with ``tau^2`` from that class's half-set FSC times ``T``.  The class
fractions are the posterior's mean, the noise spectrum the residual power at the
best poses.  The limit starts at ``initial_resolution_a`` and follows the largest
class's half-set FSC = 0.143 plus 3 shells.

- Greyscale: the references are scaled to the particles first (one least-squares
  factor at the best poses of 500 particles, two passes), so that a map on any
  scale can be given (RELION's ``--firstiter_cc`` does this job).
- Identical references (one map given for K classes) are split as RELION does:
  in the first iteration each particle goes to one random class.
- Cross halves (``cross_halves``, off by default): from the second iteration
  on, a particle of one half set (by index parity) is searched against the maps
  of the other half, so its own noise is absent from the maps it is compared
  with.  On our two-conformation test it helped a random split at a few hundred
  particles per class (70 % -> 98 % correct, an easier pair: the whole 70S and a
  ball of it) but hurt given references (95 % -> 90 %: half maps are noisier).
- Substitution: in the first half of the iterations a class holding less than
  ``inactive_fraction / K`` of the particles becomes a perturbed copy of the
  largest (the initial model's rule).
- Cap: with ``max_particles_per_class`` a class keeps its most probable members
  and the others go to their next most probable class (the 2D rule,
  ``pipelines.class2d.assignment``); only that class's poses are
  back-projected, so the class fractions respect the cap.
- The run stops after ``n_iterations``, or earlier once fewer than
  ``convergence_fraction`` of the particles change class at an unchanged limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.class2d.assignment import _capped_classes as capped_classes
from pipelines.class3d.expectation import (
    PoseSearchResult,
    project_pixels,
    shift_phases,
)
from pipelines.class3d.orientations import PoseGrid
from pipelines.class3d.pixels import pixel_set, prepare_particles, soft_circle
from pipelines.class3d.state import (
    InitialModelConfig,
    InitialModelState,
    restore_rng,
)
from pipelines.class3d.vdam import (
    Assignment,
    _ball_mask,
    _class_maps,
    _entries,
    _half_fsc,
    _image_power,
    _insert,
    _search,
    _substitute,
    reference_transforms,
)
from pipelines.errors import StageInputError
from pipelines.io.checkpoint import rng_state_of
from pipelines.reconstruct.backproject import (
    FourierSums,
    ssnr_from_fsc,
    weights_to_map,
)
from pipelines.reconstruct.mask import lowpass_map
from pipelines.reconstruct.particles import PosedParticles

__all__ = [
    "Classification",
    "ClassificationOptions",
    "classification_config",
    "classify_initial_model",
    "classify_particles",
    "em_iteration",
    "initial_classification_state",
]

_NOISE_PARTICLES = 1000  # particles whose power gives the first noise spectrum
_GREYSCALE_PARTICLES = 500  # particles the references' greyscale is fitted on
_GREYSCALE_PASSES = 2


def classification_config(
    n_classes: int,
    *,
    box_px: int,
    pixel_size_a: float,
    initial_resolution_a: float = 60.0,
    angular_step_deg: float = 7.5,
    **overrides: Any,
) -> InitialModelConfig:
    """The pose search and maps of a classification: RELION's Class3D defaults
    (its GUI's "7.5 degrees": ``--healpix_order 2 --oversampling 1``, 15° then
    7.5°; origins every 1 px; ``--ini_high 60``; T = 4): the rotations searched
    at twice the step, the kept ones refined into their neighbours at the step
    (``oversampling = 2``).  On our two-conformation test
    (SNR 0.3, true references) a 15° grid put 94 % of particles in the right
    class, 7.5° through 15° 97 %; 30° 85 % at SNR 1."""
    fields: dict[str, Any] = {
        "oversampling": 2,
        "offset_range_px": 3.0,
        "offset_step_px": 1.0,
        "tau2_fudge": 4.0,
        **overrides,
    }
    return InitialModelConfig(
        n_classes=n_classes,
        box_px=box_px,
        pixel_size_a=pixel_size_a,
        initial_resolution_a=initial_resolution_a,
        angular_step_deg=angular_step_deg,
        **fields,
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClassificationOptions:
    """How the EM runs (the pose search and maps are the ``InitialModelConfig``'s):
    at most ``n_iterations`` (RELION's Class3D default is 25), stop early when
    fewer than ``convergence_fraction`` of the particles change class; substitute
    empty classes in the first ``substitute_fraction`` of the iterations; a
    class-size cap; particles searched per batch."""

    n_iterations: int = 15
    convergence_fraction: float = 0.005
    substitute_fraction: float = 0.5
    max_particles_per_class: int | None = None
    cross_halves: bool = False
    batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.n_iterations < 1:
            raise StageInputError(
                "<argument>", "iterations", self.n_iterations, "must be >= 1"
            )
        cap = self.max_particles_per_class
        if cap is not None and cap < 1:
            raise StageInputError(
                "<argument>", "max_particles_per_class", cap, "must be >= 1"
            )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """The final ``state`` (maps, fractions, half-set FSCs, limit), each particle's
    best ``assignment``, ``class_probability`` ``(n, K)`` (the posterior summed per
    class, before any cap), and per iteration the fraction of particles that
    changed class (``changed_fraction``, the first is 1)."""

    state: InitialModelState
    assignment: Assignment
    class_probability: np.ndarray
    changed_fraction: list[float]

    @property
    def iterations(self) -> int:
        return len(self.changed_fraction)


def _check_references(config: InitialModelConfig, references: np.ndarray) -> None:
    n = config.box_px
    if references.ndim != 4 or references.shape[1:] != (n, n, n):
        raise StageInputError(
            "<array>",
            "references",
            references.shape,
            f"must be (K, {n}, {n}, {n}), the particles' box",
        )
    if references.shape[0] != config.n_classes:
        raise StageInputError(
            "<array>",
            "references",
            references.shape[0],
            f"must be one map per class ({config.n_classes})",
        )


def initial_classification_state(
    config: InitialModelConfig,
    references: np.ndarray,
    particles: PosedParticles,
    rng: np.random.Generator,
) -> InitialModelState:
    """The state before the first iteration: ``references`` ``(K, N, N, N)``
    low-passed at the initial limit and masked, equal class fractions, the noise
    spectrum from the particles' power (at most 1,000 of them)."""
    _check_references(config, references)
    if particles.box_px != config.box_px:
        raise StageInputError(
            "<array>", "images", particles.images.shape, f"box must be {config.box_px}"
        )
    radius = config.initial_radius_px
    limit_a = config.box_px * config.pixel_size_a / radius
    maps = np.stack(
        [
            lowpass_map(m, pixel_size_a=config.pixel_size_a, resolution_a=limit_a)
            for m in references  # a loop over classes
        ]
    )
    maps = np.asarray(maps * _ball_mask(config), dtype=np.float32)
    k = config.n_classes
    npad = config.padding * config.box_px
    shape = (k, 2, npad, npad, npad // 2 + 1)
    n_noise = min(particles.n_particles, _NOISE_PARTICLES)
    rows = np.sort(rng.choice(particles.n_particles, n_noise, replace=False))
    pixels = pixel_set(config.box_px, config.box_px // 2)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    state = InitialModelState(
        data=np.zeros(shape, dtype=np.complex128),
        weight=np.zeros(shape, dtype=np.float64),
        maps=maps,
        class_fractions=np.full(k, 1.0 / k),
        noise_power=_image_power(particles, rows, pixels, mask),
        half_fsc=np.zeros((k, config.box_px // 2 + 1)),
        radius_px=radius,
        minibatch_index=0,
        particles_processed=0,
        substitutions=0,
        rng_state=rng_state_of(rng),
    )
    rows = rows[:_GREYSCALE_PARTICLES]
    for _ in range(_GREYSCALE_PASSES):  # the fit moves the poses a little
        scale = _greyscale(config, state, particles, rows)
        state = dataclasses.replace(state, maps=np.asarray(maps * scale, np.float32))
        maps = state.maps
    return state


def _greyscale(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    rows: np.ndarray,
) -> float:
    """The factor that brings the maps to the particles' greyscale: least squares
    of the particles ``rows`` against their best projections (CTF and 1/noise
    weighted).  One factor for all classes: the references keep their relative
    scale (a factor per class would let a map missing a domain brighten to mimic
    the whole).  RELION's answer to a reference not on the absolute greyscale is
    a first iteration by cross-correlation (``--firstiter_cc``); this is ours."""
    result, grid, shifts = _search(config, state, particles, rows, state.radius_px)
    klass, rotation, shift, _ = result.best()
    pixels = pixel_set(config.box_px, state.radius_px)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    x, ctf = prepare_particles(particles, rows, pixels, mask)
    transforms = reference_transforms(config, state.maps)
    model = np.empty_like(x)
    for k in range(config.n_classes):  # a loop over classes
        won = klass == k
        rotations = grid.rotations[rotation[won]]
        model[won] = project_pixels(
            transforms[k : k + 1], rotations, pixels, config.padding
        )
    model *= ctf
    s2 = np.maximum(state.noise_power[pixels.shell], 1e-30)
    shifted = x * shift_phases(shifts, pixels)[shift]
    cross = float(((shifted * np.conj(model)).real / s2).sum())
    power = float(((np.abs(model) ** 2) / s2).sum())
    return abs(cross) / max(power, 1e-30)


def _class_probability(result: PoseSearchResult, n_classes: int) -> np.ndarray:
    """The posterior summed per class ``(B, K)``."""
    b = result.posterior.shape[0]
    valid = result.candidate_class >= 0
    rows = np.broadcast_to(np.arange(b)[:, None], valid.shape)[valid]
    flat = rows * n_classes + result.candidate_class[valid]
    sums = np.bincount(flat, result.posterior[valid], minlength=b * n_classes)
    return np.asarray(sums.reshape(b, n_classes))


def _restricted(result: PoseSearchResult, klass: np.ndarray) -> PoseSearchResult:
    """The posterior of each particle restricted to the poses of class ``klass``
    ``(B,)`` and renormalised.  A particle with no pose of that class among its
    candidates keeps its posterior over poses, moved to that class (the poses it
    found elsewhere are the best guess there)."""
    keep = result.candidate_class == klass[:, None]
    posterior = np.where(keep, result.posterior, 0.0)
    total = posterior.sum(axis=1, keepdims=True)
    posterior = np.where(
        total > 0, posterior / np.maximum(total, 1e-300), result.posterior
    )
    moved = (total <= 0) & (result.candidate_class >= 0)
    candidate_class = np.where(moved, klass[:, None], result.candidate_class)
    return dataclasses.replace(
        result, posterior=posterior, candidate_class=candidate_class
    )


def _measured_radius(config: InitialModelConfig, state: InitialModelState) -> int:
    """3 shells beyond the largest class's half-set FSC = 0.143, within the
    initial and final limits."""
    fsc = state.half_fsc[int(np.argmax(state.class_fractions))]
    below = np.nonzero(fsc[1:] < 0.143)[0]
    measured = int(below[0]) + 1 if len(below) else len(fsc) - 1
    return int(np.clip(measured + 3, config.initial_radius_px, config.final_radius_px))


_Searched = tuple[np.ndarray, PoseSearchResult, PoseGrid, np.ndarray]


def _half_maps(config: InitialModelConfig, state: InitialModelState) -> np.ndarray:
    """Each half set's maps ``(2, K, N, N, N)``, regularised by the half-set FSC
    (as the whole map by the FSC of both) and masked like the references."""
    n = config.box_px
    out = np.empty((2, config.n_classes, n, n, n), dtype=np.float32)
    shells = np.arange(n // 2 + 1)
    mask = _ball_mask(config)
    for k in range(config.n_classes):  # a loop over classes
        fsc = _half_fsc(state.data[k], state.weight[k], n, config.padding)
        ssnr = config.tau2_fudge * ssnr_from_fsc(fsc)
        ssnr = np.where(shells <= state.radius_px, ssnr, 0.0)
        for half in (0, 1):
            sums = FourierSums(
                data=state.data[k, half],
                weight=state.weight[k, half],
                box_px=n,
                padding=config.padding,
                n_particles=0,
            )
            out[half, k] = weights_to_map(sums, ssnr=ssnr) * mask
    return out


def _expectation(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    batch_size: int,
    half_maps: np.ndarray | None,
) -> list[_Searched]:
    """The pose search of every particle, batch by batch: (rows, result, grid,
    origins) per batch.  With ``half_maps`` ``(2, K, N, N, N)`` a particle of one
    half set is searched against the other half's maps."""
    out = []
    n = particles.n_particles
    groups: list[tuple[np.ndarray, InitialModelState]] = [(np.arange(n), state)]
    if half_maps is not None:
        groups = [
            (
                np.arange(half, n, 2),
                dataclasses.replace(state, maps=half_maps[1 - half]),
            )
            for half in (0, 1)
        ]
    for members, searched_state in groups:  # the half sets, or all particles
        for start in range(0, len(members), batch_size):  # batches of particles
            rows = members[start : start + batch_size]
            result, grid, shifts = _search(
                config, searched_state, particles, rows, state.radius_px
            )
            out.append((rows, result, grid, shifts))
    return out


def _chosen_classes(
    probability: np.ndarray,
    options: ClassificationOptions,
    split_randomly: bool,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """The one class each particle is back-projected into, or None (all classes
    by their posterior): a random class for the first split, else the capped
    assignment when there is a cap."""
    if split_randomly:
        return np.asarray(rng.integers(0, probability.shape[1], probability.shape[0]))
    cap = options.max_particles_per_class
    if cap is None:
        return None
    return np.asarray(capped_classes(probability, np.argmax(probability, axis=1), cap))


def em_iteration(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    options: ClassificationOptions,
    *,
    split_randomly: bool = False,
) -> tuple[InitialModelState, Assignment, np.ndarray]:
    """One EM iteration over all particles (see the module docstring).

    Returns the new state, each particle's best pose and class from this
    iteration's E-step (within its chosen class when a class was imposed), and
    its class probabilities ``(n, K)`` (before any cap)."""
    rng = restore_rng(state)
    k = config.n_classes
    half_maps = None
    if options.cross_halves and state.minibatch_index > 0:
        half_maps = _half_maps(config, state)
    searched = _expectation(config, state, particles, options.batch_size, half_maps)
    order = np.concatenate([rows for rows, _, _, _ in searched])
    probability = np.empty((particles.n_particles, k))
    probability[order] = np.concatenate(
        [_class_probability(r, k) for _, r, _, _ in searched]
    )
    chosen = _chosen_classes(probability, options, split_randomly, rng)
    data = np.zeros_like(state.data)
    weight = np.zeros_like(state.weight)
    fractions = np.zeros(k)
    power = np.zeros(config.box_px // 2 + 1)
    counts = np.zeros(config.box_px // 2 + 1)
    best = []
    for rows, result, grid, shifts in searched:  # the M-step's sums, by batch
        if chosen is not None:
            result = _restricted(result, chosen[rows])
        entries = _entries(config, result, grid, rng)
        batch_data, batch_weight = _insert(config, particles, rows, entries, shifts)
        data += batch_data
        weight += batch_weight
        fractions += _class_probability(result, k).sum(axis=0)
        power += result.residual_power
        counts += result.residual_counts
        klass, rotation, shift, p = result.best()
        best.append((klass, grid.rotations[rotation], shifts[shift], p))
    iteration = state.minibatch_index
    fractions /= fractions.sum()
    substituted = 0
    if k > 1 and iteration < options.substitute_fraction * options.n_iterations:
        substituted = _substitute(config, data, weight, fractions, rng)
    maps, fsc = _class_maps(config, data, weight, state.radius_px)
    new = dataclasses.replace(
        state,
        data=data,
        weight=weight,
        maps=maps,
        class_fractions=fractions / fractions.sum(),
        noise_power=np.where(
            counts > 0, power / np.maximum(counts, 1), state.noise_power
        ),
        half_fsc=fsc,
        minibatch_index=iteration + 1,
        particles_processed=state.particles_processed + particles.n_particles,
        substitutions=state.substitutions + substituted,
        rng_state=rng_state_of(rng),
    )
    new = dataclasses.replace(new, radius_px=_measured_radius(config, new))
    assignment = Assignment(
        class_index=_in_order(order, [b[0] for b in best]),
        rotations=_in_order(order, [b[1] for b in best]),
        origin_px=_in_order(order, [b[2] for b in best]),
        max_posterior=_in_order(order, [b[3] for b in best]),
    )
    return new, assignment, probability


def _in_order(order: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """The batches' values ``parts`` (rows ``order``) back in particle order."""
    values = np.concatenate(parts)
    out = np.empty_like(values)
    out[order] = values
    return out


def classify_particles(
    config: InitialModelConfig,
    references: np.ndarray,
    particles: PosedParticles,
    *,
    rng: np.random.Generator,
    options: ClassificationOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Classification:
    """Classify ``particles`` into ``config.n_classes`` classes starting from
    ``references`` ``(K, N, N, N)`` (identical references are split at random in
    the first iteration).  ``on_progress(iteration, n_iterations)`` after each."""
    options = options or ClassificationOptions()
    state = initial_classification_state(config, references, particles, rng)
    identical = config.n_classes > 1 and all(
        np.array_equal(state.maps[0], m) for m in state.maps[1:]
    )
    changed: list[float] = []
    previous: np.ndarray | None = None
    assignment: Assignment | None = None
    probability = np.zeros((particles.n_particles, config.n_classes))
    for iteration in range(options.n_iterations):  # a loop over EM iterations
        radius = state.radius_px
        state, assignment, probability = em_iteration(
            config,
            state,
            particles,
            options,
            split_randomly=identical and iteration == 0,
        )
        classes = assignment.class_index
        changed.append(1.0 if previous is None else float(np.mean(classes != previous)))
        previous = classes
        if on_progress is not None:
            on_progress(iteration + 1, options.n_iterations)
        settled = state.radius_px == radius and iteration > 0
        if settled and changed[-1] < options.convergence_fraction:
            break
    assert assignment is not None  # n_iterations >= 1
    return Classification(
        state=state,
        assignment=assignment,
        class_probability=probability,
        changed_fraction=changed,
    )


def classify_initial_model(
    config: InitialModelConfig,
    state: InitialModelState,
    particles: PosedParticles,
    *,
    rng: np.random.Generator,
    options: ClassificationOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Classification:
    """A K-class initial model finished by classification: the VDAM run's class
    maps (``state``) are the references of :func:`classify_particles`, with the
    classification's sampling, from the limit the VDAM run reached.  (The VDAM
    classes themselves are not measured for separation; this is the step that
    assigns every particle with a posterior over the K maps.)"""
    limit_a = config.box_px * config.pixel_size_a / max(state.radius_px, 1)
    class_config = classification_config(
        state.n_classes,
        box_px=config.box_px,
        pixel_size_a=config.pixel_size_a,
        particle_diameter_a=config.particle_diameter_a,
        initial_resolution_a=limit_a,
    )
    return classify_particles(
        class_config,
        state.maps,
        particles,
        rng=rng,
        options=options,
        on_progress=on_progress,
    )
