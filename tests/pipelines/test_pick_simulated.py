"""Picking micrographs from the simulator (:mod:`pipelines.simulate`) made from the
real 70S ribosome map (``shared_data``), with known particle centres.

The full grid of SNR and defocus, and the peer (APPLE), are in
``benchmarks/compare_pickers.py``; this test checks one small micrograph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pipelines.ctf_model import CtfParams
from pipelines.extract import extract_particles
from pipelines.pick_template import pick_template
from pipelines.simulate.micrograph import MicrographParams, simulate_micrograph
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import load_map
from tests.pipelines.pick_synthetic import match_picks

PIXEL_A = 5.0
DIAMETER_A = 250.0


@pytest.mark.slow
def test_template_picker_on_simulated_ribosomes(
    shared_data: Path, rng: np.random.Generator
) -> None:
    volume, _ = load_map(shared_data / "real" / "clean70SRibosome_vol_65p.mrc")
    volume = volume / volume.std()
    ctf = CtfParams(defocus_u_a=20300.0, defocus_v_a=19700.0, astigmatism_angle_deg=20)
    params = MicrographParams(
        shape_px=(640, 640),
        pixel_size_a=PIXEL_A,
        n_particles=18,
        ctf=ctf,
        ice_phase_sd_rad=0.0,
    )
    clean, truth = simulate_micrograph(params, rng, volume=volume)
    centres = np.array([[p.x_px, p.y_px] for p in truth.particles])
    yy, xx = np.mgrid[:640, :640]
    nearest, _ = cKDTree(centres).query(np.column_stack([xx.ravel(), yy.ravel()]))
    inside = (nearest <= 0.5 * DIAMETER_A / PIXEL_A).reshape(640, 640)
    snr = 0.2  # per particle, in the particle's disc (see docs/picking.md)
    noise_sd = np.sqrt(np.var(clean[inside] - clean.mean()) / snr)
    image = (clean + rng.normal(0.0, noise_sd, clean.shape)).astype(np.float32)
    templates = project(volume, random_rotations(24, rng))

    picks = pick_template(
        image, templates, pixel_size_a=PIXEL_A, diameter_a=DIAMETER_A, ctf=ctf
    )
    recall, precision = match_picks(
        centres[:, 0], centres[:, 1], picks.x_px, picks.y_px, tolerance_px=10.0
    )
    assert recall >= 0.9
    assert precision >= 0.9

    # extraction puts the true particle at the box centre: the average of the
    # extracted (contrast-inverted) boxes correlates best with no shift
    out = extract_particles(
        clean, picks, pixel_size_a=PIXEL_A, box_px=80, diameter_a=DIAMETER_A
    )
    average = out.images.mean(axis=0)
    grid = np.arange(80) - 40
    centroid_y = (np.clip(average, 0, None).sum(axis=1) * grid).sum() / np.clip(
        average, 0, None
    ).sum()
    centroid_x = (np.clip(average, 0, None).sum(axis=0) * grid).sum() / np.clip(
        average, 0, None
    ).sum()
    assert abs(centroid_y) < 3.0
    assert abs(centroid_x) < 3.0
