"""Every real SerialEM sample parses with its expected values, field by field.

Expected values are read off the files themselves (see
../shared/data/sessions/PROVENANCE.md), converted by hand: SerialEM's negative
defocus = underfocus, so ``TargetDefocus = -2.3`` is ``target_defocus_um == 2.3``.
An independent parser (teamtomo's ``mdocfile``) cross-checks the per-section
fields it reads correctly; see docs/serialem.md for the ones it gets wrong.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mdcatch import CameraMode, ImageKind, MovieFormat, Software
from mdcatch.serialem.mdoc import read_mdoc, scan_serialem_session

ROOT = Path("sessions/serialem")
MDCATCH = ROOT / "MDCatch/img_h1_s2_i374_movie_00001_Jul30_07.56.47.tif.mdoc"
FRAME_SET = ROOT / "mdocfile/frame_set_single.mdoc"
TILT = ROOT / "mdocfile/tilt_series.mdoc"
MONTAGE = ROOT / "mdocfile/montage_section.mdoc"
MURFEY = ROOT / "python-murfey/test_1.mdoc"
ALL = (MDCATCH, FRAME_SET, TILT, MONTAGE, MURFEY)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_mdcatch_k3_super_resolution_frame_set(shared_data: Path) -> None:
    session, exposures = read_mdoc(shared_data / MDCATCH)
    assert session.software is Software.SERIALEM
    assert session.name == "MDCatch"
    assert session.start_utc == utc(2019, 8, 11, 14, 13, 22)  # unbracketed title
    assert session.movie_format is MovieFormat.TIFF
    assert session.storage_folder_raw == "X:\\Data\\Gregory"
    assert session.extra["title.1"].startswith(
        "SerialEM: Acquired on Titan Krios3 D3593"
    )
    (e,) = exposures
    assert e.exposure_id == "00000_Aug11_14.13.17"  # the movie's stem, not the mdoc's
    assert e.kind is ImageKind.EXPOSURE
    assert e.movie_path is None  # not next to the mdoc, no path_map
    assert e.extra["SubFramePath"] == "X:\\Data\\Gregory\\00000_Aug11_14.13.17.tif"
    assert e.acquired_utc == utc(2019, 8, 11, 14, 13, 22)  # 2-digit year
    o = e.optics
    assert o.voltage_kv == 300.0
    assert o.pixel_size_a == 0.50226
    assert o.cs_mm == 2.7  # facility key Cs
    assert o.binning == 0.5
    assert o.camera_mode is CameraMode.SUPER_RESOLUTION
    assert o.super_resolution_factor == 2
    assert o.phase_plate is True
    assert o.instrument_id == "D3593"
    assert o.energy_filter_slit_ev is None
    assert e.exposure_time_s == 1.0
    assert e.total_dose_e_per_a2 == 30.0
    assert e.n_frames == 40
    assert e.frame_doses == ((40, 0.0),)
    assert e.target_defocus_um == 2.3
    assert e.current_defocus_um == pytest.approx(-1.04811e-5, rel=1e-9)
    assert e.magnification == 31000.0
    assert e.spot_size == 3
    assert e.image_shift == (0.0, 0.0)
    assert e.stage_position_um == (-114.718, -37.9638, 83.3138)
    assert e.stage_alpha_deg == 0.000488
    assert e.camera_index == 0
    assert e.extra["OpticalGroup"] == "hole2-shot3"
    assert e.extra["GainReference"] == "SuperRef_00000_Aug11_14.13.17.mrc"
    assert e.extra["DefectFile"] == "defects_00000_Aug11_14.13.17.txt"
    assert "Cs" not in e.extra
    assert e.warnings == ()


def test_mdcatch_sample_with_path_map_finds_movie_and_gain(
    shared_data: Path, tmp_path: Path
) -> None:
    frames = tmp_path / "Gregory"
    frames.mkdir()
    movie = frames / "00000_Aug11_14.13.17.tif"
    gain = frames / "SuperRef_00000_Aug11_14.13.17.mrc"
    movie.touch()
    gain.touch()
    # The prefix is matched case-insensitively; the rest keeps its case.
    _, (e,) = read_mdoc(shared_data / MDCATCH, path_map={"x:\\DATA": tmp_path})
    assert e.movie_path == movie
    assert e.gain_reference_path == gain
    assert e.defect_file_path is None
    assert "SubFramePath" not in e.extra
    assert e.extra["DefectFile"] == "defects_00000_Aug11_14.13.17.txt"


def test_mdocfile_frame_set_gif_k3(shared_data: Path) -> None:
    session, (e,) = read_mdoc(shared_data / FRAME_SET)
    assert session.start_utc == utc(2021, 10, 8, 7, 38, 24)
    assert e.exposure_id == "s_mmm_00993_33.0_Oct08_07.39.05"
    assert e.acquired_utc == utc(2021, 10, 8, 7, 39, 8)
    o = e.optics
    assert o.detector == "GIF-K3"  # "Camera -> 0:Ceta 1:GIF-K3" and CameraIndex 1
    assert o.pixel_size_a == 1.2827
    assert o.binning == 0.5
    assert o.camera_mode is CameraMode.SUPER_RESOLUTION
    assert o.energy_filter_slit_ev == 20.0
    assert o.cs_mm is None
    assert e.camera_index == 1
    assert e.total_dose_e_per_a2 == 7.65892
    assert e.dose_rate_e_per_px_s == 4.97858
    assert e.exposure_time_s == 1.07856
    assert e.n_frames == 12
    assert e.frame_doses == ((12, 0.63824),)
    assert e.target_defocus_um == 4.5
    assert e.current_defocus_um == 5.08286
    assert e.magnification == 33000.0
    assert e.spot_size == 9
    assert e.image_shift == (2.69654, -0.304661)
    assert e.stage_position_um == (-142.82, -457.442, -13.7196)
    assert e.stage_alpha_deg == 32.984
    assert e.extra["UncroppedSize"] == "-2880 -2046"
    assert e.extra["GainReference"] == "SuperRef_s_mmm_00000_-15.0_Oct08_01.59.24.dm4"


def test_tilt_series_stack(shared_data: Path) -> None:
    session, exposures = read_mdoc(shared_data / TILT)
    assert len(exposures) == 41
    assert session.start_utc == utc(2015, 11, 30, 15, 14, 20)
    assert session.extra["ImageFile"] == "TS_01.mrc"
    assert session.extra["ImageSize"] == "924 958"
    assert session.movie_format is MovieFormat.MRC
    assert session.storage_folder_raw == "D:\\DATA\\Flo\\HGK149_20151130\\frames"
    assert {e.kind for e in exposures} == {ImageKind.TILT}
    first, last = exposures[0], exposures[-1]
    assert first.exposure_id == "TS_01_000_0.0"
    assert last.exposure_id == "TS_01_040_60.0"
    assert first.acquired_utc == utc(2015, 11, 30, 15, 21, 38)
    assert last.acquired_utc == utc(2015, 11, 30, 16, 6, 45)
    assert first.stage_alpha_deg == 0.000999877
    assert last.stage_alpha_deg == 60.0006
    assert first.current_defocus_um == -2.68083
    assert last.current_defocus_um == 0.567786
    for e in exposures:
        assert e.optics.pixel_size_a == 5.4
        assert e.optics.binning == 4.0
        assert e.optics.camera_mode is CameraMode.COUNTING
        assert e.target_defocus_um == 4.0
        assert e.n_frames == 8
        assert e.total_dose_e_per_a2 == 0.0
        assert e.exposure_time_s == 0.8
        assert e.camera_index == 2
        assert e.magnification == 105000.0
        # No Voltage anywhere in this file: assumed, and said so on the record.
        assert e.optics.voltage_kv == 300.0
        assert e.warnings == ("mdoc has no Voltage; assumed 300 kV",)
    times = [e.acquired_utc for e in exposures]
    assert times == sorted(times)


def test_montage_pieces_and_section(shared_data: Path) -> None:
    session, exposures = read_mdoc(shared_data / MONTAGE)
    assert len(exposures) == 63
    assert {e.kind for e in exposures} == {ImageKind.MONTAGE}
    assert [e.exposure_id for e in exposures[:2]] == ["LMM_000", "LMM_001"]
    assert exposures[61].exposure_id == "LMM_061"
    section = exposures[62]
    assert section.exposure_id == "LMM_section000"
    assert section.extra["FullMontSize"] == "31992 31176"
    assert section.stage_position_um == (0.0, 0.0, 54.986)
    assert section.acquired_utc == utc(2021, 3, 25, 17, 11, 56)
    piece = exposures[0]
    assert piece.extra["PieceCoordinates"] == "0 0 0"
    assert piece.acquired_utc == utc(2021, 3, 25, 17, 0, 46)
    assert piece.dose_rate_e_per_px_s == 0.121077
    assert piece.stage_position_um == (919.141, 849.945, 54.986)
    assert exposures[1].extra["PieceCoordinates"] == "0 3400 0"
    assert session.start_utc == utc(2021, 3, 25, 16, 59, 53)
    for e in exposures:
        assert e.optics.pixel_size_a == 656.139
        assert e.optics.instrument_id == "D3692"
        assert e.magnification == 135.0
        assert e.n_frames == 1  # no frames saved for montage pieces
        assert e.target_defocus_um == 5.0
        assert e.current_defocus_um == 350.513
        assert e.exposure_time_s == 1.00134
        assert e.optics.energy_filter_slit_ev is None
        assert e.extra["FilterSlitAndLoss"] == "0 0"


def test_murfey_unc_tilt_series(shared_data: Path, tmp_path: Path) -> None:
    session, exposures = read_mdoc(shared_data / MURFEY)
    assert session.software_version == "4.0.6"
    assert session.start_utc == utc(2022, 8, 1, 18, 58, 31)  # 4-digit year
    assert session.storage_folder_raw.startswith("\\\\192.168.10.81\\StorageServer")
    angles = [e.exposure_id.rsplit("_", 1)[1] for e in exposures]
    expected = "-0.0 3.0 6.0 -3.0 -6.0 9.0 12.0 -9.0 -12.0 15.0 18.0"
    assert angles == expected.split()
    first, last = exposures[0], exposures[-1]
    assert first.exposure_id == "chrom_07_ts_010_167_000_-0.0"
    assert first.acquired_utc == utc(2022, 8, 1, 18, 58, 35)
    assert last.acquired_utc == utc(2022, 8, 1, 19, 10, 55)
    assert first.stage_alpha_deg == -0.00949884
    assert last.stage_alpha_deg == 17.9858
    assert first.current_defocus_um == 0.734985
    assert last.current_defocus_um == 2.26964
    assert first.dose_rate_e_per_px_s == 5.45454
    assert first.extra["CtfFind"] == "-5.54383515625"
    assert first.extra["NavigatorLabel"] == "167"
    for e in exposures:
        assert e.kind is ImageKind.TILT
        assert e.software_version == "4.0.6"
        assert e.optics.pixel_size_a == 1.94
        assert e.optics.voltage_kv == 300.0
        assert e.optics.energy_filter_slit_ev == 10.0
        assert e.n_frames == 10
        assert e.frame_doses == ((7, 0.0), (3, 0.0))
        assert e.target_defocus_um == 5.5
        assert e.exposure_time_s == 1.49179
        assert e.magnification == 64000.0
        assert e.spot_size == 10
        assert e.warnings == ()

    # The UNC share maps onto a local folder; the doubled backslash is tolerated.
    local = tmp_path / "TemScripting/EF-Falcon/nt29812_98_frames"
    local.mkdir(parents=True)
    (local / "chrom_07_ts_010_167_000_3.0.mrc").touch()
    path_map = {"\\\\192.168.10.81\\storageserver\\OFFLOADDATA": tmp_path}
    _, mapped = read_mdoc(shared_data / MURFEY, path_map=path_map)
    assert mapped[1].movie_path == local / "chrom_07_ts_010_167_000_3.0.mrc"
    assert mapped[0].movie_path is None


def test_scan_serialem_session_merges_all_samples(shared_data: Path) -> None:
    session, exposures = scan_serialem_session(shared_data / ROOT)
    assert len(exposures) == 1 + 1 + 41 + 63 + 11
    assert session.start_utc == utc(2015, 11, 30, 15, 14, 20)
    times = [e.acquired_utc for e in exposures]
    assert times == sorted(times)


@pytest.mark.parametrize("relative", ALL, ids=lambda p: p.name)
def test_agrees_with_mdocfile_on_section_fields(
    shared_data: Path, relative: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mdocfile = pytest.importorskip("mdocfile")
    caplog.set_level(logging.ERROR)  # mdocfile logs every unknown key
    frame = mdocfile.read(shared_data / relative)
    _, exposures = read_mdoc(shared_data / relative)
    assert len(frame) == len(exposures)
    for (_, row), e in zip(frame.iterrows(), exposures, strict=True):
        assert e.stage_alpha_deg == pytest.approx(row["TiltAngle"])
        assert e.target_defocus_um == pytest.approx(-row["TargetDefocus"])
        assert e.current_defocus_um == pytest.approx(-row["Defocus"])
        assert e.total_dose_e_per_a2 == pytest.approx(row["ExposureDose"])
        assert e.magnification == pytest.approx(row["Magnification"])
        assert e.optics.binning == pytest.approx(row["Binning"])
        assert e.exposure_time_s == pytest.approx(row["ExposureTime"])
