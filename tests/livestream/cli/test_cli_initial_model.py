"""``livestream initial-model`` on a small simulated particle set without poses."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.cli.main import main
from pipelines.class3d.align import rotate_map
from pipelines.reconstruct import symmetry_matrices, write_posed_particles
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.reconstruct.conftest import simulate_particles

PX = 6.0
SMALL_BOX = 24


def _unposed_star(folder: Path, box_px: int, n_particles: int) -> Path:
    """``n_particles`` of a phantom at ``box_px``, written without their poses."""
    truth = phantom_volume(box_px, PX, np.random.default_rng(41))
    data = simulate_particles(
        truth, n_particles, pixel_size_a=PX, rng=np.random.default_rng(42), snr=1.0
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
    return star


@pytest.fixture(scope="module")
def particles_star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _unposed_star(tmp_path_factory.mktemp("project"), 32, 240)


@pytest.fixture(scope="module")
def small_particles_star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files and fields are checked here, not the map: box 24, 120 particles."""
    return _unposed_star(tmp_path_factory.mktemp("small"), SMALL_BOX, 120)


@pytest.mark.slow  # 2 starts x 2 mini-batches, a classification iteration: ~25 s loaded
def test_initial_model_writes_relions_files(
    small_particles_star: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--classes 2``: VDAM with two classes from the better of two starts,
    finished by one iteration of 3D classification over every particle."""
    out = tmp_path / "InitialModel"
    star = str(small_particles_star)
    args = ["initial-model", star, "--classes", "2", "--out", str(out)]
    more = ["--mini-batches", "2", "--starts", "2", "--class-iterations", "1"]
    assert main([*args, *more, "--seed", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["starts"] == 2
    [scores] = summary["start_scores"]  # one round: two starts, one kept
    assert scores[summary["chosen_start"] - 1] == max(scores)
    assert summary["class_iterations"] == 1
    assert summary["mini_batches"] == 2
    assert [Path(p).name for p in summary["maps"]] == [
        "run_it002_class001.mrc",
        "run_it002_class002.mrc",
    ]
    for path in summary["maps"]:
        with mrcfile.open(path) as mrc:
            assert mrc.data.shape == (SMALL_BOX,) * 3
            assert mrc.voxel_size.x == pytest.approx(PX)
    assert sum(summary["class_fractions"]) == pytest.approx(1.0, abs=1e-3)
    assert len(summary["resolution_a"]) == 2
    assert all(2 * PX <= r < SMALL_BOX * PX for r in summary["resolution_a"])
    assert summary["seconds"] > 0
    data = starfile.read(out / "run_it002_data.star", always_dict=True)["particles"]
    assert len(data) == 120
    assert set(data["rlnClassNumber"]) <= {1, 2}
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        assert np.isfinite(data[column]).all()
    model = starfile.read(out / "run_it002_model.star", always_dict=True)
    assert list(model["model_classes"]["rlnReferenceImage"]) == [
        "run_it002_class001.mrc",
        "run_it002_class002.mrc",
    ]
    assert (out / "run_it002_class001_slices.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "run_checkpoint.npz").is_file()


def test_a_missing_input_and_a_bad_group_exit_2(
    particles_star: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    missing = ["initial-model", str(tmp_path / "none.star"), "--out", str(out)]
    assert main(missing) == 2
    assert "none.star" in capsys.readouterr().err
    bad = ["initial-model", str(particles_star), "--out", str(out), "--sym", "Q7"]
    assert main(bad) == 2
    assert "Q7" in capsys.readouterr().err
    for flag, value in (("--starts", "0"), ("--class-iterations", "0")):
        bad = ["initial-model", str(particles_star), "--out", str(out), flag, value]
        assert main([*bad, "--classes", "2"]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert "'starts'" in line or "'iterations'" in line, line
        assert line.endswith("must be >= 1"), line
    assert not out.exists()


@pytest.mark.slow  # one mini-batch, the axis search and a pass: ~20 s loaded
def test_a_symmetry_is_found_and_applied_after_c1(
    particles_star: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "InitialModel"
    args = ["initial-model", str(particles_star), "--out", str(out), "--sym", "C2"]
    assert main([*args, "--mini-batches", "1", "--starts", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["symmetry"] == "C2"
    with mrcfile.open(summary["maps"][0]) as mrc:
        volume = np.asarray(mrc.data)
    (turn,) = [op for op in symmetry_matrices("C2") if not np.allclose(op, np.eye(3))]
    turned = rotate_map(volume, turn)
    assert np.corrcoef(volume.ravel(), turned.ravel())[0, 1] > 0.95
    model = starfile.read(out / "run_it001_model.star", always_dict=True)
    assert model["model_general"]["rlnSymmetryGroup"] == "C2"
