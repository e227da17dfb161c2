"""The initial model's state: deterministic for a seed, resumable from its checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipelines.class3d import (
    InitialModelConfig,
    InitialModelState,
    initialise_state,
    load_checkpoint,
    run_minibatches,
    save_checkpoint,
    vdam_step,
)
from pipelines.class3d.state import DEFAULT_SCHEDULE
from pipelines.errors import StageInputError
from pipelines.reconstruct import PosedParticles
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.reconstruct.conftest import simulate_particles

PX = 6.0


@pytest.fixture(scope="module")
def particles() -> PosedParticles:
    truth = phantom_volume(32, PX, np.random.default_rng(5))
    return simulate_particles(
        truth, 300, pixel_size_a=PX, rng=np.random.default_rng(6), snr=1.0
    )


@pytest.fixture(scope="module")
def config() -> InitialModelConfig:
    schedule = replace(DEFAULT_SCHEDULE, n_minibatches=4, initial_min=60, final_min=100)
    return InitialModelConfig(
        n_classes=2, box_px=32, pixel_size_a=PX, schedule=schedule
    )


@pytest.mark.slow  # about 40 s on a loaded 2-core machine
def test_same_seed_same_run_and_a_checkpoint_resumes_exactly(
    particles: PosedParticles, config: InitialModelConfig, tmp_path: Path
) -> None:
    def start() -> InitialModelState:
        return initialise_state(config, particles, np.random.default_rng(11))

    whole = run_minibatches(config, start(), particles)
    assert whole.minibatch_index == 4
    assert whole.particles_processed > 0
    assert np.isclose(whole.class_fractions.sum(), 1.0)

    half = run_minibatches(config, start(), particles, n_minibatches=2)
    path = save_checkpoint(tmp_path / "state.npz", config, half)
    loaded_config, loaded = load_checkpoint(path)
    assert loaded_config == config
    resumed = run_minibatches(loaded_config, loaded, particles)
    np.testing.assert_array_equal(resumed.maps, whole.maps)
    np.testing.assert_array_equal(resumed.noise_power, whole.noise_power)

    other = initialise_state(config, particles, np.random.default_rng(12))
    other = vdam_step(config, other, particles)
    assert not np.array_equal(
        other.maps,
        run_minibatches(
            config,
            start(),
            particles,
            n_minibatches=1,
        ).maps,
    )


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "state.npz"
    np.savez(path, nothing=np.zeros(1))
    with pytest.raises(StageInputError, match=r"state\.npz"):
        load_checkpoint(path)


def test_a_box_that_does_not_match_is_refused(
    particles: PosedParticles,
) -> None:
    config = InitialModelConfig(n_classes=1, box_px=48, pixel_size_a=PX)
    with pytest.raises(StageInputError, match="box must be 48"):
        initialise_state(config, particles, np.random.default_rng(0))
