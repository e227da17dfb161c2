"""Dynamo tables: the angle conversion gives the same rotation, rows are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.particlesets import (
    dynamo_table_to_star,
    dynamo_to_relion_angles,
    read_dynamo_table,
)
from pipelines.reconstruct.geometry import euler_to_matrix


def _rz(deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(deg)
    m = np.zeros((*a.shape, 3, 3))
    m[..., 0, 0] = m[..., 1, 1] = np.cos(a)
    m[..., 0, 1], m[..., 1, 0] = -np.sin(a), np.sin(a)
    m[..., 2, 2] = 1.0
    return m


def _rx(deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(deg)
    m = np.zeros((*a.shape, 3, 3))
    m[..., 1, 1] = m[..., 2, 2] = np.cos(a)
    m[..., 1, 2], m[..., 2, 1] = -np.sin(a), np.sin(a)
    m[..., 0, 0] = 1.0
    return m


def _dynamo_matrix(
    tdrot: np.ndarray, tilt: np.ndarray, narot: np.ndarray
) -> np.ndarray:
    """Dynamo's rotation of (tdrot, tilt, narot): about z, the new x, the new z."""
    return _rz(narot) @ _rx(tilt) @ _rz(tdrot)


def test_dynamo_matrix_matches_its_documented_value() -> None:
    # Dynamo's own matrix for (30, 60, 75), as its documentation prints it
    expected = [
        [-0.0173, -0.5477, 0.8365],
        [0.9012, -0.3709, -0.2241],
        [0.4330, 0.7500, 0.5000],
    ]
    got = _dynamo_matrix(np.array(30.0), np.array(60.0), np.array(75.0))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_same_rotation_for_many_random_angles() -> None:
    rng = np.random.default_rng(5)
    tdrot, narot = rng.uniform(-360, 360, (2, 20000))
    tilt = rng.uniform(-180, 180, 20000)
    relion = dynamo_to_relion_angles(tdrot, tilt, narot)
    assert relion.shape == (20000, 3)
    a = euler_to_matrix(relion[:, 0], relion[:, 1], relion[:, 2])
    # RELION's matrix maps the reference to the particle: Dynamo's, transposed
    d = _dynamo_matrix(tdrot, tilt, narot)
    np.testing.assert_allclose(a, np.swapaxes(d, -1, -2), atol=1e-12)
    assert np.all((relion[:, [0, 2]] >= -180) & (relion[:, [0, 2]] < 180))


def test_known_equivalent_pair() -> None:
    # a pair known to give the same reconstruction in Dynamo and RELION
    got = dynamo_to_relion_angles(
        np.array(-47.2730), np.array(1.1777), np.array(-132.3000)
    )
    np.testing.assert_allclose(got, [137.7000, 1.1777, 42.7270], atol=1e-9)


def _write_table(path: Path, table: np.ndarray) -> Path:
    path.write_text("\n".join(" ".join(f"{v:g}" for v in row) for row in table) + "\n")
    return path


def _table(n: int, rng: np.random.Generator) -> np.ndarray:
    table = np.zeros((n, 35))
    table[:, 0] = np.arange(1, n + 1)
    table[:, 3:6] = rng.uniform(-3, 3, (n, 3))
    table[:, 6:9] = rng.uniform(-180, 180, (n, 3))
    table[:, 19] = rng.integers(1, 3, n)
    table[:, 21] = 1
    table[:, 23:26] = rng.uniform(0, 500, (n, 3))
    return table


def test_table_to_star_columns(tmp_path: Path) -> None:
    table = _table(50, np.random.default_rng(1))
    read, lines = read_dynamo_table(_write_table(tmp_path / "a.tbl", table))
    np.testing.assert_allclose(read, table, rtol=1e-5)
    assert lines.tolist() == list(range(1, 51))
    optics, particles = dynamo_table_to_star(
        read, pixel_size_a=2.0, tomogram_names=["t1.mrc", "t2.mrc"]
    )
    assert optics["rlnImagePixelSize"].tolist() == [2.0]
    np.testing.assert_allclose(particles["rlnCoordinateZ"], read[:, 25])
    # coordinate - origin (in px) = box centre + shift = the particle's centre
    centre = particles["rlnCoordinateX"] - particles["rlnOriginXAngst"] / 2.0
    np.testing.assert_allclose(centre, read[:, 23] + read[:, 3])
    assert set(particles["rlnMicrographName"]) <= {"t1.mrc", "t2.mrc"}
    assert particles["rlnParticleNumber"].tolist() == list(range(1, 51))


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        ((2, None, "7"), "line 3, column 35"),  # one value too many
        ((4, 33, None), "line 5, column 34"),  # the last value missing
        ((1, 1, "nan"), "line 2, column 2"),
        ((3, 1, "x"), "line 4, column 2"),
    ],
)
def test_bad_rows_are_named(
    tmp_path: Path, mutate: tuple[int, int | None, str | None], where: str
) -> None:
    table = _table(6, np.random.default_rng(2))
    rows = [[f"{v:g}" for v in row[:-1]] for row in table]  # 34 columns
    row, column, value = mutate
    if column is None:
        rows[row].append(str(value))
    elif value is None:
        del rows[row][column:]
    else:
        rows[row][column] = value
    path = tmp_path / "bad.tbl"
    path.write_text("\n".join(" ".join(r) for r in rows) + "\n")
    with pytest.raises(StageInputError) as err:
        read_dynamo_table(path)
    assert str(path) in str(err.value)
    assert where in str(err.value)


def test_too_few_columns_and_tomogram_outside_the_list(tmp_path: Path) -> None:
    path = tmp_path / "short.tbl"
    path.write_text("1 1 1 0 0 0 10 20 30\n")
    with pytest.raises(StageInputError, match="at least 26"):
        read_dynamo_table(path)
    table = _table(3, np.random.default_rng(3))
    table[1, 19] = 4
    with pytest.raises(StageInputError, match="row 2, column 20"):
        dynamo_table_to_star(table, pixel_size_a=1.0, tomogram_names=["a", "b"])
