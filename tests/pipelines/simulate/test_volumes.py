"""Phantom volumes and real maps/models: size, centring, symmetry, plausibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pipelines.errors import StageInputError
from pipelines.reconstruct.symmetry import symmetry_matrices
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    map_from_model,
    phantom_volume,
    rescale_volume,
)


def extent_px(image: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Size of the region above ``fraction`` of the maximum along each axis."""
    idx = np.argwhere(image > fraction * image.max())
    return idx.max(axis=0) - idx.min(axis=0) + 1


def rotate_z(volume: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (z, y, x) about z through the centre voxel."""
    return ndimage.rotate(volume, degrees, axes=(1, 2), reshape=False, order=1)


def test_phantom_is_centred_and_sized(rng: np.random.Generator) -> None:
    volume = phantom_volume(64, 1.5, rng, fill_fraction=0.5)
    assert volume.shape == (64, 64, 64)
    assert volume.dtype == np.float32
    assert volume.max() == pytest.approx(1.0)
    centre = ndimage.center_of_mass(volume)
    np.testing.assert_allclose(centre, 32, atol=5)
    size = extent_px(volume)
    assert np.all(size >= 16)
    assert np.all(size <= 40)


def test_phantom_is_asymmetric_and_symmetric_on_request(
    rng: np.random.Generator,
) -> None:
    c1 = phantom_volume(48, 2.0, rng)
    c4 = phantom_volume(48, 2.0, rng, symmetry="C4")

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert corr(c4, rotate_z(c4, 90.0)) > 0.9
    assert corr(c1, rotate_z(c1, 90.0)) < 0.75
    d2 = phantom_volume(48, 2.0, rng, symmetry="D2")
    flipped = d2[::-1, ::-1, :]  # 2-fold about x: (z, y) -> (-z, -y) about voxel 24
    assert corr(np.roll(flipped, (1, 1), axis=(0, 1)), d2) > 0.9


def test_symmetry_groups_have_the_right_order() -> None:
    assert symmetry_matrices("C1").shape == (1, 3, 3)
    assert symmetry_matrices("c7").shape == (7, 3, 3)
    ops = symmetry_matrices("D3")
    assert ops.shape == (6, 3, 3)
    np.testing.assert_allclose(np.linalg.det(ops), 1.0)
    with pytest.raises(StageInputError, match="symmetry"):
        symmetry_matrices("X5")


def test_phantom_is_reproducible_with_the_same_seed() -> None:
    a = phantom_volume(32, 2.0, np.random.default_rng(3))
    b = phantom_volume(32, 2.0, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


def test_rescale_volume_keeps_physical_size() -> None:
    rng = np.random.default_rng(5)
    volume = phantom_volume(40, 2.0, rng)
    finer = rescale_volume(
        volume, from_pixel_size_a=2.0, to_pixel_size_a=1.0, box_px=80
    )
    assert finer.shape == (80, 80, 80)
    assert finer.max() == pytest.approx(1.0)
    ratio = extent_px(finer.sum(axis=0), 0.2) / extent_px(volume.sum(axis=0), 0.2)
    np.testing.assert_allclose(ratio, 2.0, rtol=0.15)


def test_70s_ribosome_map_makes_plausible_projections(
    shared_data: Path, rng: np.random.Generator
) -> None:
    raw, pixel = load_map(shared_data / "real" / "clean70SRibosome_vol_65p.mrc")
    assert raw.shape == (65, 65, 65)
    assert pixel is None
    assert raw.std() < 1e-3  # why it must be rescaled
    volume = rescale_volume(raw, box_px=64)
    assert volume.max() == pytest.approx(1.0)
    images = project(volume, random_rotations(3, rng))
    for image in images:
        # A 70S ribosome is ~250 Å across (200-300 Å by direction) at 5 Å/px.
        size_a = extent_px(image, 0.02) * RIBOSOME_70S_PIXEL_SIZE_A
        assert np.all(size_a > 180)
        assert np.all(size_a < 330)


def test_8zpm_model_becomes_a_map_of_the_right_size(shared_data: Path) -> None:
    volume = map_from_model(shared_data / "real" / "8zpm.cif", 1.5, 96)
    assert volume.shape == (96, 96, 96)
    assert volume.dtype == np.float32
    np.testing.assert_allclose(
        ndimage.center_of_mass(np.clip(volume, 0, None)), 48, atol=4
    )
    # CXCR4 in 8ZPM spans ~61 x 41 x 107 Å (x, y, z of its atoms).
    size_a = extent_px(volume, 0.1)[::-1] * 1.5  # (x, y, z)
    np.testing.assert_allclose(size_a, [61, 41, 107], atol=15)


def test_load_map_names_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"not an mrc file")
    with pytest.raises(StageInputError, match=r"bad\.mrc"):
        load_map(bad)
