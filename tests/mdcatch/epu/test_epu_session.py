"""EpuSession.dm and the session-folder scan, on the real session and on sessions
the writer generates."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mdcatch import ImageKind, MetadataError, MovieFormat, Software
from mdcatch.epu.session import read_epu_session_file, scan_epu_session
from mdcatch.epu.writer import (
    epu_exposure_relpath,
    write_epu_exposure_xml,
    write_epu_session_file,
)
from mdcatch.records import Exposure, Optics, Session

SESSION = Path("sessions/epu/smartem-decisions/epu-dir-example")


def test_real_session_file(shared_data: Path) -> None:
    s = read_epu_session_file(shared_data / SESSION / "EpuSession.dm")
    assert s.name == "Supervisor_20250108_101446_62_cm40593-1_EPU"
    assert s.software is Software.EPU
    assert s.session_path == shared_data / SESSION
    assert s.start_utc == datetime(2025, 1, 8, 15, 10, 39, 480727, tzinfo=UTC)
    assert s.storage_folder_raw == "Z:\\DoseFractions\\cm40593-1"
    assert s.output_format_raw == "Tiff Lzw Non-Gain normalized"
    assert s.movie_format is MovieFormat.TIFF
    assert s.image_file_format == "Mrc"
    assert s.defocus_list_um == pytest.approx((2.4, 2.1, 1.8, 1.5, 1.2, 0.9))
    assert len(s.grid_square_ids) == 228
    assert len(set(s.grid_square_ids)) == 228
    assert s.grid_square_ids[0] == "8999669"
    assert "8999138" in s.grid_square_ids  # the square whose images are in the folder
    assert s.software_version == "3.9.1.8206"
    assert s.extra["AtlasId"].endswith("\\Atlas\\Atlas.dm")


def test_real_session_scan(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / SESSION
    session, exposures = scan_epu_session(folder)
    assert session.name == "Supervisor_20250108_101446_62_cm40593-1_EPU"
    # Only the Data image is an exposure; GridSquare and FoilHole images are not.
    assert [e.exposure_id for e in exposures] == [
        "FoilHole_9015883_Data_9017347_6_20250108_154915"
    ]
    assert exposures[0].movie_path is None
    assert session.movie_folder is None
    # Movies in a separate DoseFractions tree are found through movie_roots.
    movie = tmp_path / "Images-Disc1" / "GridSquare_8999138" / "Data"
    movie.mkdir(parents=True)
    movie = movie / "FoilHole_9015883_Data_9017347_6_20250108_154915_fractions.tiff"
    movie.write_bytes(b"")
    session, exposures = scan_epu_session(folder, movie_roots=[tmp_path])
    assert exposures[0].movie_path == movie
    assert session.movie_folder == tmp_path


def _exposure(index: int, kind: ImageKind = ImageKind.EXPOSURE) -> Exposure:
    acquired = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(seconds=7 * index)
    return Exposure(
        exposure_id=f"e{index}",
        software=Software.EPU,
        metadata_path=Path("unused.xml"),
        movie_path=None,
        acquired_utc=acquired,
        optics=Optics(voltage_kv=300.0, pixel_size_a=0.83, detector="Falcon 4i"),
        exposure_time_s=2.5,
        total_dose_e_per_a2=40.0 + index,
        n_frames=30 + index,
        target_defocus_um=1.0 + 0.2 * index,
        extra={
            "CameraName": "BM-Falcon",
            "FractionationSettings": "EquidistantFractionation",
        },
    )


def _write_session(folder: Path, movies: Path, n: int) -> list[Path]:
    write_epu_session_file(
        Session(
            name="demo",
            software=Software.EPU,
            session_path=folder,
            output_format_raw="EER",
            movie_format=MovieFormat.EER,
            grid_square_ids=("11", "12"),
            defocus_list_um=(0.8, 1.2),
        ),
        folder / "EpuSession.dm",
    )
    paths = []
    for i in range(n):
        e = _exposure(i)
        rel = epu_exposure_relpath(
            str(11 + i % 2), str(100 + i), f"{500 + i}_{i}", e.acquired_utc
        )
        paths.append(write_epu_exposure_xml(e, folder / rel))
        if i % 3 != 2:  # every third movie has not arrived yet
            movie = movies / rel.parent / f"{rel.stem}_EER.eer"
            movie.parent.mkdir(parents=True, exist_ok=True)
            movie.write_bytes(b"")
    return paths


def test_generated_session_scan(tmp_path: Path) -> None:
    folder, movies = tmp_path / "epu", tmp_path / "DoseFractions"
    paths = _write_session(folder, movies, 6)
    session, exposures = scan_epu_session(folder, movie_roots=[movies])
    assert session.name == "demo"
    assert session.movie_format is MovieFormat.EER
    assert session.grid_square_ids == ("11", "12")
    assert session.defocus_list_um == (0.8, 1.2)
    assert len(exposures) == 6
    by_id = {e.exposure_id: e for e in exposures}
    for i, path in enumerate(paths):
        e = by_id[path.stem]
        assert e.n_frames == 30 + i
        assert e.target_defocus_um == pytest.approx(1.0 + 0.2 * i)
        assert e.grid_square_id == str(11 + i % 2)
        assert e.foil_hole_id == str(100 + i)
        assert (e.movie_path is None) == (i % 3 == 2)
        if e.movie_path is not None:
            assert e.movie_path.name == f"{path.stem}_EER.eer"


def test_scan_reports_or_collects_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "epu"
    paths = _write_session(folder, tmp_path / "movies", 3)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # EPU crashed mid-write
    with pytest.raises(MetadataError) as info:
        scan_epu_session(folder)
    assert info.value.path == paths[1]
    errors: list[MetadataError] = []
    _, exposures = scan_epu_session(folder, errors=errors)
    assert [e.metadata_path for e in exposures] == [paths[0], paths[2]]
    assert [e.path for e in errors] == [paths[1]]
    dm = folder / "EpuSession.dm"
    dm.write_bytes(dm.read_bytes()[:300])
    errors.clear()
    session, exposures = scan_epu_session(folder, errors=errors)
    assert session.name == "epu"
    assert [e.path for e in errors] == [dm, paths[1]]
    assert len(exposures) == 2


def test_scan_without_session_file(tmp_path: Path) -> None:
    folder = tmp_path / "epu"
    _write_session(folder, tmp_path / "movies", 2)
    (folder / "EpuSession.dm").unlink()
    session, exposures = scan_epu_session(folder)
    assert session.name == "epu"
    assert session.start_utc is None
    assert len(exposures) == 2


def test_session_file_errors(tmp_path: Path) -> None:
    path = write_epu_session_file(
        Session(name="x", software=Software.EPU, session_path=tmp_path),
        tmp_path / "EpuSession.dm",
    )
    text = path.read_text()
    path.write_text(text.replace("<Name>x</Name>", ""))
    with pytest.raises(MetadataError, match="'Name'"):
        read_epu_session_file(path)
    with pytest.raises(ValueError, match="no place"):
        write_epu_session_file(
            dataclasses.replace(
                Session(name="x", software=Software.EPU, session_path=tmp_path),
                extra={"Unknown": "1"},
            ),
            path,
        )
