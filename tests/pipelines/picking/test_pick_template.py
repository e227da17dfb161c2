"""The CTF-aware template picker on synthetic micrographs with known centres."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.picking.picks import filter_picks
from pipelines.picking.template import TemplateScore, pick_template
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
    assert np.all(picks.score > 0)  # the default score: the correlation
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


def test_correlation_score_is_the_ncc_times_the_root_of_the_power(
    rng: np.random.Generator,
) -> None:
    """``score="correlation"`` divides by the map's mean local SD instead of each
    position's: at every peak it is the NCC times sqrt(power) times one constant
    per micrograph (the micrograph's variance over its mean local variance)."""
    phantom = make_phantom(rng, diameter_a=DIAMETER_A)
    templates = project_templates(phantom, rng, n=3, box_px=64, pixel_size_a=PIXEL_A)
    sim = simulate(rng, phantom=phantom, shape=(384, 384), snr=0.1, n_particles=15)
    kw = {"pixel_size_a": PIXEL_A, "diameter_a": DIAMETER_A, "ctf": sim.ctf}
    ncc = pick_template(
        sim.image, templates, score="ncc", whitening=1.0, min_ncc=0.05, **kw
    )
    corr = pick_template(
        sim.image, templates, score="correlation", whitening=1.0, min_ncc=-1.0, **kw
    )
    # the same peaks (a position's best template does not depend on the divisor)
    by_place = {
        (x, y): s for x, y, s in zip(corr.x_px, corr.y_px, corr.score, strict=True)
    }
    common = [
        (s, by_place[(x, y)], p)
        for x, y, s, p in zip(ncc.x_px, ncc.y_px, ncc.score, ncc.power, strict=True)
        if (x, y) in by_place
    ]
    assert len(common) >= 10
    n, c, p = np.asarray(common).T
    assert np.all((n > 0) & (n <= 1))  # the NCC
    factor = c / (n * np.sqrt(p))
    np.testing.assert_allclose(factor, factor[0], rtol=1e-3)


@pytest.mark.parametrize(("score", "whitening"), [("ncc", 1.0), ("correlation", 0.5)])
def test_the_other_scores_find_the_particles(
    rng: np.random.Generator, score: TemplateScore, whitening: float
) -> None:
    """The earlier default (the whitened NCC) and partial whitening; the default
    runs in the tests above."""
    phantom = make_phantom(rng, diameter_a=DIAMETER_A)
    templates = project_templates(phantom, rng, n=6, box_px=64, pixel_size_a=PIXEL_A)
    sim = simulate(rng, phantom=phantom, shape=(640, 640), snr=0.05, defocus_a=20000.0)
    picks = pick_template(
        sim.image,
        templates,
        pixel_size_a=PIXEL_A,
        diameter_a=DIAMETER_A,
        ctf=sim.ctf,
        score=score,
        whitening=whitening,
    )
    recall, precision = match_picks(
        sim.x_px, sim.y_px, picks.x_px, picks.y_px, tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.9
    assert precision >= 0.9


@pytest.mark.parametrize(
    ("field", "value"), [("score", "sad"), ("whitening", 1.5), ("whitening", -0.1)]
)
def test_an_unknown_score_or_whitening_names_the_argument(
    field: str, value: object
) -> None:
    image = np.zeros((64, 64), dtype=np.float32)
    with pytest.raises(StageInputError) as caught:
        pick_template(
            image,
            np.ones((1, 16, 16), dtype=np.float32),
            pixel_size_a=PIXEL_A,
            diameter_a=DIAMETER_A,
            ctf=None,
            **{field: value},  # type: ignore[arg-type]
        )
    assert caught.value.field == field
    assert str(value) in str(caught.value)
