"""Point-group symmetry operators in RELION's conventions (``--sym``).

Each group is generated, as RELION's ``src/symmetries.cpp`` does, from rotation axes
(``rot_axis n x y z``: an ``n``-fold axis along ``(x, y, z)``) and closed under
products:

=========  =========================================================================
``C<n>``   ``n``-fold axis along z
``D<n>``   ``n``-fold axis along z, 2-fold along x
``T``      3-fold along z, 2-fold along (0, 0.816496, 0.577350)
``O``      3-fold along (1, 1, 1)/sqrt(3), 4-fold along z
``I1``     2-fold along x, 5-fold along (0.850651, 0, -0.525731), 3-fold along
           (0.934172, 0.356822, 0)
``I2``     2-fold along z, 5-fold along (0.525731, 0, 0.850651), 3-fold along
           (0, 0.356822, 0.934172); ``I`` is ``I2``, as in RELION
``I3``     2-fold along (-0.525731, 0, 0.850651), 5-fold along z, 3-fold along
           (-0.491123, 0.356822, 0.794654)
``I4``     2-fold along (0.525731, 0, 0.850651), 5-fold along (0.894427, 0, 0.447214),
           3-fold along (0.491123, 0.356822, 0.794654)
=========  =========================================================================

The operators are rotation matrices ``(|G|, 3, 3)`` acting on volume coordinates
[x, y, z]; the identity comes first.  A map is symmetric under the group when
``V(S x) = V(x)`` for every operator ``S``.
"""

from __future__ import annotations

import re

import numpy as np

from pipelines.errors import StageInputError

__all__ = ["symmetry_matrices"]

_AXES: dict[str, tuple[tuple[int, tuple[float, float, float]], ...]] = {
    "T": ((3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))),
    "O": ((3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))),
    "I1": (
        (2, (1.0, 0.0, 0.0)),
        (5, (0.85065080702670, 0.0, -0.5257311142635)),
        (3, (0.9341723640, 0.3568220765, 0.0)),
    ),
    "I2": (
        (2, (0.0, 0.0, 1.0)),
        (5, (0.525731114, 0.0, 0.850650807)),
        (3, (0.0, 0.356822076, 0.934172364)),
    ),
    "I3": (
        (2, (-0.5257311143, 0.0, 0.8506508070)),
        (5, (0.0, 0.0, 1.0)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
    "I4": (
        (2, (0.5257311143, 0.0, 0.8506508070)),
        (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
}
_ORDERS = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}
_TOLERANCE = 1e-4


def _axis_rotation(fold: int, axis: tuple[float, float, float]) -> np.ndarray:
    """The rotation by ``360 / fold`` degrees about ``axis`` (Rodrigues)."""
    u = np.asarray(axis, dtype=np.float64)
    u /= np.linalg.norm(u)
    angle = 2.0 * np.pi / fold
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    rotation: np.ndarray = (
        np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)
    )
    return rotation


def _closure(generators: list[np.ndarray], limit: int) -> np.ndarray:
    """Every product of ``generators``, identity first (breadth-first)."""
    elements = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for element in frontier:
            for generator in generators:
                candidate = generator @ element
                if not any(
                    np.abs(candidate - known).max() < _TOLERANCE for known in elements
                ):
                    elements.append(candidate)
                    new.append(candidate)
        if len(elements) > limit:
            break
        frontier = new
    return np.stack(elements)


def _orthonormalise(matrices: np.ndarray) -> np.ndarray:
    """The nearest rotations (polar decomposition): removes the axes' rounding."""
    u, _, vt = np.linalg.svd(matrices)
    return np.asarray(u @ vt)


def symmetry_matrices(symmetry: str) -> np.ndarray:
    """The rotations ``(|G|, 3, 3)`` of ``C<n>``, ``D<n>``, ``T``, ``O``, ``I``, ``I1``-``I4``.

    Case-insensitive; the identity is first.  Raises :class:`StageInputError` for
    any other symbol (RELION's groups with mirrors are not reconstructable from
    single particles of one hand and are not offered).
    """
    symbol = symmetry.strip().upper()
    if symbol == "I":
        symbol = "I2"
    match = re.fullmatch(r"([CD])(\d+)", symbol)
    if match and int(match.group(2)) >= 1:
        order = int(match.group(2))
        generators = [_axis_rotation(order, (0.0, 0.0, 1.0))]
        if match.group(1) == "D":
            generators.append(_axis_rotation(2, (1.0, 0.0, 0.0)))
        expected = order * (2 if match.group(1) == "D" else 1)
    elif symbol in _AXES:
        generators = [_axis_rotation(fold, axis) for fold, axis in _AXES[symbol]]
        expected = _ORDERS[symbol]
    else:
        raise StageInputError(
            "<argument>",
            "symmetry",
            symmetry,
            "expected C<n>, D<n>, T, O, I or I1-I4",
        )
    if expected == 1:
        return np.eye(3)[None]
    group = _closure(generators, expected)
    if len(group) != expected:  # pragma: no cover - the axes above are RELION's
        raise StageInputError(
            "<argument>", "symmetry", symmetry, f"closure gave {len(group)} operators"
        )
    return _orthonormalise(group)
