"""The LoG blob picker on synthetic micrographs with known particle centres."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.picking.blob import pick_blob
from tests.pipelines.pick_synthetic import make_phantom, match_picks, simulate

DIAMETER_A = 160.0
PIXEL_A = 4.0


@pytest.mark.parametrize(
    ("snr", "defocus_a"), [(0.1, 10000.0), (0.05, 20000.0), (0.05, 30000.0)]
)
def test_blob_picker_recall_and_precision(
    rng: np.random.Generator, snr: float, defocus_a: float
) -> None:
    phantom = make_phantom(rng, diameter_a=DIAMETER_A)
    sim = simulate(rng, phantom=phantom, shape=(640, 640), snr=snr, defocus_a=defocus_a)
    picks = pick_blob(sim.image, pixel_size_a=PIXEL_A, diameter_range_a=(120.0, 200.0))
    recall, precision = match_picks(
        sim.x_px,
        sim.y_px,
        picks.x_px,
        picks.y_px,
        tolerance_px=0.2 * DIAMETER_A / PIXEL_A,
    )
    assert recall >= 0.9
    assert precision >= 0.9
    assert np.all(picks.diameter_a >= 120.0)
    assert np.all(picks.diameter_a <= 200.0)


def test_coordinates_are_in_the_original_pixels(rng: np.random.Generator) -> None:
    """Picking a 2x upsampled copy at half the pixel finds the same places x 2."""
    phantom = make_phantom(rng, diameter_a=DIAMETER_A)
    sim = simulate(rng, phantom=phantom, shape=(384, 512), snr=0.2, n_particles=20)
    upsampled = np.repeat(np.repeat(sim.image, 2, axis=0), 2, axis=1)
    coarse = pick_blob(sim.image, pixel_size_a=PIXEL_A, diameter_range_a=(120, 200))
    fine = pick_blob(upsampled, pixel_size_a=PIXEL_A / 2, diameter_range_a=(120, 200))
    assert fine.shape == upsampled.shape
    r_coarse, _ = match_picks(
        sim.x_px, sim.y_px, coarse.x_px, coarse.y_px, tolerance_px=8
    )
    # pixel (i) of the repeated image covers original 0.5*(i) - 0.25
    r_fine, p_fine = match_picks(
        sim.x_px,
        sim.y_px,
        0.5 * fine.x_px - 0.25,
        0.5 * fine.y_px - 0.25,
        tolerance_px=8,
    )
    assert r_coarse >= 0.9
    assert r_fine >= 0.9
    assert p_fine >= 0.9


def test_minimum_distance_and_edge_are_respected(rng: np.random.Generator) -> None:
    phantom = make_phantom(rng, diameter_a=DIAMETER_A)
    sim = simulate(rng, phantom=phantom, shape=(512, 512), snr=0.1, margin_px=5)
    picks = pick_blob(
        sim.image,
        pixel_size_a=PIXEL_A,
        diameter_range_a=(120, 200),
        threshold_sd=2.0,
        min_distance_a=150.0,
        edge_px=40,
    )
    points = np.column_stack([picks.x_px, picks.y_px])
    distances = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1))
    np.fill_diagonal(distances, np.inf)
    assert distances.min() * PIXEL_A >= 150.0
    assert picks.x_px.min() >= 40
    assert picks.x_px.max() <= 511 - 40
    assert picks.y_px.min() >= 40
    assert picks.y_px.max() <= 511 - 40
    assert np.all(picks.score >= 2.0)
