"""3D classification without alignment (``--skip_align``) against the truth: the
two conformations of ``test_classify.py`` (the 70S, and the 70S less a ball of
24 % of its density), their particles at poses off the truth by a few degrees
and a fraction of a pixel (what a consensus refinement leaves: a median 2.2-2.5°
in ``benchmarks/bench_skip_align.py``).

Measured (docs/class3d.md): from random splits, 600 particles at SNR 1 are
100 % right in 6 of 6 single starts at the true poses; 1000 particles at SNR
0.3-0.5 after a consensus refinement from particles alone, 98-100 %.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.class3d.classify import classification_config
from pipelines.class3d.skip_align import (
    SkipAlignOptions,
    classify_without_alignment,
)
from pipelines.errors import StageInputError
from pipelines.reconstruct import PosedParticles
from pipelines.simulate.conformations import simulate_mixture, without_region
from tests.pipelines.class3d.conftest import BOX, PX


def accuracy(found: np.ndarray, truth: np.ndarray) -> float:
    """The fraction right under the better matching of two classes to two truths."""
    same = float(np.mean(found == truth))
    return max(same, 1.0 - same)


def _small_rotations(n: int, sd_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Rotations ``(n, 3, 3)`` about random axes by angles of ``sd_deg`` per axis
    (Rodrigues' formula)."""
    vector = np.radians(sd_deg) * rng.standard_normal((n, 3))
    angle = np.linalg.norm(vector, axis=1)[:, None, None]
    x, y, z = (vector / np.linalg.norm(vector, axis=1, keepdims=True)).T
    zero = np.zeros(n)
    k = np.stack([[zero, -z, y], [z, zero, -x], [-y, x, zero]]).transpose(2, 0, 1)
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


@pytest.fixture(scope="module")
def conformations(ribosome_32: np.ndarray) -> np.ndarray:
    return np.stack(
        [ribosome_32, without_region(ribosome_32, distance_px=7.0, radius_px=6.0)]
    )


@pytest.fixture(scope="module")
def mixture(conformations: np.ndarray) -> tuple[PosedParticles, np.ndarray]:
    """600 particles at SNR 1, their poses perturbed by 1.5° per axis (a median
    2.3° in all) and 0.2 px per axis."""
    particles, truth = simulate_mixture(
        list(conformations),
        [300, 300],
        pixel_size_a=PX,
        snr=1.0,
        rng=np.random.default_rng(3),
    )
    rng = np.random.default_rng(4)
    n = particles.n_particles
    rotations = _small_rotations(n, 1.5, rng) @ particles.rotations
    origins = particles.origin_px + 0.2 * rng.standard_normal((n, 2))
    return dataclasses.replace(particles, rotations=rotations, origin_px=origins), truth


def test_random_splits_separate_the_conformations(
    mixture: tuple[PosedParticles, np.ndarray],
) -> None:
    particles, truth = mixture
    config = classification_config(2, box_px=BOX, pixel_size_a=PX)
    result = classify_without_alignment(
        config,
        particles,
        rng=np.random.default_rng(0),
        options=SkipAlignOptions(n_starts=2),
    )
    assert accuracy(result.assignment.class_index, truth) >= 0.95  # 1.0 measured
    assert result.chosen_start == int(np.argmax(result.start_log_likelihoods))
    assert len(result.start_iterations) == 2
    assert result.log_likelihood == max(result.start_log_likelihoods)
    # the poses are the input's, untouched
    np.testing.assert_array_equal(result.assignment.rotations, particles.rotations)
    np.testing.assert_array_equal(result.assignment.origin_px, particles.origin_px)
    assert result.class_probability.shape == (particles.n_particles, 2)
    np.testing.assert_allclose(result.class_probability.sum(axis=1), 1.0)
    assert result.state.class_fractions == pytest.approx([0.5, 0.5], abs=0.05)
    # the class maps differ where the ball was removed: the class of "less"
    # holds less density there than the class of "whole"
    whole_class = int(np.bincount(result.assignment.class_index[truth == 0]).argmax())
    maps = result.state.maps
    assert maps[whole_class].sum() > maps[1 - whole_class].sum()


def test_given_references_give_one_start(
    mixture: tuple[PosedParticles, np.ndarray], conformations: np.ndarray
) -> None:
    particles, truth = mixture
    config = classification_config(2, box_px=BOX, pixel_size_a=PX)
    result = classify_without_alignment(
        config,
        particles,
        rng=np.random.default_rng(0),
        options=SkipAlignOptions(n_iterations=10),
        references=conformations * 1000.0,  # any greyscale
    )
    assert len(result.start_log_likelihoods) == 1
    found = result.assignment.class_index
    assert float(np.mean(found == truth)) >= 0.95  # in the references' order


def test_bad_options_and_inputs_name_the_field(
    mixture: tuple[PosedParticles, np.ndarray],
) -> None:
    with pytest.raises(StageInputError, match="n_starts"):
        SkipAlignOptions(n_starts=0)
    with pytest.raises(StageInputError, match="resolution_a"):
        SkipAlignOptions(resolution_a=0.0)
    particles, _ = mixture
    config = classification_config(2, box_px=BOX + 2, pixel_size_a=PX)
    with pytest.raises(StageInputError, match="box must be 34"):
        classify_without_alignment(config, particles, rng=np.random.default_rng(0))
