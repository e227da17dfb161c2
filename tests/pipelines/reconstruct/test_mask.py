"""Masks against their definition on a sphere and a box, to the voxel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pipelines.errors import StageInputError
from pipelines.reconstruct.mask import (
    auto_threshold,
    create_mask,
    lowpass_map,
    resample_map,
    soft_mask_outside_sphere,
)

BOX = 28


def _coords() -> np.ndarray:
    c = np.arange(BOX) - BOX // 2
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1).astype(float)


def _by_definition(binary: np.ndarray, extend: float, soft: float) -> np.ndarray:
    """Nearest set voxel by a k-d tree (not a distance transform), then the edge."""
    points = _coords().reshape(-1, 3)
    d_bin, _ = cKDTree(points[binary.ravel()]).query(points)
    extended = d_bin <= extend
    d_ext, _ = cKDTree(points[extended]).query(points)
    mask = np.where(
        extended,
        1.0,
        np.where(d_ext < soft, 0.5 + 0.5 * np.cos(np.pi * d_ext / soft), 0.0),
    )
    return mask.reshape(binary.shape)


def test_sphere_mask_matches_the_definition_to_the_voxel() -> None:
    r = np.linalg.norm(_coords(), axis=-1)
    sphere = (r <= 5.0).astype(np.float32)
    mask = create_mask(
        sphere,
        pixel_size_a=1.0,
        lowpass_a=None,
        threshold=0.5,
        extend_px=2,
        soft_edge_px=4,
    )
    expected = _by_definition(sphere > 0.5, 2.0, 4.0)
    np.testing.assert_allclose(mask, expected, atol=1e-6)
    # and the analytic shape: the ball of radius 5 extended by 2 is within r <= 7
    # and holds every voxel with r <= 7 - sqrt(3)/2 (one voxel of slack)
    assert (mask[r <= 7.0 - 0.87] == 1.0).all()
    assert (mask[r > 7.0] < 1.0).all()
    assert (mask[r >= 7.0 + 4.0 + 0.87] == 0.0).all()


def test_box_mask_is_exact() -> None:
    c = _coords()
    half = 4.0
    cube = (np.abs(c) <= half).all(axis=-1)
    mask = create_mask(
        cube.astype(np.float32),
        pixel_size_a=1.0,
        lowpass_a=None,
        threshold=0.5,
        extend_px=3,
        soft_edge_px=5,
    )
    # distance of a lattice point to the box is the length of its excess
    excess = np.linalg.norm(np.clip(np.abs(c) - half, 0.0, None), axis=-1)
    np.testing.assert_array_equal(mask == 1.0, excess <= 3.0)
    # along an axis the soft edge is the cosine of the distance past the extension
    for step in range(1, 7):
        x = int(half) + 3 + step
        expected = 0.5 + 0.5 * np.cos(np.pi * step / 5) if step < 5 else 0.0
        assert mask[BOX // 2, BOX // 2, BOX // 2 + x] == pytest.approx(expected)
    np.testing.assert_allclose(mask, _by_definition(cube, 3.0, 5.0), atol=1e-6)


def test_lowpass_and_auto_threshold_make_a_mask_around_the_particle(
    rng: np.random.Generator,
) -> None:
    r = np.linalg.norm(_coords(), axis=-1)
    particle = np.exp(-0.5 * (r / 4.0) ** 2)
    noisy = particle + 0.02 * rng.standard_normal(particle.shape)
    smooth = lowpass_map(noisy, pixel_size_a=2.0, resolution_a=10.0)
    assert np.std(smooth[r > 12]) < 0.01  # noise beyond 10 Å removed
    level = auto_threshold(smooth)
    assert 0.05 < level < 0.2
    mask = create_mask(
        noisy,
        pixel_size_a=2.0,
        lowpass_a=10.0,
        threshold=None,
        extend_px=2,
        soft_edge_px=3,
    )
    assert (mask[r <= 5] == 1.0).all()
    assert (mask[r >= 14.5] == 0.0).all()  # 0.1 of the peak at r 8.6, +2, +3
    assert mask.min() >= 0.0
    assert mask.max() <= 1.0


def test_a_threshold_above_the_map_is_refused() -> None:
    with pytest.raises(StageInputError, match="threshold"):
        create_mask(
            np.zeros((8, 8, 8)), pixel_size_a=1.0, lowpass_a=None, threshold=1.0
        )


def test_outside_sphere_mask_matches_relions_definition() -> None:
    """softMaskOutsideMap: unchanged inside N/2, the background beyond N/2 + 3,
    the raised-cosine blend between; the background is the blend-weighted mean."""
    rng = np.random.default_rng(3)
    volume = rng.standard_normal((BOX, BOX, BOX)) + 2.0
    out = soft_mask_outside_sphere(volume)
    r = np.linalg.norm(_coords(), axis=-1)
    radius, outer = BOX / 2, BOX / 2 + 3
    blend = np.where(r > outer, 1.0, 0.5 + 0.5 * np.cos(np.pi * (outer - r) / 3.0)) * (
        r >= radius
    )
    background = (blend * volume).sum() / blend.sum()
    assert background == pytest.approx(2.0, abs=0.05)
    np.testing.assert_array_equal(out[r < radius], volume[r < radius])
    np.testing.assert_allclose(out[r > outer], background, rtol=1e-12)
    edge = (r >= radius) & (r <= outer)
    assert edge.sum() > 1000
    np.testing.assert_allclose(
        out[edge], (1 - blend[edge]) * volume[edge] + blend[edge] * background
    )
    # a sphere that holds the whole box changes nothing
    np.testing.assert_array_equal(
        soft_mask_outside_sphere(volume, radius_px=BOX), volume
    )


def test_resample_map_keeps_the_field_of_view_and_the_values() -> None:
    n = 16
    z, y, x = np.indices((n, n, n)) - n // 2
    blob = np.exp(-(x**2 + (y - 2) ** 2 + z**2) / (2 * 2.0**2))  # off-centre in y
    up = resample_map(blob, 24)
    assert up.shape == (24, 24, 24)
    assert up.dtype == np.float32
    # the same place in the field of view: 2 px at box 16 is 3 px at box 24
    assert np.unravel_index(np.argmax(up), up.shape) == (12, 15, 12)
    assert up.max() == pytest.approx(blob.max(), rel=0.05)
    # back again: the same map but for its Nyquist plane (blob max 1)
    np.testing.assert_allclose(resample_map(up, n), blob, atol=1e-3)
    np.testing.assert_allclose(resample_map(np.full((n,) * 3, 3.0), 10), 3.0, atol=1e-6)
    with pytest.raises(StageInputError, match="cube"):
        resample_map(np.zeros((4, 4, 5)), 8)
