"""VDAM (Kimanius et al. 2021, section 3.1) and plain EM for 2D classes.

One VDAM mini-batch: the E-step of the batch gives, per class and half-set ``h``
(particles split by the parity of their index), a numerator ``N_h`` and denominator
``D_h``; the gradient of the log-likelihood ``N_h - D_h V`` rescaled by ``F =
max(D_h, floor)`` is ``g_h`` (a regularised-EM step).  First moments per half
``m_h <- b1 m_h + (1 - b1) g_h``; a shared second moment of the half-set
difference ``v <- b2 v + (1 - b2) |g_1 - g_2|^2`` (of the gradients, not of the
smoothed moments, whose difference understated the noise ~19-fold in our tests).  Per class and shell an FSC-like weight
``f = s / (1 + s)`` with ``s = 2 T <|V|> / <sqrt(v)>`` (signal amplitude of the
reference over the half-set disagreement; T = 2 as RELION's 2D), and the update
``V <- V + step (f (m_1 + m_2)/2 - (1 - f) V)``.  Class fractions and the noise
spectrum follow running averages with the same step.  Inactive classes (fraction
below ``rho / K``) are replaced by a perturbed copy of the largest one in the middle
phase (eq. 15, our reading).  :func:`run_em_pass` is plain EM on every particle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from pipelines.class2d.expectation import (
    expect_particles,
    reference_pixels,
    sampling_of,
)
from pipelines.class2d.fourier import pixels_to_images, shell_average
from pipelines.class2d.particles import ParticleStack, prepare_batch
from pipelines.class2d.references import circular_mask, gaussian_blob_references
from pipelines.class2d.schedule import in_middle_phase, minibatch_size, step_size
from pipelines.class2d.state import (
    Class2dConfig,
    Class2dState,
    restore_rng,
)
from pipelines.errors import StageInputError
from pipelines.io.checkpoint import rng_state_of

__all__ = [
    "class_resolution_a",
    "current_radius_px",
    "initialise_state",
    "run_em_pass",
    "run_minibatches",
    "vdam_step",
]


def initialise_state(
    config: Class2dConfig, particles: ParticleStack, rng: np.random.Generator
) -> Class2dState:
    """Blob references scaled to the data, the noise spectrum of a data sample."""
    if particles.box_px != config.box_px:
        raise StageInputError(
            "<array>", "images", particles.images.shape, f"box must be {config.box_px}"
        )
    sampling = sampling_of(config)
    k = config.n_classes
    refs = gaussian_blob_references(k, config.box_px, config.mask_radius_px, rng)
    sample = np.sort(
        rng.choice(
            particles.n_particles, min(particles.n_particles, 500), replace=False
        )
    )
    x, _ctf = prepare_batch(particles, sample, sampling, config.mask_radius_px)
    power = shell_average(np.mean(x.real**2 + x.imag**2, axis=0), sampling)
    noise_floor = np.median(power[sampling.n_shells // 2 :])
    signal = max(float(np.sum(np.maximum(power - noise_floor, 0.0))), 1e-6)
    ref_pix, _ = reference_pixels(refs, config, sampling)
    ref_power = float(np.sum(shell_average(np.abs(ref_pix) ** 2, sampling)) / k)
    refs = refs * np.float32(np.sqrt(signal / max(ref_power, 1e-12)))
    p = sampling.n_pixels
    return Class2dState(
        references=refs.astype(np.float32),
        first_moments=np.zeros((2, k, p), dtype=np.complex64),
        second_moment=np.zeros((k, p), dtype=np.float32),
        noise_sigma2=(0.5 * power).astype(np.float64),
        class_fractions=np.full(k, 1.0 / k),
        seen=np.zeros(particles.n_particles, dtype=bool),
        rng_state=rng_state_of(rng),
    )


def _fsc_weight(
    config: Class2dConfig, v: np.ndarray, second: np.ndarray, index: int
) -> NDArray[np.float64]:
    sampling = sampling_of(config)
    bias = 1.0 - config.beta2 ** (index + 1)
    noise = shell_average(np.sqrt(second / bias), sampling)
    signal = shell_average(np.abs(v), sampling)
    snr = 2.0 * config.regularisation_t * signal / np.maximum(noise, 1e-30)
    fsc = snr / (1.0 + snr)
    weight: NDArray[np.float64] = fsc[:, sampling.shell]
    return weight


def _apply_cap(
    config: Class2dConfig, fractions: np.ndarray, n: int
) -> NDArray[np.float64]:
    """Normalise; with a cap, clip at ``cap / n`` and give the excess to the
    other classes in proportion (water-filling, at most K rounds)."""
    out: NDArray[np.float64] = np.maximum(fractions, 1e-6)
    out = out / out.sum()
    if config.max_particles_per_class is None:
        return out
    limit = config.max_particles_per_class / max(n, 1)
    if limit * out.size < 1.0:
        return np.full(out.size, 1.0 / out.size)
    for _ in range(out.size):
        over = out > limit
        if not over.any():
            break
        excess = float(np.sum(out[over] - limit))
        out[over] = limit
        free = out < limit
        out[free] += excess * out[free] / out[free].sum()
    return np.minimum(out, limit)


def vdam_step(
    config: Class2dConfig, state: Class2dState, particles: ParticleStack
) -> Class2dState:
    """One mini-batch of VDAM; returns the new state (the old one is untouched)."""
    sampling = sampling_of(config)
    index = state.minibatch_index
    schedule = config.schedule
    rng = restore_rng(state)
    size = minibatch_size(index, particles.n_particles, schedule)
    batch = np.sort(rng.choice(particles.n_particles, size, replace=False))
    sums = expect_particles(
        config,
        state.references,
        state.noise_sigma2,
        state.class_fractions,
        particles,
        batch,
        radius_px=current_radius_px(config, state),
    )
    step = step_size(index, schedule)
    v, _ = reference_pixels(state.references, config, sampling)
    floor = 0.25 / float(np.median(state.noise_sigma2))
    grads = (sums.numerator - sums.denominator * v[None]) / np.maximum(
        sums.denominator, floor
    )
    if index == 0:
        moments = grads
    else:
        moments = config.beta1 * state.first_moments + (1 - config.beta1) * grads
    diff = np.abs(grads[0] - grads[1]) ** 2
    second = config.beta2 * state.second_moment + (1 - config.beta2) * diff
    fsc = _fsc_weight(config, v, second, index)
    v_new = v + step * (fsc * 0.5 * (moments[0] + moments[1]) - (1.0 - fsc) * v)
    fractions = (1 - step) * state.class_fractions + step * sums.class_weight / size
    fractions = _apply_cap(config, fractions, particles.n_particles)
    sigma2 = (1 - step) * state.noise_sigma2 + step * sums.residual_power
    moments = moments.astype(np.complex64)
    second = second.astype(np.float32)
    substitutions = state.substitutions
    if in_middle_phase(index, schedule):
        v_new, moments, second, fractions, n_sub = _substitute_inactive(
            config, v_new, moments, second, fractions, rng
        )
        substitutions += n_sub
    references = pixels_to_images(v_new, sampling) * circular_mask(
        config.box_px, config.mask_radius_px
    )
    seen = state.seen.copy()
    seen[batch] = True
    return dataclasses.replace(
        state,
        references=references.astype(np.float32),
        first_moments=moments,
        second_moment=second,
        noise_sigma2=sigma2,
        class_fractions=fractions,
        seen=seen,
        minibatch_index=index + 1,
        particles_processed=state.particles_processed + size,
        substitutions=substitutions,
        rng_state=rng_state_of(rng),
    )


def _substitute_inactive(
    config: Class2dConfig,
    v: np.ndarray,
    moments: np.ndarray,
    second: np.ndarray,
    fractions: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Replace classes below ``rho / K`` by a perturbed copy of the largest class;
    the two share its fraction.  One class per call, as a gentle change."""
    k = config.n_classes
    inactive = np.nonzero(fractions < config.inactivity_threshold / k)[0]
    if inactive.size == 0 or k < 2:
        return v, moments, second, fractions, 0
    target = int(inactive[np.argmin(fractions[inactive])])
    source = int(np.argmax(fractions))
    v, moments, second, fractions = (
        v.copy(),
        moments.copy(),
        second.copy(),
        fractions.copy(),
    )
    noise = rng.standard_normal(v.shape[1]) + 1j * rng.standard_normal(v.shape[1])
    v[target] = v[source] * (1.0 + 0.1 * noise)
    moments[:, target] = moments[:, source]
    second[target] = second[source]
    share = 0.5 * (fractions[source] + fractions[target])
    fractions[source] = fractions[target] = share
    return v, moments, second, fractions / fractions.sum(), 1


def run_minibatches(
    config: Class2dConfig,
    state: Class2dState,
    particles: ParticleStack,
    n_minibatches: int | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> Class2dState:
    """Run ``n_minibatches`` more steps (default: to the end of the schedule).

    ``on_progress(done, total)``, if given, is called after each mini-batch with
    the steps done so far in this call and the steps it runs."""
    remaining = config.schedule.n_minibatches - state.minibatch_index
    count = max(remaining if n_minibatches is None else n_minibatches, 0)
    for done in range(1, count + 1):  # loop over mini-batches, not particles
        state = vdam_step(config, state, particles)
        if on_progress is not None:
            on_progress(done, count)
    return state


def run_em_pass(
    config: Class2dConfig, state: Class2dState, particles: ParticleStack
) -> Class2dState:
    """One iteration of regularised EM over every particle:
    ``V = N / (D + 1 / (T tau2))`` with ``tau2`` the shell power of the current V."""
    sampling = sampling_of(config)
    everything = np.arange(particles.n_particles)
    sums = expect_particles(
        config,
        state.references,
        state.noise_sigma2,
        state.class_fractions,
        particles,
        everything,
        radius_px=current_radius_px(config, state),
    )
    v, _ = reference_pixels(state.references, config, sampling)
    tau2 = shell_average(np.abs(v) ** 2, sampling)[:, sampling.shell]
    numerator = sums.numerator.sum(axis=0)
    denominator = sums.denominator.sum(axis=0)
    v_new = numerator / (
        denominator + 1.0 / (config.regularisation_t * np.maximum(tau2, 1e-12))
    )
    references = pixels_to_images(v_new.astype(np.complex64), sampling) * circular_mask(
        config.box_px, config.mask_radius_px
    )
    fractions = _apply_cap(
        config, sums.class_weight / particles.n_particles, particles.n_particles
    )
    return dataclasses.replace(
        state,
        references=references.astype(np.float32),
        noise_sigma2=sums.residual_power,
        class_fractions=fractions,
        seen=np.ones(particles.n_particles, dtype=bool),
        minibatch_index=state.minibatch_index + 1,
        particles_processed=state.particles_processed + particles.n_particles,
    )


def _fsc_shells(config: Class2dConfig, state: Class2dState) -> np.ndarray:
    """Per class, the last shell before the half-set FSC of ``V + m_h`` drops
    below 0.143 (0 before any mini-batch)."""
    sampling = sampling_of(config)
    if not np.any(state.first_moments):
        return np.zeros(config.n_classes, dtype=np.int64)
    v, _ = reference_pixels(state.references, config, sampling)
    a = v + state.first_moments[0]
    b = v + state.first_moments[1]
    cross = shell_average((a * np.conj(b)).real, sampling)
    norm = np.sqrt(
        shell_average(np.abs(a) ** 2, sampling)
        * shell_average(np.abs(b) ** 2, sampling)
    )
    fsc = cross / np.maximum(norm, 1e-30)
    below = fsc[:, 1:] < 0.143
    first = np.where(below.any(axis=1), below.argmax(axis=1) + 1, sampling.n_shells)
    return (first - 1).astype(np.int64)


def class_resolution_a(config: Class2dConfig, state: Class2dState) -> np.ndarray:
    """Per class, the resolution (Å) where the FSC between the two half-set
    estimates ``V + m_h`` drops below 0.143 (inf when it never rises above)."""
    shells = _fsc_shells(config, state)
    res = config.box_px * config.pixel_size_a / np.maximum(shells, 1)
    return np.where(shells > 0, res, np.inf)


def current_radius_px(config: Class2dConfig, state: Class2dState) -> int:
    """The E-step's resolution radius (RELION's current size): the best class's
    FSC shell plus 10 shells, at least a quarter of the full radius (and 8)."""
    full = config.radius_px
    if not config.adaptive_resolution:
        return full
    floor = min(full, max(8, full // 4))
    best = int(_fsc_shells(config, state).max())
    return int(np.clip(best + 10, floor, full))
