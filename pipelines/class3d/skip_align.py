"""3D classification without alignment (RELION's Class3D ``--skip_align``): every
particle keeps the pose a consensus refinement gave it, and expectation-maximisation
runs over the class only.

One iteration:

- E-step: each class map is projected once per particle at the particle's own
  rotation (the initial model's gather kernel, on the half-plane pixels within a
  fixed resolution limit), and the log-likelihood of particle ``i`` in class ``k``
  is ``sum (2 Re(conj(X_i) C_i P_ik) - C_i^2 |P_ik|^2) / s2`` over those pixels
  (``X_i`` recentred by the particle's origin): elementwise products and sums over
  the particles' arrays, no search.  The posterior over classes has the class
  fractions as prior.
- M-step: each particle's CTF-weighted padded transform is inserted at its
  rotation into every class whose posterior is at least ``min_posterior``, with
  that posterior as weight, into its half set's sums (``PosedParticles.subset``);
  the maps are ``D / (W + 1 / tau2)`` with ``tau2`` from each class's half-set
  FSC times T (RELION's Class3D default 4), within the limit.
- The noise spectrum is fixed: the residual power per shell of the particles
  against the consensus (all particles in one class at their poses), so that the
  total log-likelihood of different starts can be compared.

Starts: each particle is put in a random class (RELION's random split of the
first iteration; ``n_starts`` independent splits), or the classes start from given
references; each start runs at most ``n_iterations`` and the start with the best
total log-likelihood (``sum_i log sum_k pi_k exp(L_ik)``) is kept.  The final maps
are remade from the kept start's posteriors up to Nyquist (the same FSC-based
regularisation), so the written maps are not cut at the classification limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from pipelines.class3d.expectation import project_pixels, shift_phases
from pipelines.class3d.pixels import (
    PixelSet,
    padded_transforms,
    pixel_set,
    prepare_particles,
    soft_circle,
)
from pipelines.class3d.state import InitialModelConfig, InitialModelState
from pipelines.class3d.vdam import Assignment, _class_maps, reference_transforms
from pipelines.errors import StageInputError
from pipelines.io.checkpoint import rng_state_of
from pipelines.reconstruct.backproject import insert_transforms
from pipelines.reconstruct.particles import PosedParticles

__all__ = [
    "DEFAULT_RESOLUTION_A",
    "SkipAlignClassification",
    "SkipAlignOptions",
    "classify_without_alignment",
]

DEFAULT_RESOLUTION_A = 40.0
"""The E-step's fixed limit: on our two-conformation test, particles at poses
~3° off the truth were 99.7 % right at 40 Å, 89.8 % at 30 Å (600 at SNR 1)."""
_CACHE_BYTES = 2**30  # padded transforms kept between iterations up to this size


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SkipAlignOptions:
    """How the EM over classes runs: at most ``n_iterations`` per start (stop
    earlier once fewer than ``convergence_fraction`` of the particles change
    class), ``n_starts`` random splits (the best total log-likelihood kept; one
    start when references are given), the E-step on the pixels within
    ``resolution_a`` (fixed: RELION's ``--strict_highres_exp``), a particle
    inserted into a class when its posterior there is at least ``min_posterior``,
    particles processed ``batch_size`` at a time."""

    n_iterations: int = 30
    n_starts: int = 4
    resolution_a: float = DEFAULT_RESOLUTION_A
    convergence_fraction: float = 0.002
    min_posterior: float = 1e-3
    batch_size: int = 2000

    def __post_init__(self) -> None:
        for name in ("n_iterations", "n_starts", "batch_size"):
            if getattr(self, name) < 1:
                raise StageInputError(
                    "<argument>", name, getattr(self, name), "must be >= 1"
                )
        if self.resolution_a <= 0:
            raise StageInputError(
                "<argument>", "resolution_a", self.resolution_a, "must be > 0 Å"
            )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SkipAlignClassification:
    """The kept start's final ``state`` (maps up to Nyquist, fractions, half-set
    FSCs; ``radius_px`` the classification limit), each particle's class with its
    input pose (``assignment``), ``class_probability`` ``(n, K)``, per iteration
    the fraction of particles that changed class, the total log-likelihood of the
    kept start and of every start (``start_log_likelihoods``), the iterations
    each start ran, and which start was kept."""

    state: InitialModelState
    assignment: Assignment
    class_probability: np.ndarray
    changed_fraction: list[float]
    log_likelihood: float
    start_log_likelihoods: list[float]
    start_iterations: list[int]
    chosen_start: int

    @property
    def iterations(self) -> int:
        return len(self.changed_fraction)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Prepared:
    """What every iteration reads: the particles' transforms recentred by their
    origins ``x`` ``(n, M)`` and CTFs ``ctf`` ``(n, M)`` on ``pixels``; their
    padded transforms for the insertion (``None``: remade per batch)."""

    x: np.ndarray
    ctf: np.ndarray
    pixels: PixelSet
    padded: tuple[np.ndarray, np.ndarray] | None


def _batches(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def _padded(
    config: InitialModelConfig, particles: PosedParticles, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CTF-weighted padded transforms of ``rows`` recentred by their origins, and
    their CTF^2 (what :func:`insert_transforms` takes)."""
    npad = config.padding * config.box_px
    mask = soft_circle(config.box_px, config.mask_radius_px)
    fimages, ctf2 = padded_transforms(particles, rows, mask, config.padding)
    ky = np.fft.fftfreq(npad, 1.0 / npad)[None, :, None]
    kx = np.arange(npad // 2 + 1)[None, None, :]
    origin = particles.origin_px[rows]
    arg = origin[:, 0, None, None] * kx + origin[:, 1, None, None] * ky
    phases = np.exp((-2j * np.pi / npad) * arg).astype(np.complex64)
    return fimages * phases, ctf2


def _prepare(
    config: InitialModelConfig,
    particles: PosedParticles,
    radius_px: int,
    batch_size: int,
) -> _Prepared:
    pixels = pixel_set(config.box_px, radius_px)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    n = particles.n_particles
    x = np.empty((n, pixels.n_pixels), dtype=np.complex64)
    ctf = np.empty((n, pixels.n_pixels), dtype=np.float32)
    for rows in _batches(n, batch_size):  # a loop over batches of particles
        xb, cb = prepare_particles(particles, rows, pixels, mask)
        x[rows] = xb * shift_phases(particles.origin_px[rows], pixels)
        ctf[rows] = cb
    npad = config.padding * config.box_px
    size = n * npad * (npad // 2 + 1) * 12  # complex64 transform + float32 CTF^2
    padded = None
    if size <= _CACHE_BYTES:
        padded = _padded(config, particles, np.arange(n))
    return _Prepared(x=x, ctf=ctf, pixels=pixels, padded=padded)


def _sums(
    config: InitialModelConfig,
    particles: PosedParticles,
    prepared: _Prepared,
    probability: np.ndarray,
    options: SkipAlignOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """The M-step's sums ``(K, 2, Np, Np, Np // 2 + 1)``: every particle inserted
    at its pose into each class it belongs to, weighted by its posterior there."""
    k_classes = probability.shape[1]
    npad = config.padding * config.box_px
    shape = (k_classes, 2, npad, npad, npad // 2 + 1)
    data = np.zeros(shape, dtype=np.complex128)
    weight = np.zeros(shape, dtype=np.float64)
    half = (particles.subset == 2).astype(np.int64)
    for rows in _batches(particles.n_particles, options.batch_size):  # batches
        if prepared.padded is not None:
            fimages, ctf2 = prepared.padded[0][rows], prepared.padded[1][rows]
        else:
            fimages, ctf2 = _padded(config, particles, rows)
        for k in range(k_classes):  # a loop over classes
            for h in (0, 1):  # the half sets
                p = probability[rows, k]
                pick = np.nonzero((p >= options.min_posterior) & (half[rows] == h))[0]
                if len(pick) == 0:
                    continue
                w = p[pick].astype(np.float32)[:, None, None]
                sums = insert_transforms(
                    fimages[pick] * w,
                    ctf2[pick] * w,
                    np.arange(len(pick)),
                    particles.rotations[rows[pick]],
                    box_px=config.box_px,
                    padding=config.padding,
                )
                data[k, h] += sums.data
                weight[k, h] += sums.weight
    return data, weight


def _log_likelihoods(
    config: InitialModelConfig,
    particles: PosedParticles,
    prepared: _Prepared,
    maps: np.ndarray,
    noise_power: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``L`` ``(n, K)`` (see the module docstring) and, at each particle's most
    likely class, the residual power per shell and its pixel counts."""
    transforms = reference_transforms(config, maps)
    pixels = prepared.pixels
    s2 = np.maximum(noise_power[pixels.shell], 1e-30).astype(np.float32)
    n, k_classes = particles.n_particles, maps.shape[0]
    scores = np.empty((n, k_classes))
    n_shells = config.box_px // 2 + 1
    power = np.zeros(n_shells)
    for rows in _batches(n, batch_size):  # a loop over batches of particles
        x, ctf = prepared.x[rows], prepared.ctf[rows]
        rotations = particles.rotations[rows]
        models = []
        for k in range(k_classes):  # a loop over classes (one slice per particle)
            model = ctf * project_pixels(
                transforms[k : k + 1], rotations, pixels, config.padding
            )
            cross = (x.real * model.real + x.imag * model.imag) / s2
            scores[rows, k] = (2.0 * cross - (np.abs(model) ** 2) / s2).sum(axis=1)
            models.append(model)
        best = np.argmax(scores[rows], axis=1)
        residual = x - np.stack(models)[best, np.arange(len(rows))]
        power += np.bincount(
            np.broadcast_to(pixels.shell, residual.shape).ravel(),
            (np.abs(residual) ** 2).ravel(),
            minlength=n_shells,
        )[:n_shells]
    counts = np.bincount(pixels.shell, minlength=n_shells)[:n_shells] * float(n)
    return scores, power, counts


def _posterior(scores: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, float]:
    """The class posterior ``(n, K)`` and the total log-likelihood (up to a
    constant that depends on the particles and the noise only)."""
    logp = scores + np.log(np.maximum(fractions, 1e-12))[None, :]
    peak = logp.max(axis=1, keepdims=True)
    p = np.exp(logp - peak)
    total = p.sum(axis=1, keepdims=True)
    return p / total, float((peak[:, 0] + np.log(total[:, 0])).sum())


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Start:
    probability: np.ndarray
    log_likelihood: float
    changed: list[float]


def _run_start(
    config: InitialModelConfig,
    particles: PosedParticles,
    prepared: _Prepared,
    probability: np.ndarray,
    noise_power: np.ndarray,
    options: SkipAlignOptions,
    radius_px: int,
    on_iteration: Callable[[], None] | None,
) -> _Start:
    """EM from the class ``probability`` ``(n, K)`` of a start."""
    changed: list[float] = []
    previous = np.argmax(probability, axis=1)
    log_likelihood = -np.inf
    for _ in range(options.n_iterations):  # a loop over EM iterations
        fractions = probability.mean(axis=0)
        data, weight = _sums(config, particles, prepared, probability, options)
        maps, _ = _class_maps(config, data, weight, radius_px)
        scores, _, _ = _log_likelihoods(
            config, particles, prepared, maps, noise_power, options.batch_size
        )
        probability, log_likelihood = _posterior(scores, fractions)
        classes = np.argmax(probability, axis=1)
        changed.append(float(np.mean(classes != previous)))
        previous = classes
        if on_iteration is not None:
            on_iteration()
        if len(changed) > 1 and changed[-1] < options.convergence_fraction:
            break
    return _Start(
        probability=probability, log_likelihood=log_likelihood, changed=changed
    )


def _consensus_noise(
    config: InitialModelConfig,
    particles: PosedParticles,
    prepared: _Prepared,
    options: SkipAlignOptions,
    radius_px: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The consensus map (all particles, one class) ``(1, N, N, N)`` and the
    residual power per shell of the particles against it (the fixed noise)."""
    ones = np.ones((particles.n_particles, 1))
    data, weight = _sums(config, particles, prepared, ones, options)
    one = dataclasses.replace(config, n_classes=1)
    maps, _ = _class_maps(one, data, weight, radius_px)
    flat = np.ones(config.box_px // 2 + 1)  # any noise: only the residual is used
    _, power, counts = _log_likelihoods(
        one, particles, prepared, maps, flat, options.batch_size
    )
    noise = power / np.maximum(counts, 1)
    inside = counts > 0
    noise = np.where(inside, noise, noise[inside][-1])
    noise[0] = noise[1]
    return maps, noise


def _reference_probability(
    config: InitialModelConfig,
    particles: PosedParticles,
    prepared: _Prepared,
    references: np.ndarray,
    consensus: np.ndarray,
    noise_power: np.ndarray,
    options: SkipAlignOptions,
) -> np.ndarray:
    """The first posterior from given ``references`` ``(K, N, N, N)``, brought to
    the consensus map's greyscale (one least-squares factor for all: the
    references keep their relative scale)."""
    mean = references.mean(axis=0)
    scale = float((mean * consensus[0]).sum() / max(float((mean * mean).sum()), 1e-30))
    maps = np.asarray(references * scale, dtype=np.float32)
    scores, _, _ = _log_likelihoods(
        config, particles, prepared, maps, noise_power, options.batch_size
    )
    probability, _ = _posterior(
        scores, np.full(config.n_classes, 1.0 / config.n_classes)
    )
    return probability


def classify_without_alignment(
    config: InitialModelConfig,
    particles: PosedParticles,
    *,
    rng: np.random.Generator,
    options: SkipAlignOptions | None = None,
    references: np.ndarray | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SkipAlignClassification:
    """Classify ``particles`` (their poses fixed) into ``config.n_classes`` classes
    (see the module docstring).  ``references`` ``(K, N, N, N)``, if given, give
    the first posterior (one start); else ``options.n_starts`` random splits.
    ``on_progress(done, total)`` after each iteration (``total`` the most
    iterations all starts can take)."""
    options = options or SkipAlignOptions()
    k_classes = config.n_classes
    n = particles.n_particles
    if particles.box_px != config.box_px:
        raise StageInputError(
            "<array>", "images", particles.images.shape, f"box must be {config.box_px}"
        )
    if min(int(np.sum(particles.subset == h)) for h in (1, 2)) < 2:
        raise StageInputError(
            "<particles>", "rlnRandomSubset", "", "both half sets need 2 particles"
        )
    radius = config.shell_of(options.resolution_a)
    prepared = _prepare(config, particles, radius, options.batch_size)
    consensus, noise = _consensus_noise(config, particles, prepared, options, radius)
    if references is not None:
        starts = [
            _reference_probability(
                config, particles, prepared, references, consensus, noise, options
            )
        ]
    else:
        starts = [
            np.eye(k_classes)[rng.integers(0, k_classes, n)]
            for _ in range(options.n_starts)
        ]
    total = len(starts) * options.n_iterations
    done = [0]

    def tick() -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], total)

    runs = [
        _run_start(config, particles, prepared, p, noise, options, radius, tick)
        for p in starts  # a loop over starts
    ]
    chosen = int(np.argmax([r.log_likelihood for r in runs]))
    best = runs[chosen]
    probability = best.probability
    data, weight = _sums(config, particles, prepared, probability, options)
    maps, fsc = _class_maps(config, data, weight, config.box_px // 2)
    fractions = probability.mean(axis=0)
    state = InitialModelState(
        data=data,
        weight=weight,
        maps=maps,
        class_fractions=fractions / fractions.sum(),
        noise_power=noise,
        half_fsc=fsc,
        radius_px=radius,
        minibatch_index=len(best.changed),
        particles_processed=n * len(best.changed),
        substitutions=0,
        rng_state=rng_state_of(rng),
    )
    assignment = Assignment(
        class_index=np.argmax(probability, axis=1),
        rotations=particles.rotations.copy(),
        origin_px=particles.origin_px.copy(),
        max_posterior=probability.max(axis=1),
    )
    return SkipAlignClassification(
        state=state,
        assignment=assignment,
        class_probability=probability,
        changed_fraction=best.changed,
        log_likelihood=best.log_likelihood,
        start_log_likelihoods=[r.log_likelihood for r in runs],
        start_iterations=[len(r.changed) for r in runs],
        chosen_start=chosen,
    )
