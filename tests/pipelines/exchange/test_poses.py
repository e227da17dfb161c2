"""cryoSPARC rotation vectors <-> RELION ZYZ Euler angles: the same rotation matrix."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from pipelines.exchange.poses import (
    euler_to_rotvec,
    rodrigues,
    rotvec_to_euler,
    rotvec_viewing_directions,
)
from pipelines.reconstruct.geometry import euler_to_matrix


def _angles(rng: np.random.Generator, n: int) -> np.ndarray:
    angles = np.stack(
        [
            rng.uniform(-180, 180, n),
            np.rad2deg(np.arccos(rng.uniform(-1, 1, n))),
            rng.uniform(-180, 180, n),
        ],
        axis=1,
    )
    angles[:4, 1] = [0.0, 180.0, 0.0, 180.0]  # the gimbal-lock poles
    angles[4:8] = [[0, 90, 180], [180, 90, 0], [90, 180, -90], [45, 90, 135]]
    return angles


def test_euler_to_cs_to_euler_is_the_same_matrix(rng: np.random.Generator) -> None:
    angles = _angles(rng, 20000)
    pose = euler_to_rotvec(*angles.T)
    back = rotvec_to_euler(pose)
    np.testing.assert_allclose(
        euler_to_matrix(*back.T), euler_to_matrix(*angles.T), atol=1e-9
    )
    assert np.all(np.linalg.norm(pose, axis=1) <= np.pi + 1e-9)


def test_pose_is_the_transposed_rodrigues_matrix(rng: np.random.Generator) -> None:
    """RELION's A = rodrigues(pose).T (pyem's csparc2star), checked with scipy."""
    pose = Rotation.random(5000, random_state=7).as_rotvec()
    pose[:3] *= np.pi / np.linalg.norm(pose[:3], axis=1, keepdims=True)  # angle pi
    expected = np.swapaxes(Rotation.from_rotvec(pose).as_matrix(), -1, -2)
    np.testing.assert_allclose(
        euler_to_matrix(*rotvec_to_euler(pose).T), expected, atol=1e-9
    )
    np.testing.assert_allclose(rodrigues(pose), Rotation.from_rotvec(pose).as_matrix())
    np.testing.assert_allclose(rotvec_viewing_directions(pose), expected[:, 2, :])
    # a rotation by pi has two rotation vectors; either is the same matrix
    again = euler_to_rotvec(*rotvec_to_euler(pose).T)
    np.testing.assert_allclose(rodrigues(again), rodrigues(pose), atol=1e-9)
