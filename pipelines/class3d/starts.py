"""Several random starts of the initial model, the best-fitting kept.

A VDAM run from one random start sometimes settles in a local optimum: a map of
the right size and shape whose inside is a blur of several orientations
(docs/class3d.md, "Several starts").  :func:`best_of_starts` runs a few starts and
keeps the one whose maps fit a common set of particles best (:func:`start_scores`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from pipelines.class3d.pixels import pixel_set, soft_circle
from pipelines.class3d.state import InitialModelConfig, InitialModelState
from pipelines.class3d.vdam import (
    _image_power,
    _sample_rows,
    _search,
    initialise_state,
    run_minibatches,
)
from pipelines.errors import StageInputError
from pipelines.reconstruct.particles import PosedParticles

__all__ = ["StartChoice", "best_of_starts", "start_rounds", "start_scores"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StartChoice:
    """What :func:`best_of_starts` compared: ``scores`` ``(rounds, S)`` each
    start's mean best log-likelihood per particle on the common particles after
    each round (NaN once it was dropped), and the ``chosen`` start."""

    scores: np.ndarray
    chosen: int

    @property
    def rounds(self) -> int:
        return int(self.scores.shape[0])


def start_scores(
    config: InitialModelConfig,
    states: list[InitialModelState],
    particles: PosedParticles,
    rows: np.ndarray,
) -> np.ndarray:
    """The mean best log-likelihood per particle of ``rows`` under each state's
    maps: one noise spectrum for all (the rows' own power per shell), one limit
    (the lowest of the states'), each state's class fractions as its prior; so
    the states' figures are comparable (a higher one fits the images better)."""
    pixels = pixel_set(config.box_px, config.box_px // 2)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    noise = _image_power(particles, rows, pixels, mask)
    radius = min(state.radius_px for state in states)
    scores = np.empty(len(states))
    for i, state in enumerate(states):  # a loop over starts (a handful)
        common = dataclasses.replace(state, noise_power=noise)
        result, _, _ = _search(config, common, particles, rows, radius)
        scores[i] = float(np.mean(result.log_likelihood))
    return scores


def best_of_starts(
    config: InitialModelConfig,
    particles: PosedParticles,
    rng: np.random.Generator,
    *,
    n_starts: int,
    trial_minibatches: int,
    score_particles: int = 300,
    finalists_to_end: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[InitialModelState, StartChoice]:
    """``n_starts`` independent random starts, compared by successive halving:
    every start still in runs ``trial_minibatches`` more mini-batches, then the
    half whose maps fit ``score_particles`` common particles best
    (:func:`start_scores`) goes on, until one is left; it is returned, to be run
    on.  With ``finalists_to_end`` the last round (two starts left) runs to the
    end of the schedule.  Four starts: two rounds; the kept start has run ``2 *
    trial_minibatches`` (or the whole schedule).  With ``trial_minibatches`` the
    schedule's length every start runs to the end and the best fit is kept (one
    round; what ``livestream initial-model`` does).  A start caught in a local
    optimum (a map of the right size and shape whose inside is a blur of several
    orientations) mostly fits the images worse from the first few mini-batches
    on, but a good start can be level with a bad one until late (on one seed
    level after 8 of 20 mini-batches, 10 apart at the end).  Deterministic for ``rng``;
    one start gives what :func:`initialise_state` and :func:`run_minibatches`
    give (after ``trial_minibatches``).  ``on_progress(done, total)`` after each
    mini-batch, counting the mini-batches of every start."""
    if n_starts < 1:
        raise StageInputError("<argument>", "starts", n_starts, "must be >= 1")
    if trial_minibatches < 0:
        raise StageInputError(
            "<argument>", "trial_minibatches", trial_minibatches, "must be >= 0"
        )
    trial = min(trial_minibatches, config.schedule.n_minibatches)
    if n_starts == 1:
        state = initialise_state(config, particles, rng)
        state = run_minibatches(
            config, state, particles, n_minibatches=trial, on_progress=on_progress
        )
        return state, StartChoice(scores=np.zeros((0, 1)), chosen=0)
    seeds = rng.integers(0, 2**63 - 1, size=n_starts)
    rows = _sample_rows(particles.n_particles, score_particles, rng)
    n_batches = config.schedule.n_minibatches
    lengths = _round_lengths(n_starts, trial, n_batches, finalists_to_end)
    total = int(np.dot(start_rounds(n_starts), lengths))  # at most
    states = {
        s: initialise_state(config, particles, np.random.default_rng(seed))
        for s, seed in enumerate(seeds)
    }
    scores = np.full((len(start_rounds(n_starts)), n_starts), np.nan)
    done = 0
    rounds = 0
    while len(states) > 1:  # a loop over rounds (log2 of the starts)
        length = lengths[rounds]
        for s in states:  # a loop over the starts still in
            base = done - states[s].minibatch_index

            def progress(index: int, _total: int, base: int = base) -> None:
                if on_progress is not None:
                    on_progress(base + index, total)

            before = states[s].minibatch_index
            states[s] = run_minibatches(
                config, states[s], particles, n_minibatches=length, on_progress=progress
            )
            done += states[s].minibatch_index - before
        keys = list(states)
        got = start_scores(config, list(states.values()), particles, rows)
        scores[rounds, keys] = got
        order = np.argsort(-got, kind="stable")[: (len(keys) + 1) // 2]
        kept = {keys[i] for i in order}
        if all(states[k].minibatch_index >= n_batches for k in keys):
            kept = {keys[int(np.argmax(got))]}  # all at the end: the best wins
        states = {k: states[k] for k in keys if k in kept}
        rounds += 1
    [(chosen, state)] = states.items()
    return state, StartChoice(scores=scores[:rounds], chosen=chosen)


def _round_lengths(
    n_starts: int, trial: int, n_batches: int, finalists_to_end: bool
) -> list[int]:
    """Mini-batches of each round of :func:`best_of_starts` (none past the end
    of the schedule)."""
    lengths: list[int] = []
    for _ in start_rounds(n_starts):  # a loop over rounds
        lengths.append(max(0, min(trial, n_batches - sum(lengths))))
    if finalists_to_end and lengths:
        lengths[-1] = n_batches - sum(lengths[:-1])
    return lengths


def start_rounds(n_starts: int) -> list[int]:
    """The starts still in at each round of :func:`best_of_starts`: 4 -> [4, 2];
    3 -> [3, 2]; 1 -> [] (so ``trial * sum(...)`` mini-batches are run in all,
    and the kept start is at ``trial * len(...)``)."""
    out = []
    while n_starts > 1:  # a loop over rounds
        out.append(n_starts)
        n_starts = (n_starts + 1) // 2
    return out
