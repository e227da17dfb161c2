"""``livestream star``: conversions read back with ``starfile``, round trips, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.cli.main import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["star", *argv, "--json"]) == 0
    summary: dict[str, object] = json.loads(capsys.readouterr().out)
    return summary


def test_downgrade_real_relion31(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = shared_data / "real" / "relion31.star"
    out = tmp_path / "r30.star"
    summary = _run(capsys, "downgrade", str(source), "--out", str(out))
    assert summary["n_out"] == 5
    assert "rlnImagePixelSize" in summary["dropped_labels"]  # type: ignore[operator]
    table = starfile.read(out)
    original = starfile.read(source)["particles"]
    assert isinstance(table, pd.DataFrame)  # one block, as RELION 3.0 writes
    np.testing.assert_allclose(
        table["rlnOriginX"], original["rlnOriginXAngst"] / 2.806, atol=1e-6
    )
    np.testing.assert_allclose(
        10000 * table["rlnDetectorPixelSize"] / table["rlnMagnification"], 2.806
    )
    assert (table["rlnVoltage"] == 300).all()
    assert table["rlnImageName"].tolist() == original["rlnImageName"].tolist()


def test_subset_and_halves_round_trip(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = shared_data / "real" / "relion31.star"
    original = starfile.read(source)
    a, b = tmp_path / "a.star", tmp_path / "b.star"
    _run(capsys, "subset", str(source), "--n", "3", "--seed", "4", "--out", str(a))
    _run(capsys, "subset", str(source), "--n", "3", "--seed", "4", "--out", str(b))
    sub = starfile.read(a)
    pd.testing.assert_frame_equal(sub["optics"], original["optics"])
    pd.testing.assert_frame_equal(sub["particles"], starfile.read(b)["particles"])
    rows = original["particles"].set_index("rlnImageName")
    chosen = sub["particles"].set_index("rlnImageName")
    pd.testing.assert_frame_equal(chosen, rows.loc[chosen.index])  # rows unchanged
    # all rows, any seed: the file again
    _run(capsys, "subset", str(source), "--n", "5", "--out", str(b))
    pd.testing.assert_frame_equal(starfile.read(b)["particles"], original["particles"])

    halves = tmp_path / "h.star"
    summary = _run(capsys, "split-halves", str(a), "--seed", "2", "--out", str(halves))
    assert (summary["half1"], summary["half2"]) == (2, 1)
    split = starfile.read(halves)["particles"]
    assert sorted(split["rlnRandomSubset"]) == [1, 1, 2]
    pd.testing.assert_frame_equal(
        split.drop(columns="rlnRandomSubset"),
        sub["particles"].drop(columns="rlnRandomSubset"),
    )


def test_from_dynamo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = np.zeros((4, 35))
    table[:, 0] = [1, 2, 3, 4]
    table[:, 3] = [1.0, -2.0, 0.5, 0.0]
    table[:, 6:9] = [[30, 60, 75], [-47.273, 1.1777, -132.3], [0, 0, 0], [10, 20, 30]]
    table[:, 19] = [1, 2, 2, 1]
    table[:, 21] = 1
    table[:, 23:26] = [[100, 200, 50], [10, 20, 30], [5, 5, 5], [1, 2, 3]]
    tbl = tmp_path / "a.tbl"
    np.savetxt(tbl, table, fmt="%g")
    vll = tmp_path / "t.vll"
    vll.write_text("tomo_a.mrc\ntomo_b.mrc\n")
    out = tmp_path / "p.star"
    main_args = [
        "from-dynamo",
        str(tbl),
        "--pixel-size-a",
        "2.5",
        "--vll",
        str(vll),
        "--voltage-kv",
        "200",
    ]
    summary = _run(capsys, *main_args, "--out", str(out))
    assert summary["n_out"] == 4
    star = starfile.read(out)
    particles = star["particles"]
    assert star["optics"]["rlnImagePixelSize"].tolist() == [2.5]
    # RELION refuses an optics group without these; the table has none
    assert star["optics"]["rlnVoltage"].tolist() == [200.0]
    assert star["optics"]["rlnSphericalAberration"].tolist() == [2.7]
    assert particles["rlnMicrographName"].tolist() == [
        "tomo_a.mrc",
        "tomo_b.mrc",
        "tomo_b.mrc",
        "tomo_a.mrc",
    ]
    np.testing.assert_allclose(particles["rlnOriginXAngst"], [-2.5, 5.0, -1.25, 0.0])
    np.testing.assert_allclose(
        particles.loc[1, ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(
            float
        ),
        [137.7, 1.1777, 42.727],
        atol=1e-6,
    )
    # what from-dynamo writes, downgrade reads
    r30 = tmp_path / "p30.star"
    _run(capsys, "downgrade", str(out), "--out", str(r30))
    np.testing.assert_allclose(starfile.read(r30)["rlnOriginX"], [-1.0, 2.0, -0.5, 0.0])


@pytest.mark.parametrize(
    ("argv", "text", "where"),
    [
        (
            ["downgrade"],
            "data_\nloop_\n_rlnImageName\n_rlnAngleRot\n1@a 1\n2@a 2 3\n",
            "line 6, column 3",
        ),
        (
            ["downgrade"],
            "data_\nloop_\n_rlnImageName\n_rlnAngleRot\n1@a 1\n",
            "data_optics",
        ),
        (
            ["subset", "--n", "1"],
            "data_\nloop_\n_rlnImageName\n_rlnFoo\n1@a 1\n",
            "line 4, column 2",
        ),
        (
            ["split-halves"],
            "data_\nloop_\n_rlnImageName\n_rlnAngleTilt\n1@a 1\n2@a NaN\n",
            "line 6, column 2",
        ),
        (["from-dynamo", "--pixel-size-a", "1"], "1 2 3\n", "at least 26"),
    ],
)
def test_bad_input_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    text: str,
    where: str,
) -> None:
    source = tmp_path / "in.star"
    source.write_text(text)
    command = [argv[0], str(source), *argv[1:], "--out", str(tmp_path / "o.star")]
    assert main(["star", *command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(source) in err
    assert where in err
    assert not (tmp_path / "o.star").exists()


def test_missing_input_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.star"
    assert main(["star", "subset", str(missing), "--n", "1", "--out", "x.star"]) == 2
    assert "does not exist" in capsys.readouterr().err
