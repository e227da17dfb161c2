"""`mdcatch inspect`: table, JSON and movies STAR, on real and generated sessions."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from mdcatch.cli import main
from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.epu.writer import epu_exposure_relpath, write_epu_exposure_xml

REQUIRED = {
    "movie_path",
    "metadata_path",
    "acquired_utc",
    "pixel_size_a",
    "voltage_kv",
    "exposure_time_s",
    "total_dose_e_per_a2",
    "n_frames",
    "target_defocus_um",
    "detector",
    "magnification",
    "warnings",
}

K3_XML = (
    "sessions/epu/smartem-decisions/epu-dir-example/Images-Disc1/GridSquare_8999138/"
    "Data/FoilHole_9015883_Data_9017347_6_20250108_154915.xml"
)


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert main(["inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_json_of_real_epu_session_has_every_required_field(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_data / "sessions/epu/smartem-decisions/epu-dir-example"
    document = _run_json(capsys, str(folder))
    assert document["session"]["name"] == "Supervisor_20250108_101446_62_cm40593-1_EPU"
    [exposure] = document["exposures"]  # grid-square and foil-hole images excluded
    assert exposure.keys() >= REQUIRED
    record = read_epu_exposure(shared_data / K3_XML)
    assert exposure["pixel_size_a"] == pytest.approx(record.optics.pixel_size_a)
    assert exposure["pixel_size_a"] == pytest.approx(1.0559, abs=1e-4)
    assert exposure["n_frames"] == 50
    assert exposure["total_dose_e_per_a2"] == pytest.approx(14.41, abs=0.01)
    assert exposure["target_defocus_um"] > 0  # positive = underfocus
    assert exposure["detector"] == "BioQuantum K3"
    assert exposure["movie_path"] is None
    acquired = datetime.fromisoformat(exposure["acquired_utc"])
    assert acquired.utcoffset() is not None


def test_json_of_real_mdoc(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mdoc = shared_data / "sessions/serialem/mdocfile/frame_set_single.mdoc"
    document = _run_json(capsys, str(mdoc))
    [exposure] = document["exposures"]
    assert exposure.keys() >= REQUIRED
    assert exposure["n_frames"] == 12
    assert exposure["voltage_kv"] == pytest.approx(300.0)


def _generated_session(shared_data: Path, root: Path, n: int) -> tuple[Path, Path]:
    """An EPU session of ``n`` exposures (metadata tree + separate movie tree)."""
    template = read_epu_exposure(shared_data / K3_XML)
    session, movies = root / "session", root / "DoseFractions"
    for i in range(n):
        acquired = template.acquired_utc.replace(minute=i)
        rel = epu_exposure_relpath("100", str(200 + i), str(300 + i), acquired)
        exposure = dataclasses.replace(template, acquired_utc=acquired)
        xml = write_epu_exposure_xml(exposure, session / rel)
        movie = movies / rel.parent / f"{xml.stem}_Fractions.mrc"
        movie.parent.mkdir(parents=True, exist_ok=True)
        frames = np.zeros((template.n_frames, 16, 24), dtype=np.int8)
        with mrcfile.new(movie) as mrc:
            mrc.set_data(frames)
            mrc.voxel_size = template.optics.pixel_size_a
    return session, movies


def test_star_of_generated_session_reads_back_in_relion_layout(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session, movies = _generated_session(shared_data, tmp_path, 3)
    star = tmp_path / "movies.star"
    argv = ["inspect", str(session), "--movie-root", str(movies), "--star", str(star)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    blocks = starfile.read(star, always_dict=True)
    assert set(blocks) == {"optics", "movies"}
    optics, table = blocks["optics"], blocks["movies"]
    assert len(optics) == 1
    assert optics["rlnVoltage"].iloc[0] == pytest.approx(300.0)
    assert optics["rlnMicrographOriginalPixelSize"].iloc[0] == pytest.approx(
        1.0559, abs=1e-4
    )
    assert len(table) == 3
    assert all(Path(p).exists() for p in table["rlnMicrographMovieName"])
    assert set(table["rlnOpticsGroup"]) == {1}


def test_table_lists_movies_and_warnings(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session, movies = _generated_session(shared_data, tmp_path, 2)
    assert main(["inspect", str(session), "--movie-root", str(movies)]) == 0
    out = capsys.readouterr().out
    assert "exposures 2" in out
    assert out.count(" yes") == 2


def test_bad_xml_exits_non_zero_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "FoilHole_1_Data_2_3_20250101_000000.xml"
    bad.write_text(
        "<MicroscopeImage xmlns='http://schemas.datacontract.org/2004/07/Fei"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mdcatch.cli", "inspect", str(bad), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert bad.name in result.stderr
    assert result.stdout == ""


def test_missing_path_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "fifo", "broken_link", "movie_root"])
def test_missing_or_unreadable_input_is_one_line_and_exit_2(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO would block the reader forever; as root, it and a broken link stand
    in for an unreadable file.  A --movie-root must be a folder."""
    bad = tmp_path / "FoilHole_1_Data_2_3_20250101_000000.xml"
    argv = ["inspect", str(bad)]
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "broken_link":
        bad.symlink_to(tmp_path / "gone.xml")
    elif kind == "movie_root":
        argv = ["inspect", str(tmp_path), "--movie-root", str(bad)]
    assert main([*argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    [line] = captured.err.splitlines()
    assert line.startswith(f"mdcatch: {bad}: "), line
