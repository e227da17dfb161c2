"""The CTF-aware template picker on synthetic micrographs with known centres."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.picking.picks import filter_picks
from pipelines.picking.template import pick_template
from tests.pipelines.pick_synthetic import (
    make_phantom,
    match_picks,
    project_templates,
    simulate,
)

DIAMETER_A = 160.0
PIXEL_A = 4.0
TOLERANCE_PX = 0.2 * DIAMETER_A / PIXEL_A


@pytest.mark.parametrize(
    ("snr", "defocus_a"), [(0.1, 10000.0), (0.05, 20000.0), (0.05, 30000.0)]
)
def test_template_picker_recall_and_precision(
    rng: np.random.Generator, snr: float, defocus_a: float
) -> None:
    phantom = make_phantom(rng, diameter_a=DIAMETER_A)
    templates = project_templates(phantom, rng, n=6, box_px=64, pixel_size_a=PIXEL_A)
    sim = simulate(rng, phantom=phantom, shape=(640, 640), snr=snr, defocus_a=defocus_a)
    picks = pick_template(
        sim.image, templates, pixel_size_a=PIXEL_A, diameter_a=DIAMETER_A, ctf=sim.ctf
    )
    recall, precision = match_picks(
        sim.x_px, sim.y_px, picks.x_px, picks.y_px, tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.9
    assert precision >= 0.9
    assert np.all((picks.score > 0) & (picks.score <= 1))
    assert np.all(picks.power > 0)


def test_thresholds_after_picking_equal_repicking(rng: np.random.Generator) -> None:
    phantom = make_phantom(rng, diameter_a=DIAMETER_A)
    templates = project_templates(phantom, rng, n=3, box_px=64, pixel_size_a=PIXEL_A)
    sim = simulate(rng, phantom=phantom, shape=(384, 384), snr=0.1, n_particles=15)
    kw = {"pixel_size_a": PIXEL_A, "diameter_a": DIAMETER_A, "ctf": sim.ctf}
    loose = pick_template(sim.image, templates, min_ncc=0.05, **kw)
    threshold = float(np.median(loose.score))
    strict = pick_template(sim.image, templates, min_ncc=threshold, **kw)
    after = filter_picks(loose, min_score=threshold)
    assert len(after) == len(strict)
    np.testing.assert_allclose(np.sort(after.x_px), np.sort(strict.x_px))
    np.testing.assert_allclose(np.sort(after.score), np.sort(strict.score))
