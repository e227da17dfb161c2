"""``livestream class3d`` on a small simulated set of two conformations."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.cli.main import main
from pipelines.reconstruct import write_posed_particles
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.conformations import simulate_mixture, without_region
from pipelines.simulate.volumes import phantom_volume

PX = 6.0
BOX = 32


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The particles STAR (no poses) and the two conformations' maps."""
    folder = tmp_path_factory.mktemp("project")
    whole = phantom_volume(BOX, PX, np.random.default_rng(41))
    less = without_region(whole, distance_px=5.0, radius_px=5.0)
    data, _ = simulate_mixture(
        [whole, less], [40, 40], pixel_size_a=PX, snr=1.0, rng=np.random.default_rng(2)
    )
    (folder / "Select").mkdir()
    star = write_posed_particles(
        folder / "Select" / "particles.star", data, stack_name="particles.mrcs"
    )
    blocks = starfile.read(star, always_dict=True)
    unposed = blocks["particles"].drop(
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnRandomSubset"]
    )
    starfile.write(
        {"optics": blocks["optics"], "particles": unposed}, star, overwrite=True
    )
    refs = [
        write_map(folder / f"ref{k}.mrc", volume, pixel_size_a=PX)
        for k, volume in enumerate((whole, less), start=1)
    ]
    return star, refs[0], refs[1]


def test_class3d_writes_relions_files(
    inputs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, ref1, ref2 = inputs
    out = tmp_path / "Class3D"
    args = ["class3d", str(star), "--refs", str(ref1), str(ref2), "--out", str(out)]
    fast = ["--iterations", "2", "--angular-step", "30", "--ini-high", "30"]
    assert main([*args, *fast, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {
        "maps",
        "class_fractions",
        "class_counts",
        "resolution_a",
        "iterations",
        "changed_fraction",
        "data_star",
        "model_star",
        "seconds",
    }
    assert summary["iterations"] == 2
    assert [Path(p).name for p in summary["maps"]] == [
        "run_it002_class001.mrc",
        "run_it002_class002.mrc",
    ]
    for path in summary["maps"]:
        with mrcfile.open(path) as mrc:
            assert mrc.data.shape == (BOX, BOX, BOX)
            assert mrc.voxel_size.x == pytest.approx(PX)
    assert sum(summary["class_fractions"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(summary["class_counts"]) == 80
    assert summary["seconds"] > 0
    data = starfile.read(out / "run_it002_data.star", always_dict=True)
    particles = data["particles"]
    assert len(particles) == 80
    assert set(particles["rlnClassNumber"]) <= {1, 2}
    assert particles["rlnMaxValueProbDistribution"].between(0, 1).all()
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        assert np.isfinite(particles[column]).all()
    assert "rlnVoltage" in data["optics"]
    model = starfile.read(out / "run_it002_model.star", always_dict=True)
    classes = model["model_classes"]
    assert list(classes["rlnReferenceImage"]) == [
        "run_it002_class001.mrc",
        "run_it002_class002.mrc",
    ]
    assert classes["rlnClassDistribution"].sum() == pytest.approx(1.0, abs=1e-3)
    assert (out / "run_checkpoint.npz").is_file()


def test_a_map_of_another_box_exits_2(
    inputs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, ref1, _ = inputs
    small = write_map(tmp_path / "small.mrc", np.zeros((24, 24, 24)), pixel_size_a=PX)
    argv = ["class3d", str(star), "--refs", str(ref1), str(small), "--out"]
    assert main([*argv, str(tmp_path / "o"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"livestream class3d: {small}: field 'box'")
    assert "(24, 24, 24)" in line
    assert "32" in line


def test_a_map_of_another_pixel_size_and_a_wrong_count_exit_2(
    inputs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, ref1, ref2 = inputs
    coarse = write_map(tmp_path / "coarse.mrc", np.zeros((BOX,) * 3), pixel_size_a=9.0)
    out = str(tmp_path / "o")
    assert main(["class3d", str(star), "--refs", str(coarse), "--out", out]) == 2
    assert f"{coarse}: field 'voxel size' has value 9.0" in capsys.readouterr().err
    argv = ["class3d", str(star), "--refs", str(ref1), str(ref2), "--classes", "3"]
    assert main([*argv, "--out", out]) == 2
    assert "classes" in capsys.readouterr().err


def test_an_unreadable_map_exits_2(
    inputs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, _, _ = inputs
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"not an MRC file at all" * 10)
    argv = ["class3d", str(star), "--refs", str(junk), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"livestream class3d: {junk}: ")


def test_skip_align_without_poses_exits_2_naming_the_column(
    inputs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, ref1, _ = inputs  # the fixture's STAR has no angles
    argv = ["class3d", str(star), "--refs", str(ref1), "--classes", "2"]
    assert main([*argv, "--skip-align", "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"livestream class3d: {star}: field 'rlnAngleRot'")
    assert not (tmp_path / "o").exists()


def test_skip_align_keeps_the_poses_and_splits_the_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = phantom_volume(BOX, PX, np.random.default_rng(41))
    less = without_region(whole, distance_px=5.0, radius_px=5.0)
    data, truth = simulate_mixture(
        [whole, less],
        [150, 150],
        pixel_size_a=PX,
        snr=1.0,
        rng=np.random.default_rng(3),
    )
    star = write_posed_particles(
        tmp_path / "particles.star", data, stack_name="particles.mrcs"
    )
    ref = write_map(tmp_path / "consensus.mrc", whole, pixel_size_a=PX)
    out = tmp_path / "Class3D"
    argv = ["class3d", str(star), "--refs", str(ref), "--classes", "2", "--skip-align"]
    assert main([*argv, "--starts", "2", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skip_align"] is True
    assert len(summary["start_log_likelihoods"]) == 2
    assert summary["chosen_start"] in (0, 1)
    assert sum(summary["class_counts"]) == 300
    table = starfile.read(summary["data_star"], always_dict=True)["particles"]
    given = starfile.read(star, always_dict=True)["particles"]
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        np.testing.assert_allclose(table[column], given[column], atol=1e-3)
    same = float(np.mean(table["rlnClassNumber"].to_numpy() - 1 == truth))
    assert max(same, 1.0 - same) >= 0.9
