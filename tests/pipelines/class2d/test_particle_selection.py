"""Particle-level selection: simulated single particles, aggregates (a particle
with an overlapping neighbour) and empty boxes against their known class average."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.class2d import (
    Class2dConfig,
    ParticleStack,
    Schedule,
    assign_particles,
    initialise_state,
)
from pipelines.class2d.particle_measures import measure_particles, pose_class_images
from pipelines.class2d.particle_selection import (
    DEFAULT_PARTICLE_OUTLIER_MAD,
    find_particle_outliers,
    flag_class_outliers,
)
from pipelines.simulate.particle_sets import simulate_views
from pipelines.simulate.volumes import phantom_volume

N_GOOD, N_AGGREGATE, N_EMPTY = 80, 16, 8
NEIGHBOUR_OFFSET_PX = 11


@pytest.fixture(scope="module")
def one_class() -> dict[str, object]:
    """One view at random psi/shift with CTF; then ``N_AGGREGATE`` particles that
    also carry a neighbour ``NEIGHBOUR_OFFSET_PX`` away, then ``N_EMPTY`` boxes of
    noise only; assigned against the clean view as the only class average."""
    rng = np.random.default_rng(5)
    volume = phantom_volume(32, 4.0, rng)
    n = N_GOOD + N_AGGREGATE + N_EMPTY
    kwargs = {"n_views": 1, "n_particles": n, "pixel_size_a": 4.0, "snr": 1e8}
    centre = simulate_views(volume, rng=rng, **kwargs)  # type: ignore[arg-type]
    neighbour = simulate_views(volume, rng=rng, **kwargs)  # type: ignore[arg-type]
    angle = rng.uniform(0, 2 * np.pi, N_AGGREGATE)
    images = centre.particles.images.astype(np.float64)
    for i, a in enumerate(angle):  # test setup only: 16 shifted neighbours
        shift = np.round(NEIGHBOUR_OFFSET_PX * np.array([np.sin(a), np.cos(a)]))
        images[N_GOOD + i] += np.roll(
            neighbour.particles.images[N_GOOD + i], shift.astype(int), axis=(0, 1)
        )
    images[N_GOOD + N_AGGREGATE :] = 0.0
    images += rng.standard_normal(images.shape) / np.sqrt(0.5)
    particles = dataclasses.replace(centre.particles, images=images.astype(np.float32))
    config = Class2dConfig(
        n_classes=1,
        box_px=32,
        pixel_size_a=4.0,
        psi_step_deg=10.0,
        offset_range_px=2.0,
        schedule=Schedule(n_minibatches=1),
    )
    state = initialise_state(config, particles, np.random.default_rng(1))
    view = centre.views[0] / centre.views[0].std()
    state = dataclasses.replace(state, references=view[None].astype(np.float32))
    assignment = assign_particles(config, state, particles)
    label = np.repeat([0, 1, 2], [N_GOOD, N_AGGREGATE, N_EMPTY])
    return {
        "config": config,
        "state": state,
        "assignment": assignment,
        "particles": particles,
        "label": label,
    }


def test_aggregates_and_empty_boxes_are_outliers(one_class: dict[str, object]) -> None:
    config, state = one_class["config"], one_class["state"]
    assignment, label = one_class["assignment"], one_class["label"]
    assert isinstance(label, np.ndarray)
    result = find_particle_outliers(
        config,  # type: ignore[arg-type]
        state.references,  # type: ignore[attr-defined]
        assignment,  # type: ignore[arg-type]
        one_class["particles"],  # type: ignore[arg-type]
        np.ones(label.size, dtype=bool),
    )
    caught = float(np.mean(result.outlier[label == 1]))
    empty = float(np.mean(result.outlier[label == 2]))
    lost = float(np.mean(result.outlier[label == 0]))
    print(
        f"\nflagged: aggregates {caught:.3f}, empty boxes {empty:.3f}, "
        f"single particles {lost:.3f}"
    )
    assert result.outlier_mad == DEFAULT_PARTICLE_OUTLIER_MAD
    assert caught >= 0.9
    assert empty >= 0.9
    assert lost <= 0.05
    # each statistic separates its kind of junk on its own
    ratio, match = result.solvent_ratio, result.match_snr
    assert np.median(ratio[label == 1]) > np.percentile(ratio[label == 0], 95)
    assert np.median(match[label == 2]) < np.percentile(match[label == 0], 5)
    assert np.all(result.solvent_z[label == 1] > DEFAULT_PARTICLE_OUTLIER_MAD)


def test_statistic_needs_the_assigned_pose(one_class: dict[str, object]) -> None:
    """At the assigned pose the class average explains the particle; turned by
    180 degrees it leaves density in the solvent (checks the pose convention;
    measured medians 0.042 vs 0.060)."""
    config, state = one_class["config"], one_class["state"]
    assignment, label = one_class["assignment"], one_class["label"]
    assert isinstance(label, np.ndarray)
    good = np.nonzero(label == 0)[0]
    args = (config, state.references)  # type: ignore[attr-defined]
    right, right_match = measure_particles(
        *args, assignment, one_class["particles"], good
    )  # type: ignore[arg-type]
    turned = dataclasses.replace(
        assignment,  # type: ignore[type-var]
        psi_deg=assignment.psi_deg + 180.0,  # type: ignore[attr-defined]
    )
    wrong, wrong_match = measure_particles(*args, turned, one_class["particles"], good)  # type: ignore[arg-type]
    assert np.median(wrong) > 1.25 * np.median(right)
    assert np.median(wrong_match) < 0.8 * np.median(right_match)


def test_statistic_is_scale_free(one_class: dict[str, object]) -> None:
    config, state = one_class["config"], one_class["state"]
    assignment = one_class["assignment"]
    particles = one_class["particles"]
    assert isinstance(particles, ParticleStack)
    rows = np.arange(particles.n_particles)
    base = measure_particles(
        config,  # type: ignore[arg-type]
        state.references,  # type: ignore[attr-defined]
        assignment,  # type: ignore[arg-type]
        particles,
        rows,
    )
    scaled = measure_particles(
        config,  # type: ignore[arg-type]
        3.0 * state.references,  # type: ignore[attr-defined]
        assignment,  # type: ignore[arg-type]
        dataclasses.replace(particles, images=particles.images * 5.0),
        rows,
        chunk_size=7,  # chunking does not change the result either
    )
    np.testing.assert_allclose(scaled, base, rtol=1e-4)
    assert np.all(base[0] > 0)


def test_robust_rule_per_class_and_pooled_for_small_classes() -> None:
    rng = np.random.default_rng(3)
    big = np.concatenate([rng.normal(10.0, 1.0, 100), [18.0, 19.0, 25.0]])
    small = np.array([9.5, 10.5, 30.0])  # under MIN_CLASS_MEMBERS: pooled MAD
    statistic = np.concatenate([big, small])
    classes = np.repeat([4, 7], [big.size, small.size])
    z, outlier = flag_class_outliers(statistic, classes, outlier_mad=4.0)
    assert np.array_equal(np.nonzero(outlier)[0], [100, 101, 102, 105])
    assert np.all(np.isfinite(z))
    # low values are never outliers (the rule is one-sided)
    _, low = flag_class_outliers(-statistic, classes, outlier_mad=4.0)
    assert not low[100:103].any()
    with pytest.raises(ValueError, match="particle_outlier_mad"):
        flag_class_outliers(statistic, classes, outlier_mad=0.0)


def test_mismatched_particles_are_named(one_class: dict[str, object]) -> None:
    particles = one_class["particles"]
    assert isinstance(particles, ParticleStack)
    fewer = dataclasses.replace(
        particles,
        images=particles.images[:10],
        defocus_u_a=particles.defocus_u_a[:10],
        defocus_v_a=particles.defocus_v_a[:10],
        astigmatism_angle_deg=particles.astigmatism_angle_deg[:10],
        phase_shift_deg=particles.phase_shift_deg[:10],
    )
    with pytest.raises(ValueError, match="images"):
        measure_particles(
            one_class["config"],  # type: ignore[arg-type]
            one_class["state"].references,  # type: ignore[attr-defined]
            one_class["assignment"],  # type: ignore[arg-type]
            fewer,
            np.arange(10),
        )


def test_pose_class_images_rotate_and_shift_exactly() -> None:
    """Integer poses are exact copies: at psi 90 (counter-clockwise) pixel
    ``[y, x]`` reads the class image at ``[x, 2c - y]``; a whole-pixel shift moves
    the content; a quarter-pixel shift in x gives ``0.75 in[x] + 0.25 in[x - 1]``."""
    rng = np.random.default_rng(9)
    box, c = 16, 8
    stack = rng.standard_normal((3, 2, box, box))
    posed = pose_class_images(
        stack,
        np.array([2, 1, 0]),
        np.array([90.0, 0.0, 0.0]),
        np.array([[0.0, 0.0], [1.0, -2.0], [0.25, 0.0]]),
    )
    assert posed.shape == (3, 2, box, box)
    y, x = np.mgrid[1:box, 0:box]
    np.testing.assert_allclose(posed[0][:, y, x], stack[2][:, x, 2 * c - y])
    np.testing.assert_allclose(posed[1][:, 0 : box - 2, 1:], stack[1][:, 2:, : box - 1])
    np.testing.assert_array_equal(posed[1][:, :, 0], 0.0)  # read from outside the box
    np.testing.assert_allclose(
        posed[2][:, :, 1:], 0.75 * stack[0][:, :, 1:] + 0.25 * stack[0][:, :, :-1]
    )
    with pytest.raises(ValueError, match="classes"):
        pose_class_images(stack, np.array([3]), np.zeros(1), np.zeros((1, 2)))
