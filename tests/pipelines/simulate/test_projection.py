"""Fourier-slice projection against a real-space line integral; Euler angles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.errors import StageInputError
from pipelines.simulate.projection import (
    euler_to_matrix,
    matrix_to_euler,
    project,
    random_rotations,
)
from pipelines.simulate.volumes import phantom_volume


def direct_projection(volume: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """sum_z V(R^T r) by real-space resampling (cubic) about the centre voxel."""
    box = volume.shape[0]
    c = np.full(3, box // 2, dtype=float)
    reverse = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    m = reverse @ rotation.T @ reverse
    rotated = ndimage.affine_transform(volume, m, offset=c - m @ c, order=3)
    return rotated.sum(axis=0)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return phantom_volume(48, 2.0, np.random.default_rng(7))


def test_fourier_slice_matches_real_space_line_integral(
    volume: np.ndarray, rng: np.random.Generator
) -> None:
    rotations = random_rotations(4, rng)
    fast = project(volume, rotations)
    for image, rotation in zip(fast, rotations, strict=True):
        slow = direct_projection(volume, rotation)
        corr = np.corrcoef(image.ravel(), slow.ravel())[0, 1]
        assert corr > 0.995
        assert np.abs(image - slow).max() < 0.03 * np.abs(slow).max()


def test_projection_preserves_mass(
    volume: np.ndarray, rng: np.random.Generator
) -> None:
    images = project(volume, random_rotations(3, rng))
    np.testing.assert_allclose(images.sum(axis=(1, 2)), volume.sum(), rtol=0.03)


def test_shift_moves_content_by_plus_shift(volume: np.ndarray) -> None:
    identity = np.eye(3)[None]
    base = project(volume, identity)[0]
    moved = project(volume, identity, shifts_px=np.array([[2.5, -1.25]]))[0]
    expected = ndimage.shift(base, (-1.25, 2.5), order=3, mode="constant")
    assert np.corrcoef(moved.ravel(), expected.ravel())[0, 1] > 0.999


def test_identity_projection_is_the_sum_along_z(volume: np.ndarray) -> None:
    image = project(volume, np.eye(3)[None])[0]
    assert np.corrcoef(image.ravel(), volume.sum(axis=0).ravel())[0, 1] > 0.999


def test_euler_round_trip(rng: np.random.Generator) -> None:
    rotations = random_rotations(200, rng)
    angles = matrix_to_euler(rotations)
    assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    back = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    np.testing.assert_allclose(back, rotations, atol=1e-9)


def test_euler_degenerate_tilt_round_trips() -> None:
    for tilt in (0.0, 180.0):
        m = euler_to_matrix(30.0, tilt, 40.0)
        back = euler_to_matrix(*matrix_to_euler(m))
        np.testing.assert_allclose(back, m, atol=1e-9)


def test_relion_convention_rot_only_is_inverse_z_rotation() -> None:
    # RELION: rot = 90 maps the volume's +y axis onto the image's +x axis.
    m = euler_to_matrix(90.0, 0.0, 0.0)
    np.testing.assert_allclose(
        m @ np.array([0.0, 1.0, 0.0]), [1.0, 0.0, 0.0], atol=1e-12
    )
    # tilt tips the volume's z axis towards -x in the image (Y-rotation).
    t = euler_to_matrix(0.0, 90.0, 0.0)
    np.testing.assert_allclose(
        t @ np.array([0.0, 0.0, 1.0]), [-1.0, 0.0, 0.0], atol=1e-12
    )


def test_random_rotations_are_uniform(rng: np.random.Generator) -> None:
    rotations = random_rotations(20000, rng)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)
    # Uniform on SO(3): E[R] = 0 and the z axis image is uniform on the sphere.
    assert np.abs(rotations.mean(axis=0)).max() < 0.02
    cos_tilt = rotations[:, 2, 2]
    hist, _ = np.histogram(cos_tilt, bins=10, range=(-1, 1))
    assert hist.min() > 0.9 * hist.mean()


def test_project_rejects_bad_shapes(volume: np.ndarray) -> None:
    with pytest.raises(StageInputError, match="rotations"):
        project(volume, np.eye(2)[None])
    with pytest.raises(StageInputError, match="volume"):
        project(volume[:, :, :-1], np.eye(3)[None])
