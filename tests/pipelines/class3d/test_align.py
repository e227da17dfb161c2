"""Superposing maps (rotation, shift, hand) and finding symmetry axes."""

from __future__ import annotations

import numpy as np

from pipelines.class3d.align import (
    align_maps,
    align_symmetry,
    mirror_map,
    rotate_map,
    symmetrise_map,
)
from pipelines.reconstruct import fourier_shell_correlation, symmetry_matrices
from pipelines.reconstruct.geometry import euler_to_matrix
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.class3d.conftest import PX


def test_align_maps_undoes_a_rotation_a_shift_and_the_hand(
    ribosome_32: np.ndarray,
) -> None:
    turn = euler_to_matrix(40.0, 70.0, 200.0)
    moved = rotate_map(ribosome_32, turn, np.array([1.0, -2.0, 0.0]))
    for mirrored in (False, True):
        moving = mirror_map(moved) if mirrored else moved
        result = align_maps(moving, ribosome_32, pixel_size_a=PX)
        assert result.mirrored == mirrored
        assert result.correlation > 0.8  # 0.86 measured (two trilinear resamplings)
        fsc = fourier_shell_correlation(result.aligned, ribosome_32, PX)
        assert fsc.crossing_a(0.5) < 30.0  # 24 Å measured, Nyquist 20 Å


def test_align_symmetry_finds_the_axes_of_a_turned_symmetric_map() -> None:
    truth = phantom_volume(32, 4.0, np.random.default_rng(3), symmetry="D2")
    turn = euler_to_matrix(25.0, 50.0, 100.0)
    turned = rotate_map(truth, turn)
    wrong = _cc(symmetrise_map(turned, "D2"), turned)
    rotation, aligned = align_symmetry(turned, "D2", pixel_size_a=4.0)
    assert _cc(rotate_map(turned, rotation), aligned) > max(0.97, wrong + 0.05)
    # the found rotation undoes the turn up to a rotation that keeps D2's axes
    # (one of the 24 of the octahedral group)
    residual = rotation @ turn
    angles = [_angle_deg(residual, op) for op in symmetry_matrices("O")]
    assert min(angles) < 6.0


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cosine = (np.trace(a @ b.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
