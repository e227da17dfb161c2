"""Files of the CTF stage: diagnostic MRC + PNG, JSON record, micrographs_ctf.star."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from PIL import Image

from pipelines.ctf.estimate import CtfFit
from pipelines.ctf.job import run_ctf
from pipelines.ctf.model import CtfParams
from pipelines.ctf.outputs import (
    MicrographCtfRow,
    make_optics_table,
    write_micrographs_ctf_star,
)
from pipelines.errors import StageInputError
from pipelines.simulate.thon import make_thon_micrograph


@pytest.fixture(scope="module")
def micrograph_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    truth = CtfParams(
        defocus_u_a=18300.0,
        defocus_v_a=17700.0,
        astigmatism_angle_deg=40.0,
        bfactor_a2=40.0,
    )
    image = make_thon_micrograph(
        truth, contrast=0.1, rng=np.random.default_rng(3), shape=(768, 768)
    )
    path = tmp_path_factory.mktemp("mics") / "mic_001.mrc"
    mrcfile.write(path, image, voxel_size=1.0)
    return path


def test_run_ctf_writes_diagnostic_and_record(
    micrograph_file: Path, tmp_path: Path
) -> None:
    out = run_ctf(
        micrograph_file,
        tmp_path / "CtfFind/job003/Movies",
        pixel_size_a=1.0,
        voltage_kv=300.0,
        cs_mm=2.7,
    )
    fit = out.fit
    assert 0.5 * (fit.defocus_u_a + fit.defocus_v_a) == pytest.approx(18000, rel=0.01)
    assert out.ctf_image_path.name == "mic_001.ctf"
    with mrcfile.open(out.ctf_image_path) as mrc:
        image = np.asarray(mrc.data)
        assert mrc.voxel_size.x == pytest.approx(1.0)
    assert image.ndim == 2
    assert image.shape[0] == image.shape[1]
    assert image.min() >= 0.0
    assert image.max() <= 1.0
    # Right half is the model: CTF² in [0, 1] with rings (not constant).
    assert image[:, image.shape[1] // 2 :].std() > 0.1
    with Image.open(out.png_path) as png:
        assert png.size == (512, 512)
        assert png.mode == "L"
    record = json.loads(out.record_path.read_text())
    assert record["defocus_u_a"] == pytest.approx(fit.defocus_u_a)
    assert record["fit_resolution_a"] == pytest.approx(fit.fit_resolution_a)
    assert record["micrograph_path"] == str(micrograph_file)
    assert not list(out.ctf_image_path.parent.glob(".*.partial"))


def test_micrographs_ctf_star_round_trips(
    micrograph_file: Path, tmp_path: Path
) -> None:
    out = run_ctf(
        micrograph_file, tmp_path, pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7
    )
    fit: CtfFit = out.fit
    rows = [
        MicrographCtfRow(
            micrograph_name=f"MotionCorr/job002/Movies/mic_{i:03d}.mrc",
            ctf_image=f"CtfFind/job003/Movies/mic_{i:03d}.ctf:mrc",
            fit=fit,
        )
        for i in range(3)
    ]
    optics = make_optics_table(
        pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1
    )
    path = write_micrographs_ctf_star(tmp_path / "micrographs_ctf.star", rows, optics)
    blocks = starfile.read(path, always_dict=True)
    assert set(blocks) == {"optics", "micrographs"}
    assert blocks["optics"]["rlnMicrographPixelSize"].tolist() == [1.0]
    table = blocks["micrographs"]
    for label in (
        "rlnMicrographName",
        "rlnCtfImage",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnCtfAstigmatism",
        "rlnDefocusAngle",
        "rlnCtfFigureOfMerit",
        "rlnCtfMaxResolution",
        "rlnPhaseShift",
        "rlnOpticsGroup",
    ):
        assert label in table.columns
    assert len(table) == 3
    assert table["rlnDefocusU"].iloc[0] == pytest.approx(fit.defocus_u_a, rel=1e-6)
    assert table["rlnCtfAstigmatism"].iloc[0] == pytest.approx(
        fit.defocus_u_a - fit.defocus_v_a, rel=1e-5
    )
    assert table["rlnCtfImage"].iloc[2] == "CtfFind/job003/Movies/mic_002.ctf:mrc"


def test_unreadable_micrograph_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc file at all")
    with pytest.raises(StageInputError, match=r"broken\.mrc"):
        run_ctf(bad, tmp_path / "out", pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7)
    assert not (tmp_path / "out").exists()
