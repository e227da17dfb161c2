"""A continuous tilt series recorded as one SerialEM frame set: ``[ZValue]``
sections inherit the ``[FrameSet]`` values and become sub-exposures of the movie;
write_mdoc writes that shape back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mdcatch import ImageKind
from mdcatch.errors import MetadataError
from mdcatch.serialem.mdoc import read_mdoc
from mdcatch.serialem.writer import write_mdoc

FRAME_SET_TS = """\
PixelSpacing = 1.35
Voltage = 300
ImageFile = TS_07.mrc

[T = SerialEM: Digitized on EMBL Krios    07-Dec-26  00:10:00]

[FrameSet = 0]
PixelSpacing = 1.35
Voltage = 300
SubFramePath = X:\\frames\\TS_07_frames.tif
NumSubFrames = 30
FrameDosesAndNumber = 0.3 30
DateTime = 07-Dec-26  00:10:05
ExposureTime = 6
Binning = 1
TargetDefocus = -3.5

[ZValue = 0]
TiltAngle = 0.02
FrameTSStartEndFrames = 0 9
PriorRecordDose = 0
ExposureDose = 3

[ZValue = 1]
TiltAngle = 3.01
FrameTSStartEndFrames = 10 19
PriorRecordDose = 3
ExposureDose = 3

[ZValue = 2]
TiltAngle = -2.99
FrameTSStartEndFrames = 20 29
PriorRecordDose = 6
ExposureDose = 3.5
"""


@pytest.fixture
def frame_ts(tmp_path: Path) -> Path:
    (tmp_path / "TS_07_frames.tif").write_bytes(b"")
    path = tmp_path / "TS_07.mrc.mdoc"
    path.write_text(FRAME_SET_TS.replace("\n", "\r\n"), encoding="utf-8")
    return path


def test_zvalues_inherit_the_frame_set(frame_ts: Path) -> None:
    _, exposures = read_mdoc(frame_ts)
    assert [e.exposure_id for e in exposures] == [
        "TS_07_frames_000",
        "TS_07_frames_001",
        "TS_07_frames_002",
    ]
    movie = frame_ts.parent / "TS_07_frames.tif"
    for e in exposures:  # the frame set's values, inherited
        assert e.kind is ImageKind.TILT
        assert e.movie_path == movie
        assert e.optics.pixel_size_a == 1.35
        assert e.optics.voltage_kv == 300.0
        assert e.n_frames == 30
        assert e.frame_doses == ((30, 0.3),)
        assert e.exposure_time_s == 6.0
        assert e.target_defocus_um == 3.5
        assert e.acquired_utc.isoformat() == "2026-12-07T00:10:05+00:00"
        assert not {"FrameTSStartEndFrames", "PriorRecordDose"} & set(e.extra)
    assert [e.frame_range for e in exposures] == [(0, 9), (10, 19), (20, 29)]
    assert [e.stage_alpha_deg for e in exposures] == [0.02, 3.01, -2.99]
    assert [e.total_dose_e_per_a2 for e in exposures] == [3.0, 3.0, 3.5]
    assert [e.prior_dose_e_per_a2 for e in exposures] == [0.0, 3.0, 6.0]
    assert [e.n_exposure_frames for e in exposures] == [10, 10, 10]
    assert exposures[2].dose_per_frame_e_per_a2 == pytest.approx(0.35)


def test_frame_set_tilt_series_round_trip(frame_ts: Path, tmp_path: Path) -> None:
    session, exposures = read_mdoc(frame_ts)
    out = tmp_path / "written" / "TS_07.mrc.mdoc"
    out.parent.mkdir()
    (out.parent / "TS_07_frames.tif").write_bytes(b"")
    write_mdoc(session, exposures, out, frames_prefix="X:\\frames")
    text = out.read_text(encoding="utf-8")
    # the same shape: one frame set holding the movie, ZValues with per-tilt values
    assert text.count("[FrameSet = ") == 1
    assert text.count("[ZValue = ") == 3
    zvalue = text.split("[ZValue = 1]")[1].split("[ZValue = 2]")[0]
    assert {line.split(" = ")[0] for line in zvalue.split() if " = " in line} <= {
        "TiltAngle",
        "FrameTSStartEndFrames",
        "ExposureDose",
        "PriorRecordDose",
    }
    assert "SubFramePath" not in zvalue
    assert "PixelSpacing" not in zvalue
    _, back = read_mdoc(out)
    moved = out.parent / "TS_07_frames.tif"
    expected = [replace(e, metadata_path=out, movie_path=moved) for e in exposures]
    assert back == expected


def test_a_tilt_that_differs_keeps_its_own_value(
    frame_ts: Path, tmp_path: Path
) -> None:
    session, exposures = read_mdoc(frame_ts)
    changed = [exposures[0], replace(exposures[1], exposure_time_s=4.0), exposures[2]]
    out = write_mdoc(session, changed, tmp_path / "again.mdoc")
    _, back = read_mdoc(out)
    assert [e.exposure_time_s for e in back] == [6.0, 4.0, 6.0]


@pytest.mark.parametrize("frames", ["25 35", "9 3", "-1 4", "2.5 4"])
def test_bad_frame_range_is_named(frame_ts: Path, frames: str) -> None:
    frame_ts.write_text(FRAME_SET_TS.replace("20 29", frames), encoding="utf-8")
    with pytest.raises(MetadataError, match="FrameTSStartEndFrames") as info:
        read_mdoc(frame_ts)
    assert str(frame_ts) in str(info.value)
    assert frames in str(info.value)


def test_plain_tilt_stack_is_unchanged(tmp_path: Path) -> None:
    """ZValue sections without a frame range inherit nothing from a frame set
    (each is its own exposure, as before)."""
    text = FRAME_SET_TS.replace("FrameTSStartEndFrames", "FrameRangeNote")
    path = tmp_path / "stack.mdoc"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "TS_07_frames.tif").write_bytes(b"")
    with pytest.raises(MetadataError, match=r"PixelSpacing|ExposureTime"):
        read_mdoc(path)  # a plain ZValue inherits nothing from a frame set
