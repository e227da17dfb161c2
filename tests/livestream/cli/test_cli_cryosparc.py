"""``livestream export-cryosparc``, ``import-cryosparc`` and ``rebalance`` on a
constructed project folder (simulated posed particles, real MRC headers) and on the
real cryoSPARC ``.cs``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from livestream.cli.main import main
from pipelines.extraction.particles_star import (
    read_particles_star,
    write_particles_star,
)
from pipelines.io.outputs import write_mrc, write_star
from pipelines.reconstruct import (
    fourier_shell_correlation,
    read_posed_particles,
    write_posed_particles,
)
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.reconstruct.conftest import simulate_particles

PX = 3.0
N = 400
MICROGRAPHS = {  # name -> (ny, nx)
    "MotionCorr/job002/Movies/mic_001.mrc": (96, 128),
    "MotionCorr/job002/Movies/mic_002.mrc": (100, 120),
}


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return phantom_volume(32, PX, np.random.default_rng(41))


@pytest.fixture(scope="module")
def project(truth: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extract/job006/particles.star with poses, coordinates and scores; two
    micrographs; Class2D snapshots run_data, run_it001_data and run_it003_data;
    CtfFind/job003/micrographs_ctf.star."""
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(42)
    data = simulate_particles(truth, N, pixel_size_a=PX, rng=rng)
    data = replace(data, subset=np.where(np.arange(N) < N // 2, 1, 2))
    scratch = write_posed_particles(
        root / "scratch.star", data, stack_name="Extract/job006/particles.mrcs"
    )
    optics, table = read_particles_star(scratch)
    names = np.array(sorted(MICROGRAPHS))[np.arange(N) % 2]
    table["rlnMicrographName"] = names
    table["rlnCoordinateX"] = rng.uniform(16, 100, N).round(1)
    table["rlnCoordinateY"] = rng.uniform(16, 80, N).round(1)
    table["rlnAutopickFigureOfMerit"] = rng.normal(size=N)
    optics["rlnMicrographOriginalPixelSize"] = PX
    write_particles_star(root / "Extract/job006/particles.star", optics, table)
    for name, shape in MICROGRAPHS.items():
        write_mrc(root / name, np.zeros(shape, np.float32), pixel_size_a=PX)
    for root_name, classes in (("run", 1), ("run_it001", 2), ("run_it003", 3)):
        snapshot = table.iloc[: N - 10][["rlnImageName"]].copy()
        snapshot["rlnClassNumber"] = np.arange(N - 10) % 4 + classes
        snapshot["rlnAnglePsi"] = rng.uniform(-180, 180, N - 10)
        snapshot["rlnOriginXAngst"] = rng.uniform(-3, 3, N - 10)
        snapshot["rlnOriginYAngst"] = rng.uniform(-3, 3, N - 10)
        write_star(
            root / f"Class2D/job007/{root_name}_data.star",
            {"optics": optics, "particles": snapshot},
        )
    mic_optics = optics[["rlnOpticsGroupName", "rlnOpticsGroup", "rlnVoltage"]].copy()
    mic_optics["rlnSphericalAberration"] = 2.7
    mic_optics["rlnAmplitudeContrast"] = 0.1
    mic_optics["rlnMicrographPixelSize"] = PX
    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": sorted(MICROGRAPHS),
            "rlnOpticsGroup": [1, 1],
            "rlnDefocusU": [15000.0, 18000.0],
            "rlnDefocusV": [14000.0, 17500.0],
            "rlnDefocusAngle": [30.0, -45.0],
        }
    )
    write_star(
        root / "CtfFind/job003/micrographs_ctf.star",
        {"optics": mic_optics, "micrographs": micrographs},
    )
    return root


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    document: dict[str, object] = json.loads(capsys.readouterr().out)
    return document


@pytest.mark.slow  # a reconstruction of 400 particles after the round trip
def test_export_import_reconstruct(
    project: Path,
    truth: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(project)  # stack names in the pool are project-relative
    out = tmp_path / "cs"
    assert main(["export-cryosparc", str(project), "--out", str(out), "--json"]) == 0
    summary = _json(capsys)
    assert summary["n_particles"] == N
    assert summary["n_with_alignments2d"] == N - 10
    assert summary["n_exposures"] == 2
    assert str(summary["class2d_data_path"]).endswith("run_it003_data.star")
    particles = Dataset.load(out / "particles.cs")
    exposures = Dataset.load(out / "exposures.cs")
    for field in (
        "blob/path",
        "blob/idx",
        "blob/shape",
        "blob/psize_A",
        "blob/sign",
        "ctf/df1_A",
        "ctf/anisomag",
        "location/center_x_frac",
        "pick_stats/ncc_score",
        "alignments2D/class",
        "alignments3D/pose",
    ):
        assert field in particles.fields()
    # the latest snapshot (run_it003: classes 3..6) is the one exported, 0-based
    assert set(particles["alignments2D/class"][: N - 10].tolist()) == {2, 3, 4, 5}
    shape = particles["location/micrograph_shape"]
    assert {tuple(s) for s in shape.tolist()} == set(MICROGRAPHS.values())
    assert set(particles["location/micrograph_uid"].tolist()) == set(
        exposures["uid"].tolist()
    )
    assert exposures["micrograph_blob/shape"].tolist() == [[96, 128], [100, 120]]

    star = project / "from_cs.star"  # image names are relative to the project
    args = ["import-cryosparc", str(out / "particles.cs"), "--out", str(star)]
    assert main([*args, "--json"]) == 0
    assert _json(capsys)["poses"] == "alignments3D"
    original = read_posed_particles(project / "Extract/job006/particles.star")
    back = read_posed_particles(star)
    np.testing.assert_array_equal(back.images, original.images)
    np.testing.assert_allclose(back.rotations, original.rotations, atol=1e-6)
    np.testing.assert_allclose(back.origin_px, original.origin_px, atol=1e-5)
    np.testing.assert_allclose(back.defocus_u_a, original.defocus_u_a, rtol=1e-6)
    np.testing.assert_array_equal(back.subset, original.subset)

    recon = tmp_path / "Reconstruct"
    assert main(["reconstruct", str(star), "--out", str(recon), "--json"]) == 0
    assert Path(str(_json(capsys)["map_path"])) == recon / "run_class001.mrc"
    with mrcfile.open(recon / "run_class001.mrc") as mrc:
        full = np.asarray(mrc.data)
    assert fourier_shell_correlation(full, truth, PX).crossing_a(0.5) < 12.0


def test_export_errors_name_the_file(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export-cryosparc", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "Extract/job006/particles.star" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Extract").symlink_to(project / "Extract")
    assert main(["export-cryosparc", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "mic_001.mrc" in capsys.readouterr().err
    args = ["export-cryosparc", str(broken), "--out", str(tmp_path / "o")]
    assert main([*args, "--no-locations", "--json"]) == 0
    summary = _json(capsys)
    assert summary["exposures_path"] is None
    assert "location/center_x_frac" not in Dataset.load(tmp_path / "o/particles.cs")


def test_import_real_cs(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cs = shared_data / "real/cryosparc_P12_J24_001_particles.cs"
    star = tmp_path / "particles.star"
    assert main(["import-cryosparc", str(cs), "--out", str(star), "--json"]) == 0
    summary = _json(capsys)
    assert summary["n_particles"] == 2019
    assert summary["n_optics_groups"] == 1
    assert summary["fields_missing"] == [
        "ctf/bfactor",
        "location/micrograph_path",
        "pick_stats/ncc_score",
    ]
    optics, table = read_particles_star(star)
    assert float(optics["rlnVoltage"].iloc[0]) == 200.0
    assert set(table["rlnRandomSubset"]) == {1, 2}
    bad = tmp_path / "bad.cs"
    Dataset.load(cs).drop_fields(["blob/psize_A"]).save(bad)
    assert main(["import-cryosparc", str(bad), "--out", str(star)]) == 2
    err = capsys.readouterr().err
    assert "bad.cs" in err
    assert "blob/psize_A" in err


@pytest.mark.parametrize("suffix", [".star", ".cs"])
def test_rebalance_cli_is_idempotent(
    suffix: str,
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cs = shared_data / "real/cryosparc_P12_J24_001_particles.cs"
    source = cs
    if suffix == ".star":
        source = tmp_path / "particles.star"
        assert main(["import-cryosparc", str(cs), "--out", str(source)]) == 0
        capsys.readouterr()
    options = ["--bins", "100", "--percentile", "80", "--seed", "5", "--json"]
    assert main(["rebalance", str(source), "--out", str(tmp_path / "a"), *options]) == 0
    first = _json(capsys)
    assert first["n_in"] == 2019
    assert first["n_excluded"] > 0
    assert first["n_rebalanced"] + first["n_excluded"] == 2019  # type: ignore[operator]
    assert str(first["rebalanced_path"]).endswith(f"rebalanced{suffix}")
    assert set(first["plots"]) == {  # type: ignore[arg-type]
        "viewing_directions",
        "bin_counts",
        "rebalancing",
    }
    again = [str(first["rebalanced_path"]), "--out", str(tmp_path / "b"), *options]
    assert main(["rebalance", *again]) == 0
    second = _json(capsys)
    assert second["n_excluded"] == 0
    assert second["threshold_count"] == first["threshold_count"]
    criterion = "error3d" if suffix == ".star" else "ncc_score"
    bad = ["rebalance", str(source), "--out", str(tmp_path / "c")]
    assert main([*bad, "--criterion", criterion]) == 2
    err = capsys.readouterr().err
    assert str(source) in err
    assert (
        "alignments3D/error" if suffix == ".star" else "pick_stats/ncc_score"
    ) in err
