"""``livestream refine3d`` on a small simulated particle set without poses."""

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
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.reconstruct.conftest import simulate_particles

PX = 6.0
BOX = 32


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("project")
    truth = phantom_volume(BOX, PX, np.random.default_rng(41))
    data = simulate_particles(
        truth, 120, pixel_size_a=PX, rng=np.random.default_rng(42), snr=1.0
    )
    (folder / "Select").mkdir()
    star = write_posed_particles(
        folder / "Select" / "particles.star", data, stack_name="particles.mrcs"
    )
    blocks = starfile.read(star, always_dict=True)
    unposed = blocks["particles"].drop(
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    )
    unposed[["rlnOriginXAngst", "rlnOriginYAngst"]] = 0.0
    starfile.write(
        {"optics": blocks["optics"], "particles": unposed}, star, overwrite=True
    )
    ref = write_map(folder / "ref.mrc", truth, pixel_size_a=PX)
    return star, ref


def test_refine3d_writes_relions_files(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, ref = inputs
    out = tmp_path / "Refine3D"
    args = ["refine3d", str(star), "--ref", str(ref), "--out", str(out)]
    assert main([*args, "--max-iterations", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("map_path", "half1_path", "half2_path", "resolution_a", "seconds"):
        assert key in summary
    assert summary["iterations"] == 2
    assert 2 * PX <= summary["resolution_a"] < 60.0
    for name in (
        "run_it001_half1_class001.mrc",
        "run_it002_half2_class001.mrc",
        "run_class001.mrc",
        "run_half1_class001_unfil.mrc",
        "run_postprocess_masked.mrc",
    ):
        with mrcfile.open(out / name) as mrc:
            assert mrc.data.shape == (BOX, BOX, BOX)
            assert mrc.voxel_size.x == pytest.approx(PX)
    data = starfile.read(summary["data_star"], always_dict=True)["particles"]
    assert len(data) == 120
    assert set(data["rlnRandomSubset"]) == {1, 2}
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(data.columns)
    assert data["rlnAngleTilt"].std() > 10.0  # poses were found, not left at 0
    model = starfile.read(summary["model_star"], always_dict=True)
    fsc = model["model_class_1"]["rlnGoldStandardFsc"].to_numpy()
    assert len(fsc) == BOX // 2 + 1
    assert fsc[1] > 0.9
    assert model["model_general"]["rlnCurrentResolution"] == pytest.approx(
        summary["resolution_a"], rel=1e-3
    )


def test_a_reference_of_another_box_is_an_input_error(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, _ = inputs
    small = write_map(tmp_path / "small.mrc", np.zeros((24,) * 3), pixel_size_a=PX)
    args = ["refine3d", str(star), "--ref", str(small), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "small.mrc" in error
    assert "box" in error
    assert "(24, 24, 24)" in error


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile's, reading it
def test_an_unreadable_mask_is_an_input_error(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, ref = inputs
    mask = tmp_path / "mask.mrc"
    mask.write_bytes(b"not a map at all" * 100)
    args = ["refine3d", str(star), "--ref", str(ref), "--out", str(tmp_path / "o")]
    assert main([*args, "--mask", str(mask)]) == 2
    error = capsys.readouterr().err.strip()
    assert "mask.mrc" in error
