"""``livestream reconstruct``, ``mask`` and ``postprocess`` on a simulated particle set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.cli.main import main
from pipelines.io.outputs import write_mrc
from pipelines.reconstruct import fourier_shell_correlation, write_posed_particles
from pipelines.reconstruct.geometry import gridding_correction
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.reconstruct.conftest import simulate_particles

PX = 3.0


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return phantom_volume(32, PX, np.random.default_rng(31))


@pytest.fixture(scope="module")
def particles_star(truth: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    data = simulate_particles(
        truth, 1200, pixel_size_a=PX, rng=np.random.default_rng(32), snr=1.0
    )
    (folder / "Extract").mkdir()
    data = replace(data, subset=np.where(np.arange(data.n_particles) < 600, 1, 2))
    return write_posed_particles(
        folder / "particles.star", data, stack_name="Extract/particles.mrcs"
    )


def test_reconstruct_mask_postprocess(
    particles_star: Path,
    truth: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "Reconstruct"
    assert main(["reconstruct", str(particles_star), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("map_path", "half1_path", "half2_path"):
        with mrcfile.open(summary[key]) as mrc:
            assert mrc.data.shape == (32, 32, 32)
            assert mrc.voxel_size.x == pytest.approx(PX)
            assert int(mrc.header.ispg) == 1  # a volume, not a stack
            assert float(mrc.header.origin.x) == 0.0
    assert summary["n_half1"] == summary["n_half2"] == 600
    assert 6.0 <= summary["fsc_resolution_a"] < 12.0
    assert summary["seconds"] > 0
    with mrcfile.open(summary["map_path"]) as mrc:
        full = np.asarray(mrc.data)
    assert fourier_shell_correlation(full, truth, PX).crossing_a(0.5) < 12.0
    fsc = starfile.read(out / "run_fsc.star")
    assert list(fsc.columns) == [
        "rlnSpectralIndex",
        "rlnResolution",
        "rlnAngstromResolution",
        "rlnFourierShellCorrelation",
    ]
    assert len(fsc) == 17
    # the FSC written is that of the half maps written, which carry RELION's mask
    # outside the box's sphere: beyond radius 16 + 3 px one background value (times
    # the gridding correction, applied after the mask as RELION does)
    halves = [mrcfile.read(summary[k]) for k in ("half1_path", "half2_path")]
    np.testing.assert_allclose(
        fsc["rlnFourierShellCorrelation"],
        fourier_shell_correlation(*halves, PX).fsc,
        atol=1e-3,
    )
    for half in halves:
        corner = (half / gridding_correction(32, 64))[:3, :3, :3]
        assert np.ptp(corner) < 1e-5 * np.abs(half).max()
    for png in ("run_fsc.png", "run_central_slices.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    mask_path = tmp_path / "mask.mrc"
    args = ["mask", summary["map_path"], "--out", str(mask_path), "--auto"]
    assert main([*args, "--lowpass-a", "12", "--json"]) == 0
    mask_summary = json.loads(capsys.readouterr().out)
    assert 0.02 < mask_summary["volume_fraction"] < 0.6
    with mrcfile.open(mask_path) as mrc:
        assert mrc.voxel_size.x == pytest.approx(PX)
        assert float(mrc.data.max()) == 1.0

    post = tmp_path / "PostProcess"
    code = main(
        [
            "postprocess",
            summary["half1_path"],
            summary["half2_path"],
            "--mask",
            str(mask_path),
            "--out",
            str(post),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert 6.0 <= result["resolution_a"] <= summary["fsc_resolution_a"] + 0.5
    assert np.isfinite(result["bfactor_a2"])
    blocks = starfile.read(post / "postprocess_fsc.star", always_dict=True)
    assert "rlnFourierShellCorrelationCorrected" in blocks["fsc"].columns
    assert (post / "postprocess_masked.mrc").is_file()


def test_box_and_symmetry_options(
    particles_star: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["reconstruct", str(particles_star), "--out", str(tmp_path), "--json"]
    assert main([*args, "--box-px", "24", "--sym", "c1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["box_px"] == 24
    assert summary["symmetry"] == "C1"
    with mrcfile.open(summary["map_path"]) as mrc:
        assert mrc.data.shape == (24, 24, 24)
    assert main([*args, "--sym", "X3"]) == 2
    assert "symmetry" in capsys.readouterr().err


def test_missing_inputs_exit_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.star"
    assert main(["reconstruct", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(missing) in err
    half = tmp_path / "half.mrc"
    write_mrc(
        half, np.zeros((8, 8, 8)), pixel_size_a=1.0, float16=False, is_stack=False
    )
    absent_mask = tmp_path / "mask.mrc"
    code = main(["postprocess", str(half), str(half), "--mask", str(absent_mask)])
    assert code == 2
    assert str(absent_mask) in capsys.readouterr().err
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "livestream.cli.main",
            "mask",
            str(tmp_path / "no.mrc"),
            "--out",
            str(tmp_path / "m.mrc"),
            "--auto",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert process.returncode == 2
    assert "no.mrc" in process.stderr
