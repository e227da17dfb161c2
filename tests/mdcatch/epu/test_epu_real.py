"""Every real EPU sample parses with its expected values, field by field.

Expected values come from ../shared/data/sessions/PROVENANCE.md (what the files
record, in EPU's own units) converted by hand: 1e20 e/m² = 1 e/Å², 1e-10 m = 1 Å,
EPU's negative defocus = underfocus.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mdcatch import CameraMode, ImageKind, Software
from mdcatch.epu.exposure import read_epu_exposure

MDCATCH = Path("sessions/epu/MDCatch")
SMARTEM = Path("sessions/epu/smartem-decisions/epu-dir-example")
GRID = SMARTEM / "Images-Disc1/GridSquare_8999138"
FALCON = MDCATCH / "FoilHole_18890345_Data_18881924_18881926_20200320_090200.xml"
EFCCD = MDCATCH / "FoilHole_22011316_Data_19957701_19957703_20200323_100235.xml"
K3 = GRID / "Data/FoilHole_9015883_Data_9017347_6_20250108_154915.xml"
FOIL_HOLE = GRID / "FoilHoles/FoilHole_9015889_20250108_154725.xml"
GRID_SQUARE = GRID / "GridSquare_20250108_151151.xml"


def test_falcon3_varidistant(shared_data: Path) -> None:
    e = read_epu_exposure(shared_data / FALCON)
    assert e.kind is ImageKind.EXPOSURE
    assert e.software is Software.EPU
    assert e.exposure_id == FALCON.stem
    assert e.movie_path is None
    assert e.optics.detector == "BM-Falcon"
    assert e.optics.camera_mode is CameraMode.COUNTING
    assert e.optics.super_resolution_factor == 1
    assert e.optics.binning == 1.0
    assert e.n_frames == 40
    assert e.optics.pixel_size_a == pytest.approx(1.0685, abs=5e-5)
    assert e.total_dose_e_per_a2 == pytest.approx(40.054, abs=1e-3)
    assert e.exposure_time_s == pytest.approx(70.36)
    assert e.target_defocus_um == pytest.approx(3.25)
    assert e.current_defocus_um == pytest.approx(4.9624, abs=1e-4)
    assert e.optics.voltage_kv == pytest.approx(300.0)
    assert e.magnification == pytest.approx(75000)
    assert e.spot_size == 10
    assert e.optics.energy_filter_slit_ev is None
    assert e.optics.phase_plate is False
    assert e.optics.cs_mm is None
    assert e.optics.instrument_id == "3299"
    assert e.software_version == "2.6.1.69"
    assert e.acquired_utc == datetime(2020, 3, 20, 9, 2, 1, 574587, tzinfo=UTC)
    assert e.acquired_utc.utcoffset() is not None
    assert e.foil_hole_id == "18890345"
    assert e.grid_square_id is None  # not inside a GridSquare_* folder
    assert e.beam_shift == pytest.approx((-0.000474214, 0.002101343), abs=1e-9)
    assert e.extra["FractionationSettings"] == "VaridistantFractionation"
    # 39 fractions of 68 raw frames and a last one of 82 (frames 2653-2734).
    assert [n for n, _ in e.frame_doses] == [39, 1]
    per_raw_frame = e.total_dose_e_per_a2 / 2734
    assert e.frame_doses[0][1] == pytest.approx(68 * per_raw_frame)
    assert e.frame_doses[1][1] == pytest.approx(82 * per_raw_frame)
    assert sum(n * d for n, d in e.frame_doses) == pytest.approx(e.total_dose_e_per_a2)
    assert e.extra["DoseOnCamera"] == "45.726901767606584"
    assert e.warnings == ()


def test_efccd_equidistant_with_energy_filter(shared_data: Path) -> None:
    e = read_epu_exposure(shared_data / EFCCD)
    assert e.kind is ImageKind.EXPOSURE
    assert e.optics.detector == "EF-CCD"
    assert e.optics.camera_mode is CameraMode.COUNTING
    assert e.n_frames == 40
    assert e.frame_doses == ()
    assert e.optics.pixel_size_a == pytest.approx(1.1837, abs=5e-5)
    assert e.total_dose_e_per_a2 == pytest.approx(25.18, abs=5e-3)
    assert e.exposure_time_s == pytest.approx(10.0)
    assert e.target_defocus_um == pytest.approx(2.2)
    assert e.optics.energy_filter_slit_ev == pytest.approx(20.0)
    assert e.magnification == pytest.approx(105000)
    assert e.spot_size == 7
    assert e.optics.voltage_kv == pytest.approx(300.0)
    # Written as 08:09:37.079622+01:00: the record holds UTC.
    assert e.acquired_utc == datetime(2020, 5, 1, 7, 9, 37, 79622, tzinfo=UTC)
    assert e.stage_position_um == pytest.approx((393.364, -271.603, 105.955), abs=1e-3)
    assert e.stage_alpha_deg == pytest.approx(-0.011, abs=1e-3)
    assert e.extra["ReadoutArea"] == "3838x3710"


def test_k3_binning_and_super_resolution(shared_data: Path) -> None:
    e = read_epu_exposure(shared_data / K3)
    assert e.kind is ImageKind.EXPOSURE
    assert e.optics.detector == "BioQuantum K3"
    assert e.extra["CameraName"] == "EF-CCD"
    assert e.optics.binning == 2.0
    assert e.optics.super_resolution_factor == 2
    # super-resolution factor 2 binned by 2 on saving: movies at the physical pixel
    assert e.optics.camera_mode is CameraMode.COUNTING
    assert e.n_frames == 50
    assert e.optics.pixel_size_a == pytest.approx(1.0559, abs=5e-5)
    assert e.total_dose_e_per_a2 == pytest.approx(14.41, abs=5e-3)
    assert e.exposure_time_s == pytest.approx(0.89)
    assert e.dose_rate_e_per_px_s == pytest.approx(1.1175, abs=1e-4)
    assert e.target_defocus_um == pytest.approx(2.7)
    assert e.current_defocus_um == pytest.approx(-0.484, abs=1e-3)
    assert e.magnification == pytest.approx(165000)
    assert e.optics.energy_filter_slit_ev == pytest.approx(20.0)
    assert e.optics.instrument_id == "3632"
    assert e.software_version == "3.9.1.8206"
    assert e.grid_square_id == "8999138"
    assert e.foil_hole_id == "9015883"
    assert e.acquired_utc == datetime(2025, 1, 8, 15, 49, 18, 115828, tzinfo=UTC)
    assert e.extra["Aperture[C2].Name"] == "50"
    assert e.extra["Aperture[OBJ].Name"] == "100"
    assert e.extra["ReadoutArea"] == "2880x2046"


@pytest.mark.parametrize(
    ("relpath", "kind", "magnification", "pixel_size_a"),
    [
        (GRID_SQUARE, ImageKind.GRID_SQUARE, 470, 415.6),
        (FOIL_HOLE, ImageKind.FOIL_HOLE, 11500, 16.36),
    ],
)
def test_grid_square_and_foil_hole_images_are_not_exposures(
    shared_data: Path,
    relpath: Path,
    kind: ImageKind,
    magnification: float,
    pixel_size_a: float,
) -> None:
    e = read_epu_exposure(shared_data / relpath)
    assert e.kind is kind
    assert e.kind is not ImageKind.EXPOSURE
    assert e.n_frames == 1
    assert "FractionationSettings" not in e.extra
    assert e.magnification == pytest.approx(magnification)
    assert e.optics.pixel_size_a == pytest.approx(pixel_size_a, rel=1e-3)
    assert e.grid_square_id == "8999138"
