"""Picking a real float MRC: the shared Falcon micrograph
(``real/epu2.9_example_crop2048.mrc``, 0.6666 Å/px) and the 255 particles we
labelled on it by eye (``benchmarks/data/epu29_crop2048_labels.csv``; how they were
made and checked: ``benchmarks/data/PROVENANCE.md``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
from scipy import ndimage

from pipelines.ctf.model import ctf_2d
from pipelines.picking.blob import pick_blob
from pipelines.picking.learned import pick_learned
from pipelines.picking.template import pick_template
from tests.pipelines.pick_synthetic import match_picks
from tests.pipelines.picking.real_mrc import (
    CTF,
    DIAMETERS_A,
    PIXEL_A,
    TOLERANCE_PX,
    load_real_mrc,
)


@pytest.fixture(scope="module")
def micrograph(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_real_mrc(shared_data)


def _core_contrast(image: np.ndarray, xy: np.ndarray) -> float:
    """Mean of 4x-binned boxes centred on ``xy``: the centre (radius < 4 binned px)
    minus the ring 10-15 px out, over the binned micrograph's SD."""
    binned = image.reshape(512, 4, 512, 4).mean(axis=(1, 3))
    binned = (binned - binned.mean()) / binned.std()
    cols, rows = np.rint(np.asarray(xy) / 4.0).astype(int).T
    inside = (rows >= 16) & (rows < 496) & (cols >= 16) & (cols < 496)
    offsets = np.arange(-15, 16)
    boxes = binned[
        rows[inside, None, None] + offsets[None, :, None],
        cols[inside, None, None] + offsets[None, None, :],
    ].mean(axis=0)
    r = np.hypot(offsets[:, None], offsets[None, :])
    return float(boxes[r < 4].mean() - boxes[(r >= 10) & (r < 15)].mean())


def test_our_labels_sit_on_particles(micrograph: tuple[np.ndarray, np.ndarray]) -> None:
    """The labels are in the micrograph's frame (x = column): their average is a dark
    blob; the same labels transposed or flipped in y average to nothing."""
    image, labels = micrograph
    assert _core_contrast(image, labels) < -0.3
    assert abs(_core_contrast(image, labels[:, ::-1])) < 0.1
    flipped = np.column_stack([labels[:, 0], 2047 - labels[:, 1]])
    assert abs(_core_contrast(image, flipped)) < 0.1


def test_learned_and_blob_pickers_on_the_float_mrc(
    micrograph: tuple[np.ndarray, np.ndarray],
) -> None:
    """At defaults, no CTF (measured: learned 0.90 / 0.52, blob 0.86 / 0.55;
    docs/real_micrographs.md)."""
    image, labels = micrograph
    lx, ly = labels[:, 0], labels[:, 1]
    learned = pick_learned(image, pixel_size_a=PIXEL_A, diameter_range_a=DIAMETERS_A)
    blob = pick_blob(image, pixel_size_a=PIXEL_A, diameter_range_a=DIAMETERS_A)
    recall, precision = match_picks(
        lx, ly, learned.x_px, learned.y_px, tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.85
    assert precision >= 0.45
    recall, precision = match_picks(
        lx, ly, blob.x_px, blob.y_px, tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.8
    assert precision >= 0.48


def test_blob_picker_with_the_ctf_on_the_float_mrc(
    micrograph: tuple[np.ndarray, np.ndarray],
) -> None:
    """With the micrograph's CTF (our estimate, pipelines/ctf: 2.71 / 2.70 µm, angle
    -40°; Cs 2.7 mm assumed), the live stage's path.  The particles' own scale is in
    the CTF's first lobe (mean |CTF| 0.70 at 50 Å), so the picker uses the LoG of the
    CTF-multiplied image; the local energy alone found 0.38 / 0.28 here (measured
    now: 0.88 / 0.50)."""
    image, labels = micrograph
    picks = pick_blob(
        image, pixel_size_a=PIXEL_A, diameter_range_a=DIAMETERS_A, ctf=CTF
    )
    recall, precision = match_picks(
        labels[:, 0], labels[:, 1], picks.x_px, picks.y_px, tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.8
    assert precision >= 0.45


def _label_average(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean of the boxes (1.5 x the largest diameter) at ``labels`` of the
    micrograph phase-flipped with its CTF, background of two diameters removed,
    contrast inverted: a class-like average of white particles."""
    flip = np.sign(ctf_2d(image.shape, PIXEL_A, CTF))
    flat = scipy.fft.irfft2(scipy.fft.rfft2(image - image.mean()) * flip, s=image.shape)
    flat -= ndimage.gaussian_filter(flat, 2.0 * DIAMETERS_A[1] / PIXEL_A)
    half = round(0.75 * DIAMETERS_A[1] / PIXEL_A)
    cols, rows = np.rint(labels).astype(int).T
    inside = (
        (rows >= half)
        & (rows < image.shape[0] - half)
        & (cols >= half)
        & (cols < image.shape[1] - half)
    )
    offsets = np.arange(-half, half)
    boxes = flat[
        rows[inside, None, None] + offsets[None, :, None],
        cols[inside, None, None] + offsets[None, None, :],
    ]
    return np.asarray(-boxes.mean(axis=0), dtype=np.float32)


@pytest.mark.slow
def test_template_score_on_the_float_mrc_left_half_averages_right_half(
    micrograph: tuple[np.ndarray, np.ndarray],
) -> None:
    """Templates from the labels of the left half pick the right half (the labels
    there unseen), with the micrograph's CTF, the stage's defaults otherwise: the
    unwhitened correlation (the default) finds far more of the particles than the
    whitened NCC (the earlier default); docs/picking.md, *The template score*.
    Measured: correlation 0.85 / 0.48, NCC 0.66 / 0.38 (the blob picker on the
    whole micrograph 0.88 / 0.50)."""
    image, labels = micrograph
    left = labels[:, 0] < 1024
    template = _label_average(image, labels[left])
    right = np.ascontiguousarray(image[:, 1024:])
    truth = labels[~left] - np.array([1024.0, 0.0])
    found = {}
    for score, whitening in (("correlation", 0.0), ("ncc", 1.0)):
        picks = pick_template(
            right,
            template,
            pixel_size_a=PIXEL_A,
            diameter_a=float(np.mean(DIAMETERS_A)),
            ctf=CTF,
            score=score,  # type: ignore[arg-type]
            whitening=whitening,
        )
        found[score] = match_picks(
            truth[:, 0], truth[:, 1], picks.x_px, picks.y_px, tolerance_px=TOLERANCE_PX
        )
    message = str(found)
    assert found["correlation"][0] >= 0.8, message
    assert found["correlation"][0] >= found["ncc"][0] + 0.1, message
    assert found["correlation"][1] >= found["ncc"][1] + 0.05, message
