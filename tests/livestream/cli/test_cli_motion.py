"""``livestream motion``: the same stage code, in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from livestream.cli.main import main
from tests.pipelines.motion_movies import make_movie

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def movies(tmp_path, rng):
    paths, truths = [], []
    for i in range(2):
        movie = make_movie(rng, n_frames=8, size=192)
        path = tmp_path / f"movie_{i}.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(movie.frames)
        paths.append(path)
        truths.append(-(movie.drift_px - movie.drift_px[0]))
    return paths, truths


def test_cli_json_reports_shifts_motion_and_outputs(tmp_path, movies, capsys):
    paths, truths = movies
    out = tmp_path / "out"
    argv = ["motion", *map(str, paths), "--out", str(out), "--pixel-size-a", "1.1"]
    argv += [
        "--dose-per-frame",
        "1.5",
        "--voltage-kv",
        "300",
        "--patches",
        "0",
        "0",
        "--json",
    ]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)  # exactly one JSON value
    assert document["failed"] == []
    assert len(document["items"]) == 2
    for record, path, truth in zip(document["items"], paths, truths, strict=True):
        shifts = np.array(record["shifts_px"])
        assert shifts.shape == (8, 2)
        assert np.sqrt(np.mean(np.sum((shifts - truth) ** 2, axis=1))) < 0.2
        steps = np.linalg.norm(np.diff(shifts, axis=0), axis=1)
        assert record["total_motion_a"] == pytest.approx(1.1 * steps.sum(), rel=1e-6)
        assert Path(record["output_path"]) == out / f"{path.stem}.mrc"
        assert Path(record["output_path"]).is_file()
        assert record["no_dw_path"] is None  # the plain sum only on request
    assert not list(out.glob("*_noDW.mrc"))


def test_cli_save_no_dw_writes_the_plain_sum(tmp_path, movies, capsys):
    paths, _ = movies
    out = tmp_path / "out"
    argv = ["motion", str(paths[0]), "--out", str(out), "--pixel-size-a", "1.1"]
    argv += ["--dose-per-frame", "1.5", "--patches", "0", "0"]
    assert main([*argv, "--save-no-dw", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["items"]
    assert Path(record["no_dw_path"]) == out / f"{paths[0].stem}_noDW.mrc"
    plain = mrcfile.read(record["no_dw_path"]).astype(np.float64)
    weighted = mrcfile.read(record["output_path"]).astype(np.float64)
    assert plain.shape == weighted.shape == (192, 192)
    # the same frames summed, with and without the dose weights: alike, not equal
    assert 0.5 < np.corrcoef(plain.ravel(), weighted.ravel())[0, 1] < 0.9999


def test_cli_reports_a_bad_movie_and_goes_on(tmp_path, movies, capsys):
    paths, _ = movies
    bad = tmp_path / "missing.mrc"
    bad.write_text("not an MRC movie")
    argv = [
        "motion",
        str(bad),
        str(paths[0]),
        "--out",
        str(tmp_path / "o"),
        "--json",
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "missing.mrc" in captured.err
    document = json.loads(captured.out)
    assert [item["movie"] for item in document["items"]] == [str(paths[0])]
    assert [failure["path"] for failure in document["failed"]] == [str(bad)]


def test_cli_runs_as_a_subprocess(tmp_path, movies):
    paths, _ = movies
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "livestream.cli.main", "motion", str(paths[0])]
    command += ["--out", str(tmp_path / "sub"), "--patches", "0", "0", "--json"]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    [record] = json.loads(completed.stdout)["items"]
    assert len(record["shifts_px"]) == 8
    assert Path(record["output_path"]).is_file()
