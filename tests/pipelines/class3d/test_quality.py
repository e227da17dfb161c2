"""The initial model against the truth: simulated 70S ribosome particles, random
start, the map aligned to the truth (rotation search, both hands).

1500 particles (box 32, 10.2 Å/px) at random poses and ±2 px shifts, each with its
own CTF, white noise at SNR 1; 20 mini-batches of 150 -> 300 particles from 40 Å.
Measured on the seeds below: FSC(map, truth) = 0.5 at 24.5 Å against 21.1 Å from
the true poses (ratio 1.16; the issue asks <= 1.5).  At SNR 0.1 it takes 60
mini-batches (ratio 1.23 on one seed, docs/class3d.md): too slow for the suite.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipelines.class3d import InitialModelConfig, initialise_state, run_minibatches
from pipelines.class3d.align import align_maps
from pipelines.class3d.state import DEFAULT_SCHEDULE
from pipelines.reconstruct import fourier_shell_correlation, reconstruct_halves
from tests.pipelines.class3d.conftest import BOX, PX
from tests.pipelines.reconstruct.conftest import simulate_particles

pytestmark = pytest.mark.slow


def test_initial_model_matches_the_truth_within_1_5_times_the_true_poses(
    ribosome_32: np.ndarray,
) -> None:
    particles = simulate_particles(
        ribosome_32, 1500, pixel_size_a=PX, rng=np.random.default_rng(2), snr=1.0
    )
    true_a = fourier_shell_correlation(
        reconstruct_halves(particles).full, ribosome_32, PX
    ).crossing_a(0.5)
    schedule = replace(
        DEFAULT_SCHEDULE,
        n_minibatches=20,
        initial_min=150,
        initial_max=150,
        final_min=300,
        final_max=300,
    )
    config = InitialModelConfig(
        n_classes=1,
        box_px=BOX,
        pixel_size_a=PX,
        schedule=schedule,
    )
    state = initialise_state(config, particles, np.random.default_rng(102))
    state = run_minibatches(config, state, particles)
    aligned = align_maps(state.maps[0], ribosome_32, pixel_size_a=PX)
    found_a = fourier_shell_correlation(aligned.aligned, ribosome_32, PX).crossing_a(
        0.5
    )
    assert true_a < 25.0  # 21.1 Å measured (Nyquist 20.3 Å)
    assert found_a <= 1.5 * true_a  # 24.5 Å measured
    assert aligned.correlation > 0.8  # 0.89 measured
