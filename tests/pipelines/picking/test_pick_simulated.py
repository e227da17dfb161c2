"""Picking micrographs from the simulator (:mod:`pipelines.simulate`) made from the
real 70S ribosome map (``shared_data``), with known particle centres, at the issue's
per-particle SNR (0.05-0.1, the box definition of :mod:`pipelines.picking.snr`) and
1-3 µm defocus.

The default run checks one micrograph per picker at the hardest SNR; the ``slow``
grid covers SNR x defocus for the cases that meet the target (see
docs/picking.md for the full table, ``benchmarks/compare_pickers.py`` for 1024²
micrographs and the peer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.ctf.model import CtfParams
from pipelines.extraction.extract import extract_particles
from pipelines.picking.blob import pick_blob
from pipelines.picking.snr import noise_sd_for_snr, particle_signal_variance
from pipelines.picking.template import pick_template
from pipelines.simulate.micrograph import MicrographParams, simulate_micrograph
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import load_map
from tests.pipelines.pick_synthetic import match_picks

PIXEL_A = 5.0
DIAMETER_A = 250.0
SIZE_PX = 640
TOLERANCE_PX = 0.2 * DIAMETER_A / PIXEL_A
N_VIEWS = 100


@pytest.fixture(scope="module")
def volume(shared_data: Path) -> np.ndarray:
    raw, _ = load_map(shared_data / "real" / "clean70SRibosome_vol_65p.mrc")
    return np.asarray(raw / raw.std(), dtype=np.float32)


@pytest.fixture(scope="module")
def templates(volume: np.ndarray) -> np.ndarray:
    # other random poses than the micrographs' (their own seed)
    return project(volume, random_rotations(N_VIEWS, np.random.default_rng(1)))


def simulate_case(
    volume: np.ndarray, snr: float, defocus_a: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, CtfParams]:
    """(noisy image, clean image, true centres [x, y], CTF) at per-particle ``snr``."""
    rng = np.random.default_rng(seed)
    ctf = CtfParams(
        defocus_u_a=defocus_a + 300.0,
        defocus_v_a=defocus_a - 300.0,
        astigmatism_angle_deg=20.0,
    )
    params = MicrographParams(
        shape_px=(SIZE_PX, SIZE_PX),
        pixel_size_a=PIXEL_A,
        n_particles=20,
        ctf=ctf,
        ice_phase_sd_rad=0.0,
    )
    clean, truth = simulate_micrograph(params, rng, volume=volume)
    centres = np.array([[p.x_px, p.y_px] for p in truth.particles])
    noise_sd = noise_sd_for_snr(clean, centres, box_px=volume.shape[-1], snr=snr)
    image = clean + rng.normal(0.0, noise_sd, clean.shape)
    return image.astype(np.float32), clean, centres, ctf


def run_picker(
    name: str, image: np.ndarray, templates: np.ndarray, ctf: CtfParams
) -> tuple[np.ndarray, np.ndarray]:
    if name == "template":
        picks = pick_template(
            image, templates, pixel_size_a=PIXEL_A, diameter_a=DIAMETER_A, ctf=ctf
        )
    else:
        picks = pick_blob(
            image, pixel_size_a=PIXEL_A, diameter_range_a=(200.0, 300.0), ctf=ctf
        )
    return picks.x_px, picks.y_px


def test_noise_gives_the_requested_snr(volume: np.ndarray) -> None:
    image, clean, centres, _ = simulate_case(volume, 0.05, 20000.0, seed=3)
    noise = image - clean
    measured = particle_signal_variance(clean, centres, box_px=65) / noise.var()
    assert measured == pytest.approx(0.05, rel=0.03)


@pytest.mark.parametrize("name", ["template", "blob"])
def test_picker_at_lowest_snr(
    name: str, volume: np.ndarray, templates: np.ndarray
) -> None:
    image, _, centres, ctf = simulate_case(volume, 0.05, 30000.0, seed=11)
    x_px, y_px = run_picker(name, image, templates, ctf)
    recall, precision = match_picks(
        centres[:, 0], centres[:, 1], x_px, y_px, tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.9
    assert precision >= 0.9


GRID = [  # template: the hardest SNR at every defocus, two easier cases
    ("template", 0.05, 10000.0),
    ("template", 0.05, 20000.0),
    ("template", 0.075, 30000.0),
    ("template", 0.1, 10000.0),
    ("blob", 0.05, 10000.0),
    ("blob", 0.05, 20000.0),
    ("blob", 0.075, 10000.0),
    ("blob", 0.075, 20000.0),
    ("blob", 0.075, 30000.0),
    ("blob", 0.1, 10000.0),
    ("blob", 0.1, 20000.0),
    ("blob", 0.1, 30000.0),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "snr", "defocus_a"), GRID)
def test_picker_grid(
    name: str, snr: float, defocus_a: float, volume: np.ndarray, templates: np.ndarray
) -> None:
    image, _, centres, ctf = simulate_case(volume, snr, defocus_a, seed=21)
    x_px, y_px = run_picker(name, image, templates, ctf)
    recall, precision = match_picks(
        centres[:, 0], centres[:, 1], x_px, y_px, tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.9
    assert precision >= 0.9


def test_extracted_boxes_are_centred(volume: np.ndarray) -> None:
    image, clean, _, ctf = simulate_case(volume, 0.1, 20000.0, seed=5)
    picks = pick_blob(
        image, pixel_size_a=PIXEL_A, diameter_range_a=(200.0, 300.0), ctf=ctf
    )
    assert len(picks) >= 15
    # extraction puts the true particle at the box centre: the centroid of the
    # average of the extracted (contrast-inverted) clean boxes is at the centre
    out = extract_particles(
        clean, picks, pixel_size_a=PIXEL_A, box_px=80, diameter_a=DIAMETER_A
    )
    average = np.clip(out.images.mean(axis=0), 0, None)
    grid = np.arange(80) - 40
    centroid_y = (average.sum(axis=1) * grid).sum() / average.sum()
    centroid_x = (average.sum(axis=0) * grid).sum() / average.sum()
    assert abs(centroid_y) < 3.0
    assert abs(centroid_x) < 3.0
