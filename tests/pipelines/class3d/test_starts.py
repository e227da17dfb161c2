"""Several random starts, the best kept: the score that compares them, and the
choice.

A failed initial model (docs/class3d.md, "Several starts") is a map of the right
size whose inside is a blur of several orientations; :func:`start_scores` must
rank such a map below the truth, and a map of the other hand level with it
(projections cannot tell the hand).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipelines.class3d import (
    InitialModelConfig,
    best_of_starts,
    initialise_state,
    run_minibatches,
)
from pipelines.class3d.align import mirror_map, rotate_map
from pipelines.class3d.starts import start_rounds, start_scores
from pipelines.class3d.state import DEFAULT_SCHEDULE
from pipelines.errors import StageInputError
from pipelines.reconstruct import PosedParticles, reconstruct_halves
from pipelines.simulate.projection import random_rotations
from tests.pipelines.class3d.conftest import BOX, PX
from tests.pipelines.reconstruct.conftest import simulate_particles

SCHEDULE = replace(
    DEFAULT_SCHEDULE,
    n_minibatches=4,
    initial_min=60,
    initial_max=60,
    final_min=100,
    final_max=100,
)


@pytest.fixture(scope="module")
def particles(ribosome_32: np.ndarray) -> PosedParticles:
    return simulate_particles(
        ribosome_32, 300, pixel_size_a=PX, rng=np.random.default_rng(21), snr=1.0
    )


@pytest.fixture(scope="module")
def config() -> InitialModelConfig:
    return InitialModelConfig(
        n_classes=1, box_px=BOX, pixel_size_a=PX, schedule=SCHEDULE
    )


def test_the_truth_scores_above_a_blur_of_orientations_and_level_with_its_mirror(
    particles: PosedParticles, config: InitialModelConfig
) -> None:
    """Maps on the particles' greyscale: the reconstruction from the true poses,
    its mirror, the mean of it turned three ways (what a failed start looks
    like) and the blob a random start begins with."""
    truth = reconstruct_halves(particles).full.astype(np.float32)
    turns = random_rotations(3, np.random.default_rng(4))
    blur = np.mean([rotate_map(truth, r) for r in turns], axis=0)
    blob = initialise_state(config, particles, np.random.default_rng(3))
    states = [
        replace(blob, maps=volume[None].astype(np.float32))
        for volume in (truth, mirror_map(truth), blur)
    ] + [blob]
    rows = np.arange(0, 300, 2)
    true, mirrored, blurred, start = start_scores(config, states, particles, rows)
    assert true > blurred + 1.0  # 48.7 vs 30.7 measured (the blob 16.6)
    assert true > start + 1.0
    assert abs(true - mirrored) < 0.1 * (true - blurred)  # 0.003 measured


def test_one_start_is_the_plain_run(
    particles: PosedParticles, config: InitialModelConfig
) -> None:
    state, choice = best_of_starts(
        config,
        particles,
        np.random.default_rng(8),
        n_starts=1,
        trial_minibatches=1,
    )
    plain = initialise_state(config, particles, np.random.default_rng(8))
    plain = run_minibatches(config, plain, particles, n_minibatches=1)
    assert state.minibatch_index == 1
    assert choice.chosen == 0
    np.testing.assert_array_equal(state.maps, plain.maps)
    assert state.rng_state == plain.rng_state


@pytest.mark.slow  # three starts, five mini-batches in all: ~50 s loaded
def test_starts_are_halved_by_their_fit_and_the_choice_repeats(
    particles: PosedParticles, config: InitialModelConfig
) -> None:
    """Three starts: all run one mini-batch, the better two another, the better
    of those is kept (at mini-batch 2)."""
    assert start_rounds(3) == [3, 2]
    assert start_rounds(4) == [4, 2]
    assert start_rounds(1) == []
    seen: list[tuple[int, int]] = []

    def run() -> tuple[np.ndarray, np.ndarray, int, int, int]:
        state, choice = best_of_starts(
            config,
            particles,
            np.random.default_rng(5),
            n_starts=3,
            trial_minibatches=1,
            on_progress=lambda done, total: seen.append((done, total)),
        )
        return (
            state.maps,
            choice.scores,
            choice.chosen,
            choice.rounds,
            state.minibatch_index,
        )

    maps, scores, chosen, rounds, index = run()
    assert rounds == 2
    assert index == 2
    assert seen == [(i, 5) for i in range(1, 6)]
    first, second = scores
    assert len(set(np.round(first, 6))) == 3  # three different starts
    dropped = int(np.argmin(first))
    assert np.isnan(second[dropped])
    assert np.nanargmax(second) == chosen
    assert np.isfinite(second).sum() == 2
    again = run()
    np.testing.assert_array_equal(maps, again[0])
    np.testing.assert_array_equal(scores, again[1])
    assert again[2:] == (chosen, rounds, index)


@pytest.mark.slow  # four runs of two mini-batches: ~40 s loaded
def test_starts_run_to_the_end_are_compared_once(
    particles: PosedParticles, config: InitialModelConfig
) -> None:
    """What the command does: every start runs the whole schedule, the best fit
    is kept; no second round."""
    short = replace(config, schedule=replace(SCHEDULE, n_minibatches=2))
    state, choice = best_of_starts(
        short,
        particles,
        np.random.default_rng(6),
        n_starts=3,
        trial_minibatches=2,
    )
    assert state.minibatch_index == 2
    assert choice.scores.shape == (1, 3)
    assert choice.chosen == int(np.argmax(choice.scores[0]))
    seeds = np.random.default_rng(6).integers(0, 2**63 - 1, size=3)
    plain = initialise_state(short, particles, np.random.default_rng(seeds[1]))
    plain = run_minibatches(short, plain, particles)
    same = np.array_equal(plain.maps, state.maps)
    assert same == (choice.chosen == 1)  # the kept state is its start's whole run


def test_fewer_than_one_start_is_refused(
    particles: PosedParticles, config: InitialModelConfig
) -> None:
    with pytest.raises(StageInputError, match="starts"):
        best_of_starts(
            config,
            particles,
            np.random.default_rng(0),
            n_starts=0,
            trial_minibatches=1,
        )
