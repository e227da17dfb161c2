"""SerialEM mdoc reader on small hand-written mdocs: conventions and bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mdcatch import ImageKind, MetadataError
from mdcatch.serialem.mdoc import read_mdoc, scan_serialem_session
from mdcatch.serialem.paths import map_windows_path

SECTION = """\
[FrameSet = 0]
TiltAngle = 0.5
StagePosition = 1 2
StageZ = 3
Magnification = 105000
ExposureDose = 50
PixelSpacing = 0.83
SpotSize = 8
Defocus = -1.5
ExposureTime = 2.5
Binning = 1
CameraIndex = 1
TargetDefocus = -1.25
SubFramePath = X:\\frames\\movie_0001.tif
NumSubFrames = 50
DateTime = 01-Feb-24  23:30:00
"""


def write(tmp_path: Path, text: str, name: str = "movie_0001.tif.mdoc") -> Path:
    folder = tmp_path / "session"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def mdoc(section: str = SECTION, header: str = "Voltage = 300\n") -> str:
    return header + "\n[T = SerialEM: test scope   01-Feb-24  23:00:00]\n\n" + section


def test_units_and_signs(tmp_path: Path) -> None:
    session, (e,) = read_mdoc(write(tmp_path, mdoc()))
    assert session.name == "session"
    assert e.exposure_id == "movie_0001"
    assert e.kind is ImageKind.EXPOSURE
    assert e.target_defocus_um == 1.25  # -1.25 written = 1.25 µm underfocus
    assert e.current_defocus_um == 1.5
    assert e.dose_per_frame_e_per_a2 == pytest.approx(1.0)
    assert e.stage_position_um == (1.0, 2.0, 3.0)
    assert e.acquired_utc == datetime(2024, 2, 1, 23, 30, tzinfo=UTC)


def test_local_time_zone_is_converted_to_utc(tmp_path: Path) -> None:
    path = write(tmp_path, mdoc())
    session, (e,) = read_mdoc(path, timezone=ZoneInfo("Europe/London"))
    assert e.acquired_utc == datetime(2024, 2, 1, 23, 30, tzinfo=UTC)  # GMT in winter
    _, (e,) = read_mdoc(path, timezone=timezone(timedelta(hours=2)))
    assert e.acquired_utc == datetime(2024, 2, 1, 21, 30, tzinfo=UTC)
    assert e.acquired_utc.utcoffset() == timedelta(0)
    assert session.start_utc == datetime(2024, 2, 1, 23, 0, tzinfo=UTC)


def test_movie_found_next_to_mdoc_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, mdoc())
    (path.parent / "movie_0001.tif").touch()
    session, (e,) = read_mdoc(path)
    assert e.movie_path == path.parent / "movie_0001.tif"
    assert session.movie_folder == path.parent


def test_longest_path_map_prefix_wins(tmp_path: Path) -> None:
    path_map = {"X:\\": tmp_path / "a", "x:\\Frames": tmp_path / "b"}
    mapped = map_windows_path("X:\\frames\\sub\\Movie.TIF", path_map)
    assert mapped == tmp_path / "b" / "sub" / "Movie.TIF"
    assert map_windows_path("Y:\\frames\\m.tif", path_map) is None


def test_several_frame_sets_get_indexed_ids_without_subframepath(
    tmp_path: Path,
) -> None:
    body = SECTION.replace("SubFramePath = X:\\frames\\movie_0001.tif\n", "")
    text = mdoc(body + "\n" + body.replace("[FrameSet = 0]", "[FrameSet = 1]"))
    _, exposures = read_mdoc(write(tmp_path, text, "stack.mrc.mdoc"))
    assert [e.exposure_id for e in exposures] == ["stack_0", "stack_1"]


def test_frame_count_disagreement_is_a_warning(tmp_path: Path) -> None:
    text = mdoc(SECTION + "FrameDosesAndNumber = 1 40\n")
    _, (e,) = read_mdoc(write(tmp_path, text))
    assert e.n_frames == 50
    assert any("FrameDosesAndNumber lists 40" in w for w in e.warnings)


def test_duplicate_movies_in_a_session_keep_the_frame_mdoc(tmp_path: Path) -> None:
    write(tmp_path, mdoc(), "movie_0001.tif.mdoc")
    stack = mdoc(SECTION.replace("[FrameSet = 0]", "[ZValue = 0]"))
    write(tmp_path, stack, "ts.mrc.mdoc")
    _, exposures = scan_serialem_session(tmp_path / "session")
    (e,) = exposures
    assert e.kind is ImageKind.EXPOSURE
    assert "ts.mrc.mdoc" in e.warnings[-1]


@pytest.mark.parametrize(
    ("replace", "field"),
    [
        ("PixelSpacing = 0.83", "PixelSpacing = 0"),
        ("PixelSpacing = 0.83", "PixelSpacing = -1"),
        ("ExposureDose = 50", "ExposureDose = -3"),
        ("ExposureTime = 2.5", "ExposureTime = 0"),
        ("NumSubFrames = 50", "NumSubFrames = 0"),
        ("Binning = 1", "Binning = 0"),
        ("TiltAngle = 0.5", "TiltAngle = nan"),
        ("TiltAngle = 0.5", "TiltAngle = 1e999"),
        ("StagePosition = 1 2", "StagePosition = 1"),
        ("DateTime = 01-Feb-24  23:30:00", "DateTime = 31-Feb-24  23:30:00"),
        ("DateTime = 01-Feb-24  23:30:00", "DateTime = 01-Foo-24  23:30:00"),
        ("DateTime = 01-Feb-24  23:30:00", "DateTime = yesterday"),
        ("SpotSize = 8", "SpotSize = 8.5"),
        ("TiltAngle = 0.5", "TiltAngle 0.5"),
        ("[FrameSet = 0]", "[FrameSet = a]"),
        ("[FrameSet = 0]", "[Item = 0]"),
        ("CameraIndex = 1", "CameraIndex = 1\nCameraIndex = 2"),
    ],
)
def test_impossible_values_name_file_field_and_value(
    tmp_path: Path, replace: str, field: str
) -> None:
    path = write(tmp_path, mdoc(SECTION.replace(replace, field)))
    with pytest.raises(MetadataError) as caught:
        read_mdoc(path)
    error = caught.value
    assert error.path == path
    assert str(path) in str(error)
    key = field.split("=")[0].strip(" [")
    if "=" in field and key.isalpha() and "\n" not in field:
        assert key in error.field or error.field.startswith("line")


@pytest.mark.parametrize("voltage", ["0", "-300", "abc"])
def test_bad_voltage(tmp_path: Path, voltage: str) -> None:
    path = write(tmp_path, mdoc(header=f"Voltage = {voltage}\n"))
    with pytest.raises(MetadataError, match="Voltage"):
        read_mdoc(path)


def test_mdoc_without_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "PixelSpacing = 1\nVoltage = 300\n[T = title only]\n")
    with pytest.raises(MetadataError, match="sections") as caught:
        read_mdoc(path)
    assert caught.value.field == "sections"


def test_missing_required_keys(tmp_path: Path) -> None:
    for key in ("PixelSpacing", "ExposureTime"):
        body = "\n".join(
            line for line in SECTION.splitlines() if not line.startswith(key)
        )
        with pytest.raises(MetadataError, match=key):
            read_mdoc(write(tmp_path, mdoc(body)))


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="cannot read"):
        read_mdoc(tmp_path / "absent.mdoc")
    with pytest.raises(MetadataError, match="no mdoc"):
        scan_serialem_session(tmp_path)
