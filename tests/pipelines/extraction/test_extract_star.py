"""The extraction job on files: float16 stacks and RELION particle STAR files that
RELION's reader (starfile) and cryoSPARC's (cryosparc-tools) both accept."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from pipelines.ctf.model import CtfParams
from pipelines.errors import StageInputError
from pipelines.extraction.job import run_extract
from pipelines.extraction.particles_star import (
    append_particles_star,
    read_particles_star,
)
from pipelines.io.outputs import write_mrc
from pipelines.picking.picks import Picks

CTF = CtfParams(
    defocus_u_a=15200.0,
    defocus_v_a=14800.0,
    astigmatism_angle_deg=33.0,
    amplitude_contrast=0.07,
    phase_shift_deg=0.0,
    bfactor_a2=10.0,
)


def _project(tmp_path: Path, rng: np.random.Generator, name: str) -> tuple[Path, Picks]:
    micrograph = tmp_path / "MotionCorr" / "job002" / "Movies" / f"{name}.mrc"
    image = rng.normal(size=(256, 320)).astype(np.float32)
    write_mrc(micrograph, image, pixel_size_a=1.25, float16=False)
    picks = Picks(
        x_px=np.array([60.0, 160.0, 250.0, 10.0]),
        y_px=np.array([60.0, 128.0, 190.0, 128.0]),
        score=np.array([0.9, 0.8, 0.7, 0.6]),
        power=np.ones(4),
        diameter_a=np.full(4, 60.0),
        pixel_size_a=1.25,
        shape=(256, 320),
    )
    return micrograph, picks


def _extract(tmp_path: Path, micrograph: Path, picks: Picks, **kw: object) -> object:
    return run_extract(
        micrograph,
        picks,
        project_dir=tmp_path,
        job_dir="Extract/job005",
        pixel_size_a=1.25,
        ctf=CTF,
        box_px=96,
        downscale_box_px=64,
        ctf_max_resolution_a=4.2,
        ctf_figure_of_merit=0.15,
        append_to=tmp_path / "Extract" / "job005" / "particles.star",
        **kw,
    )


def test_stack_and_star_are_relion_shaped(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    micrograph, picks = _project(tmp_path, rng, "mic_001")
    result = _extract(tmp_path, micrograph, picks)
    assert result.n_extracted == 3
    assert result.n_skipped_edge == 1  # x = 10 is within half a box of the edge
    assert result.stack_path == tmp_path / "Extract/job005/Movies/mic_001.mrcs"
    with mrcfile.open(result.stack_path) as mrc:
        assert mrc.header.mode == 12  # float16
        assert mrc.data.shape == (3, 64, 64)
        assert mrc.voxel_size.x == pytest.approx(1.25 * 96 / 64, rel=1e-3)
        assert mrc.header.ispg == 0  # an image stack

    star = tmp_path / "Extract" / "job005" / "particles.star"
    blocks = starfile.read(star, always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    row = optics.iloc[0]
    assert row["rlnImageSize"] == 64
    assert row["rlnImagePixelSize"] == pytest.approx(1.875)
    assert row["rlnMicrographOriginalPixelSize"] == pytest.approx(1.25)
    assert row["rlnAmplitudeContrast"] == pytest.approx(0.07)
    assert row["rlnImageDimensionality"] == 2
    assert list(particles["rlnImageName"]) == [
        f"{i:06d}@Extract/job005/Movies/mic_001.mrcs" for i in (1, 2, 3)
    ]
    assert set(particles["rlnMicrographName"]) == {
        "MotionCorr/job002/Movies/mic_001.mrc"
    }
    np.testing.assert_allclose(particles["rlnCoordinateX"], [60.0, 160.0, 250.0])
    np.testing.assert_allclose(particles["rlnDefocusU"], 15200.0)
    np.testing.assert_allclose(particles["rlnDefocusAngle"], 33.0)
    np.testing.assert_allclose(particles["rlnCtfBfactor"], 10.0)
    np.testing.assert_allclose(particles["rlnCtfMaxResolution"], 4.2)
    np.testing.assert_allclose(particles["rlnAutopickFigureOfMerit"], [0.9, 0.8, 0.7])


def test_append_grows_the_pool_and_keeps_optics(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    for name in ("mic_001", "mic_002"):
        micrograph, picks = _project(tmp_path, rng, name)
        _extract(tmp_path, micrograph, picks)
    star = tmp_path / "Extract" / "job005" / "particles.star"
    optics, particles = read_particles_star(star)
    assert len(optics) == 1
    assert len(particles) == 6
    assert particles["rlnImageName"].is_unique
    # a second optics group is numbered 2; the same name with other optics is refused
    micrograph, picks = _project(tmp_path, rng, "mic_003")
    _extract(tmp_path, micrograph, picks, optics_group_name="opticsGroup2")
    optics, particles = read_particles_star(star)
    assert list(optics["rlnOpticsGroup"]) == [1, 2]
    assert list(particles["rlnOpticsGroup"]) == [1] * 6 + [2] * 3
    bad = optics.iloc[[0]].copy()
    bad["rlnImageSize"] = 128
    with pytest.raises(StageInputError, match="rlnImageSize"):
        append_particles_star(star, bad, particles.iloc[:1])
    assert not list(star.parent.glob(".*.partial"))


def test_cryosparc_tools_reads_the_star(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    star_module = pytest.importorskip("cryosparc.star")
    micrograph, picks = _project(tmp_path, rng, "mic_001")
    _extract(tmp_path, micrograph, picks)
    blocks = star_module.read(tmp_path / "Extract" / "job005" / "particles.star")
    assert len(blocks["particles"]) == 3
    assert blocks["optics"]["rlnImageSize"][0] == 64
    names = [str(n) for n in blocks["particles"]["rlnImageName"]]
    assert names[0] == "000001@Extract/job005/Movies/mic_001.mrcs"


def test_float32_stacks_for_relion_3(tmp_path: Path, rng: np.random.Generator) -> None:
    micrograph, picks = _project(tmp_path, rng, "mic_001")
    half = _extract(tmp_path / "half", micrograph, picks)
    full = _extract(tmp_path, micrograph, picks, float16=False)
    with mrcfile.open(full.stack_path) as mrc, mrcfile.open(half.stack_path) as ref:
        assert mrc.header.mode == 2  # float32: RELION 3.1 cannot read mode 12
        np.testing.assert_allclose(mrc.data, ref.data, atol=1e-2)
