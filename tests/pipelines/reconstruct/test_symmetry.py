"""Point groups: closure, order, proper rotations, RELION's axes."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.reconstruct import symmetry_matrices

GROUPS = {
    "C1": 1,
    "C2": 2,
    "C7": 7,
    "D1": 2,
    "D2": 4,
    "D7": 14,
    "T": 12,
    "O": 24,
    "I": 60,
    "I1": 60,
    "I2": 60,
    "I3": 60,
    "I4": 60,
}


def _index(ops: np.ndarray, matrix: np.ndarray) -> int:
    distance = np.abs(ops - matrix).max(axis=(1, 2))
    assert distance.min() < 1e-6, "product is not in the group"
    return int(distance.argmin())


@pytest.mark.parametrize(("symbol", "order"), GROUPS.items())
def test_each_group_is_a_group_of_proper_rotations(symbol: str, order: int) -> None:
    ops = symmetry_matrices(symbol)
    assert ops.shape == (order, 3, 3)
    np.testing.assert_allclose(ops[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(ops), 1.0, atol=1e-9)
    np.testing.assert_allclose(
        ops @ ops.transpose(0, 2, 1), np.broadcast_to(np.eye(3), ops.shape), atol=1e-9
    )
    # closure: every product is an element, and each row of the table is a permutation
    table = np.array([[_index(ops, a @ b) for b in ops] for a in ops])
    for row in table:
        assert sorted(row) == list(range(order))
    # the inverse of each element is in the group
    for a in ops:
        _index(ops, a.T)


def _has_axis(ops: np.ndarray, fold: int, axis: tuple[float, float, float]) -> bool:
    u = np.asarray(axis) / np.linalg.norm(axis)
    angle = 2 * np.pi / fold
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return bool(np.abs(ops - rotation).max(axis=(1, 2)).min() < 1e-5)


def test_axes_follow_relion() -> None:
    assert _has_axis(symmetry_matrices("C5"), 5, (0, 0, 1))
    assert _has_axis(symmetry_matrices("D3"), 2, (1, 0, 0))
    assert _has_axis(symmetry_matrices("T"), 3, (0, 0, 1))
    assert _has_axis(symmetry_matrices("O"), 4, (0, 0, 1))
    assert _has_axis(symmetry_matrices("O"), 3, (1, 1, 1))
    assert _has_axis(symmetry_matrices("I"), 2, (0, 0, 1))  # I = I2
    assert _has_axis(symmetry_matrices("I1"), 2, (1, 0, 0))
    assert _has_axis(symmetry_matrices("I3"), 5, (0, 0, 1))
    assert not _has_axis(symmetry_matrices("I1"), 5, (0, 0, 1))
    phi = (1 + 5**0.5) / 2
    assert _has_axis(symmetry_matrices("I2"), 5, (1, 0, phi))
    np.testing.assert_allclose(symmetry_matrices("i"), symmetry_matrices("I2"))


@pytest.mark.parametrize("symbol", ["C0", "X5", "", "D", "I5", "T2"])
def test_unknown_symbols_are_refused(symbol: str) -> None:
    with pytest.raises(StageInputError, match="symmetry"):
        symmetry_matrices(symbol)
