"""``livestream plan3d`` on a small simulated set: the job folders it writes
agree with each other and with its ``--json``; bad arguments exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.cli.main import main
from pipelines.reconstruct import write_posed_particles
from pipelines.simulate.conformations import simulate_mixture
from pipelines.simulate.volumes import phantom_volume

PX = 10.0
BOX = 16


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 particles of one phantom and 20 of noise, the STAR without poses."""
    folder = tmp_path_factory.mktemp("project")
    whole = phantom_volume(BOX, PX, np.random.default_rng(41))
    data, _ = simulate_mixture(
        [whole, np.zeros_like(whole)],
        [80, 20],
        pixel_size_a=PX,
        snr=2.0,
        rng=np.random.default_rng(2),
    )
    path = write_posed_particles(
        folder / "particles.star", data, stack_name="particles.mrcs"
    )
    blocks = starfile.read(path, always_dict=True)
    unposed = blocks["particles"].drop(
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnRandomSubset"]
    )
    starfile.write(
        {"optics": blocks["optics"], "particles": unposed}, path, overwrite=True
    )
    return path


@pytest.mark.slow  # the whole plan, small: about 30 s on a loaded machine
def test_plan3d_writes_its_jobs(
    star: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "Plan3D"
    fast = ["--classes", "1", "--mini-batches", "4", "--iterations", "2"]
    fast += ["--angular-step", "15", "--subset", "60", "--seed", "3"]
    assert main(["plan3d", str(star), "--out", str(out), *fast, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "plan3d.json").read_text())
    assert summary["subset"] == 60
    assert summary["n_particles"] == 100
    stages = summary["stages"]
    assert [s["stage"] for s in stages[:2]] == ["initial_model_k1", "class3d"]
    assert Path(stages[0]["job"]) == out / "InitialModel" / "job001"
    assert (out / "InitialModel" / "job001" / "run_it004_class001.mrc").is_file()
    assert (out / "InitialModel" / "job001" / "run_checkpoint.npz").is_file()
    # one ab-initio map and the junk decoy: two classes, the decoy never refined
    classes = summary["classes"]
    assert len(classes) == 2
    assert classes[1]["decision"] == "decoy"
    assert sum(c["count"] for c in classes) == 100
    class3d = out / "Class3D" / "job002"
    data = starfile.read(class3d / "run_it002_data.star", always_dict=True)
    counts = np.bincount(data["particles"]["rlnClassNumber"], minlength=3)[1:]
    assert counts.tolist() == [c["count"] for c in classes]
    # the split: a consensus refinement of the kept particles, then their
    # classification at its poses (two classes), each class refined
    consensus, split = stages[2:4]
    assert consensus["stage"] == "consensus_refine3d"
    assert Path(consensus["job"]) == out / "Refine3D" / "job003"
    kept = sum(c["count"] for c in classes if c["refined_with"] is not None)
    assert consensus["n_particles"] == summary["split"]["n_particles"] == kept
    assert split["stage"] == "class3d_skip_align"
    assert Path(split["job"]) == out / "Class3D" / "job004"
    assert sum(split["class_counts"]) == kept
    skip = starfile.read(
        out / "Class3D" / "job004" / f"run_it{split['iterations']:03d}_data.star",
        always_dict=True,
    )["particles"]
    posed = starfile.read(
        out / "Refine3D" / "job003" / "run_data.star", always_dict=True
    )["particles"]
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):  # poses kept
        np.testing.assert_allclose(skip[column], posed[column], atol=1e-3)
    refined = stages[4:]
    assert refined
    assert [s["class"] for s in refined] == summary["chosen_classes"]
    assert [s["resolution_a"] for s in refined] == summary["resolution_a"]
    for number, stage in enumerate(refined, start=5):  # a loop over Refine3D jobs
        job = out / "Refine3D" / f"job{number:03d}"
        assert Path(stage["job"]) == job
        assert stage["classes_of"] == "class3d_skip_align"
        table = starfile.read(job / "run_data.star", always_dict=True)["particles"]
        count = split["class_counts"][stage["class"] - 1]
        assert len(table) == stage["n_particles"] == count
        with mrcfile.open(job / "run_class001.mrc") as mrc:
            assert mrc.data.shape == (BOX, BOX, BOX)
            assert mrc.voxel_size.x == pytest.approx(PX)


@pytest.mark.parametrize(
    ("extra", "field"),
    [(["--sym", "Q7"], "symmetry"), (["--classes", "2", "0"], "classes")],
)
def test_plan3d_bad_arguments_exit_2(
    star: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    field: str,
) -> None:
    assert main(["plan3d", str(star), "--out", str(tmp_path / "P"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert field in err[0].lower()
    assert not (tmp_path / "P").exists()
