"""The per-micrograph threshold: on synthetic peak scores and on a real micrograph."""

from __future__ import annotations

import numpy as np

from pipelines.picking.blob import DEFAULT_THRESHOLD_SD, pick_blob
from pipelines.picking.threshold import UNIMODAL_FLOOR_SD, mixture_threshold
from tests.pipelines.pick_synthetic import match_picks
from tests.pipelines.picking.conftest import LabelledMicrograph


def test_bimodal_scores_are_split_between_the_modes(
    rng: np.random.Generator,
) -> None:
    noise = rng.gumbel(1.2, 0.4, size=800)  # local maxima of noise: skewed
    particles = rng.normal(3.5, 0.6, size=300)
    outliers = rng.uniform(15.0, 25.0, size=12)  # contamination
    chosen = mixture_threshold(
        np.concatenate([noise, particles, outliers]), fallback=DEFAULT_THRESHOLD_SD
    )
    assert chosen.bimodal
    assert 1.8 < chosen.lower < 2.8
    assert 6.0 < chosen.upper < 15.0  # the contamination is above the upper limit
    kept_noise = np.mean(noise >= chosen.lower)
    kept_particles = np.mean((particles >= chosen.lower) & (particles <= chosen.upper))
    assert kept_noise < 0.15  # the long Gumbel tail: the Bayes boundary keeps some
    assert kept_particles > 0.9


def test_unimodal_scores_are_not_cut_below_the_floor(
    rng: np.random.Generator,
) -> None:
    chosen = mixture_threshold(rng.gumbel(1.2, 0.4, size=1000), fallback=4.5)
    assert not chosen.bimodal
    assert chosen.lower >= UNIMODAL_FLOOR_SD
    assert mixture_threshold(np.array([1.0, 2.0, 3.0]), fallback=4.5).lower == 4.5


def test_blob_picker_default_on_a_real_micrograph(
    labelled_micrograph: LabelledMicrograph,
) -> None:
    """EMPIAR-10017 (beta-galactosidase, 1.77 Å/px): the top half of one
    micrograph and its 315 hand-picked particles (CryoSegNet's copy,
    ``tests/data/cryosegnet_10017``): at the default threshold the blob picker
    finds most of them (0.89 / 0.66; on the whole micrograph the old fixed 4.5 SD
    found 9 of 629, with 23 picks: docs/picking.md)."""
    image = labelled_micrograph.image
    lx, ly = labelled_micrograph.x_px, labelled_micrograph.y_px
    picks = pick_blob(image, pixel_size_a=1.77, diameter_range_a=(140.0, 200.0))
    recall, precision = match_picks(lx, ly, picks.x_px, picks.y_px, tolerance_px=27.0)
    assert recall >= 0.8
    assert precision >= 0.55
