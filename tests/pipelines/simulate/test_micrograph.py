"""Particle placement, truth records and shot noise of simulated micrographs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from pipelines.errors import StageInputError
from pipelines.simulate.micrograph import MicrographParams, simulate_micrograph
from pipelines.simulate.placement import place_points
from pipelines.simulate.projection import euler_to_matrix


def test_placement_respects_distance_margin_and_exclusion(
    rng: np.random.Generator,
) -> None:
    discs = np.array([[300.0, 300.0, 80.0]])
    points = place_points(
        150, (600, 800), rng, min_distance_px=40.0, edge_margin_px=30.0, exclusion=discs
    )
    assert len(points) == 150
    assert pdist(points).min() >= 40.0
    assert points[:, 0].min() >= 30
    assert points[:, 0].max() <= 770
    assert points[:, 1].min() >= 30
    assert points[:, 1].max() <= 570
    assert np.hypot(points[:, 0] - 300, points[:, 1] - 300).min() > 80


def test_placement_stops_when_the_field_is_full(rng: np.random.Generator) -> None:
    points = place_points(
        500, (200, 200), rng, min_distance_px=50.0, edge_margin_px=10.0
    )
    assert 4 <= len(points) < 500
    assert pdist(points).min() >= 50.0
    with pytest.raises(StageInputError, match="edge_margin_px"):
        place_points(1, (20, 20), rng, min_distance_px=1.0, edge_margin_px=10.0)


def test_truth_records_are_consistent(rng: np.random.Generator) -> None:
    params = MicrographParams(
        shape_px=(384, 384),
        n_particles=10,
        phantom_box_px=40,
        carbon_edge=True,
        n_contamination=1,
    )
    image, truth = simulate_micrograph(params, rng)
    assert image.shape == (384, 384)
    assert image.dtype == np.float32
    assert truth.coordinates_px.shape == (len(truth.particles), 2)
    assert len(truth.particles) >= 5
    np.testing.assert_allclose(
        truth.rotations, euler_to_matrix(*truth.euler_deg.T), atol=1e-12
    )
    np.testing.assert_allclose(
        truth.particles[0].rotation, truth.rotations[0], atol=1e-12
    )
    for particle in truth.particles:
        assert particle.defocus_u_a == truth.ctf.defocus_u_a
    assert truth.carbon_edge is not None
    assert len(truth.contamination) == 1
    # Carbon and ice-plus-carbon absorb: the carbon side is darker on average.
    carbon = truth.carbon_edge.mask(truth.shape_px)
    if 0 < carbon.mean() < 1:
        assert image[carbon].mean() < image[~carbon].mean()


def test_poisson_mean_and_variance_follow_the_dose(rng: np.random.Generator) -> None:
    dose, pixel = 30.0, 1.3
    params = MicrographParams(
        shape_px=(256, 256), pixel_size_a=pixel, n_particles=0, ice_phase_sd_rad=0.0
    )
    counts, truth = simulate_micrograph(params, rng, dose_e_per_a2=dose)
    transmission = np.exp(-params.ice_thickness_a / params.inelastic_mean_free_path_a)
    expected = dose * pixel**2 * transmission
    n = counts.size
    assert abs(counts.mean() - expected) < 4 * np.sqrt(expected / n)
    assert counts.var() == pytest.approx(expected, rel=0.03)
    assert truth.dose_e_per_a2 == dose
