"""The staged 3D plan (``pipelines.class3d.staged``): the class rule on made-up
classes, and the whole plan on a small simulated set of two conformations and
junk (pure-noise particles), its outputs checked against each other."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.class3d.staged import (
    StagedPlan,
    StagedPlanConfig,
    default_subset_size,
    run_staged_plan,
    select_classes,
)
from pipelines.errors import StageInputError
from pipelines.reconstruct import PosedParticles
from pipelines.simulate.conformations import simulate_mixture, without_region
from pipelines.simulate.volumes import phantom_volume

BOX, PX = 16, 10.0


def test_select_classes_keeps_merges_and_drops() -> None:
    # at box 24 two phantoms superpose with cc 0.90, a shifted copy with 1.00
    a = phantom_volume(24, 8.0, np.random.default_rng(1))
    b = phantom_volume(24, 8.0, np.random.default_rng(2))
    maps = np.stack([a, b, np.roll(a, 1, axis=0), a, b, b])
    counts = np.array([400, 300, 200, 20, 80, 100])
    resolution = np.array([30.0, 32.0, 31.0, 30.0, 50.0, 30.0])
    certainty = np.array([0.8, 0.9, 0.7, 0.8, 0.8, 0.3])
    decisions = select_classes(
        counts,
        resolution,
        maps,
        certainty=certainty,
        config=StagedPlanConfig(),
        pixel_size_a=8.0,
    )
    assert [d.decision for d in decisions] == [
        "kept",
        "kept",
        "merged",  # the first map, shifted: the same conformation
        "small",  # 2 % of the particles
        "low resolution",  # 50 Å > 1.5 x 30 Å
        "uncertain poses",  # 0.3 < 0.5 x 0.9
    ]
    assert [d.group for d in decisions] == [0, 1, 0, -1, -1, -1]
    assert decisions[2].correlation is not None
    assert decisions[2].correlation > 0.95
    assert decisions[1].correlation is not None
    assert decisions[1].correlation < 0.95
    assert sum(d.fraction for d in decisions) == pytest.approx(1.0)


def test_subset_and_config_rules() -> None:
    assert default_subset_size(5000) == 5000
    assert default_subset_size(2_000_000) == 100_000
    with pytest.raises(StageInputError, match="classes"):
        StagedPlanConfig(class_counts=(1, 0))
    with pytest.raises(StageInputError):
        StagedPlanConfig(symmetry="Q7")


@pytest.fixture(scope="module")
def mixture() -> tuple[PosedParticles, np.ndarray]:
    """100 + 100 particles of two conformations and 100 of noise, poses erased."""
    whole = phantom_volume(BOX, PX, np.random.default_rng(41))
    less = without_region(whole, distance_px=3.0, radius_px=3.0)
    data, truth = simulate_mixture(
        [whole, less, np.zeros_like(whole)],
        [100, 100, 100],
        pixel_size_a=PX,
        snr=2.0,
        rng=np.random.default_rng(3),
    )
    n = data.n_particles
    data = dataclasses.replace(
        data,
        rotations=np.broadcast_to(np.eye(3), (n, 3, 3)).copy(),
        origin_px=np.zeros((n, 2)),
    )
    return data, truth


@pytest.fixture(scope="module")
def plan(mixture: tuple[PosedParticles, np.ndarray]) -> StagedPlan:
    config = StagedPlanConfig(
        class_counts=(1, 2),
        subset_size=200,
        n_minibatches=5,
        class_iterations=3,
        class_angular_step_deg=15.0,
        refine_max_iterations=2,  # (class_iterations=2 drops only 57 % of the junk)
        skip_align_starts=2,
        skip_align_iterations=10,
    )
    return run_staged_plan(mixture[0], config=config, seed=1)


@pytest.mark.slow  # the plan on 300 particles: about a minute on a loaded machine
def test_plan_outputs_are_consistent(
    plan: StagedPlan, mixture: tuple[PosedParticles, np.ndarray]
) -> None:
    particles, _ = mixture
    n = particles.n_particles
    assert len(plan.subset_rows) == 200
    assert len(np.unique(plan.subset_rows)) == 200
    assert [r.config.n_classes for r in plan.initial_models] == [1, 2]
    # the maps of both runs, then the junk decoy
    assert plan.reference_origin == [(0, 0), (1, 0), (1, 1), (-1, 0)]
    assert plan.classification_config.n_classes == 4
    labels = plan.classification.assignment.class_index
    assert labels.shape == (n,)
    assert [d.count for d in plan.decisions] == np.bincount(
        labels, minlength=4
    ).tolist()
    # the split: every particle of a kept group, at the consensus's poses
    split = plan.split
    assert split is not None
    kept_groups = [d.index for d in plan.decisions if d.group >= 0]
    assert np.array_equal(split.rows, np.nonzero(np.isin(labels, kept_groups))[0])
    assert split.consensus.rotations.shape == (len(split.rows), 3, 3)
    skip = split.classification
    np.testing.assert_array_equal(skip.assignment.rotations, split.consensus.rotations)
    split_labels = skip.assignment.class_index
    refined = np.concatenate([g.rows for g in plan.refinements])
    assert len(refined) == len(np.unique(refined))  # no particle refined twice
    for group in plan.refinements:  # each group: one split class's particles, all
        assert group.merged == ()
        members = split.rows[split_labels == group.class_index]
        assert np.array_equal(group.rows, members)
        assert group.result.rotations.shape == (len(group.rows), 3, 3)
        assert group.result.reconstruction.full.shape == (BOX,) * 3
        assert 2 * PX <= group.result.resolution_a < BOX * PX
    dropped = [d.index for d in plan.decisions if d.group < 0]
    assert not np.isin(labels[refined], dropped).any()
    assert set(plan.seconds) == {
        "initial_model_k1",
        "initial_model_k2",
        "class3d",
        "consensus_refine3d",
        "class3d_skip_align",
        "refine3d",
    }


@pytest.mark.slow
def test_plan_drops_the_junk(
    plan: StagedPlan, mixture: tuple[PosedParticles, np.ndarray]
) -> None:
    """A third of the particles is pure noise: after the plan most of it is in
    classes that were dropped, and most real particles are in refined ones."""
    _, truth = mixture
    labels = plan.classification.assignment.class_index
    group = np.array([d.group for d in plan.decisions])[labels]
    assert np.mean(group[truth == 2] < 0) >= 0.8
    assert np.mean(group[truth < 2] >= 0) >= 0.8
    assert plan.decisions[-1].decision == "decoy"  # the empty map's class
