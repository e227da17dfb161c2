"""Extraction: boxes centred on the picks, contrast, Fourier-crop downscaling,
background normalisation, edge handling, box-size rules."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from pipelines.errors import StageInputError
from pipelines.extraction.extract import (
    RELION_IT_SMALL_BOXES_PX,
    default_box_px,
    downscaled_box_px,
    extract_particles,
)
from pipelines.picking.filters import fourier_crop
from pipelines.picking.picks import Picks


def _picks(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> Picks:
    n = len(x)
    return Picks(
        x_px=np.asarray(x, dtype=np.float64),
        y_px=np.asarray(y, dtype=np.float64),
        score=np.linspace(1.0, 0.5, n),
        power=np.ones(n),
        diameter_a=np.full(n, 60.0),
        pixel_size_a=2.0,
        shape=shape,
    )


def _dark_blobs(
    rng: np.random.Generator, shape: tuple[int, int], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(0.0, 0.05, shape) + 5.0
    for cx, cy in zip(x, y, strict=True):  # a few test particles
        image -= np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 4.0**2))
    return image.astype(np.float32)


def test_boxes_are_centred_inverted_and_normalised(rng: np.random.Generator) -> None:
    shape = (300, 400)
    x = np.array([50.0, 200.0, 351.0, 120.0])
    y = np.array([60.0, 150.0, 240.0, 229.0])
    image = _dark_blobs(rng, shape, x, y)
    out = extract_particles(
        image, _picks(x, y, shape), pixel_size_a=2.0, box_px=64, diameter_a=40.0
    )
    assert out.images.shape == (4, 64, 64)
    assert out.images.dtype == np.float32
    assert out.n_skipped_edge == 0
    # inverted: the particle is now bright, its centroid at box pixel 32
    bright = np.where(
        out.images > 0.5 * out.images.max(axis=(1, 2), keepdims=True), out.images, 0
    )
    grid = np.arange(64)
    cy = (bright.sum(axis=2) * grid).sum(axis=1) / bright.sum(axis=(1, 2))
    cx = (bright.sum(axis=1) * grid).sum(axis=1) / bright.sum(axis=(1, 2))
    np.testing.assert_allclose(cy, 32.0, atol=0.25)
    np.testing.assert_allclose(cx, 32.0, atol=0.25)
    coords = np.arange(64) - 32
    ring = (coords[:, None] ** 2 + coords[None, :] ** 2) > 10.0**2
    np.testing.assert_allclose(out.images[:, ring].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.images[:, ring].std(axis=1), 1.0, atol=1e-4)


def test_edge_particles_are_skipped_and_counted(rng: np.random.Generator) -> None:
    shape = (200, 200)
    x = np.array([100.0, 20.0, 185.0, 100.0, 32.0])
    y = np.array([100.0, 100.0, 100.0, 190.0, 168.0])
    image = _dark_blobs(rng, shape, x, y)
    out = extract_particles(image, _picks(x, y, shape), pixel_size_a=2.0, box_px=64)
    # box half-width 32: 20 and 185 and 190 are too close; (32, 168) just fits
    assert out.n_skipped_edge == 3
    np.testing.assert_array_equal(out.pick_index, [0, 4])
    np.testing.assert_array_equal(out.x_px, [100.0, 32.0])
    assert len(out.images) + out.n_skipped_edge == len(x)


def test_downscale_is_a_fourier_crop(rng: np.random.Generator) -> None:
    # a band-limited image: Fourier cropping must equal sampling of the same function
    n, m = 128, 64
    spectrum = np.zeros((n, n // 2 + 1), dtype=np.complex128)
    low = rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))
    spectrum[:8, :8] = low
    spectrum[0, 0] = 0
    fine = scipy.fft.irfft2(spectrum, s=(n, n))
    coarse = fourier_crop(fine, (m, m))
    np.testing.assert_allclose(coarse, fine[::2, ::2], atol=1e-5 * np.abs(fine).max())
    image = np.tile(fine, (2, 2)).astype(np.float32)
    picks = _picks(np.array([128.0]), np.array([128.0]), image.shape)
    out = extract_particles(
        image,
        picks,
        pixel_size_a=1.0,
        box_px=128,
        downscale_box_px=64,
        invert_contrast=False,
        normalise=False,
    )
    assert out.pixel_size_a == pytest.approx(2.0)
    shifted = np.roll(fine, (-64, -64), axis=(0, 1))  # the box starts at pixel 64
    np.testing.assert_allclose(out.images[0], shifted[::2, ::2], atol=1e-4)


def test_default_box_is_fft_friendly_and_large_enough() -> None:
    for diameter_a, pixel_a in [
        (150.0, 1.06),
        (250.0, 0.83),
        (100.0, 1.5),
        (320, 0.65),
    ]:
        box = default_box_px(diameter_a, pixel_a)
        assert box % 2 == 0
        assert box >= 1.5 * diameter_a / pixel_a
        assert scipy.fft.next_fast_len(box, real=True) == box
        assert box < 1.5 * diameter_a / pixel_a * 1.15


@pytest.mark.parametrize(("box", "pixel_a"), [(256, 1.0), (400, 0.83), (128, 1.2)])
def test_downscaled_box_follows_relion_it(box: int, pixel_a: float) -> None:
    small = downscaled_box_px(box, pixel_a)
    assert small <= box
    if small < box:
        assert pixel_a * box / small < 3.75
        smaller = [s for s in RELION_IT_SMALL_BOXES_PX if s < small]
        assert all(pixel_a * box / s >= 3.75 for s in smaller)
    assert downscaled_box_px(256, 1.0) == 96  # 2.67 Å; 64 would give 4.0 Å


def test_odd_box_is_refused() -> None:
    image = np.zeros((100, 100), dtype=np.float32)
    picks = _picks(np.array([50.0]), np.array([50.0]), image.shape)
    with pytest.raises(StageInputError, match="box_px"):
        extract_particles(image, picks, pixel_size_a=1.0, box_px=33)
