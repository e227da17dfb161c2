"""A SerialEM frame-set tilt series (several tilts in one movie) is quarantined
with a clear error: motion correction of a frame range is not supported yet, and
the whole movie must not be processed as one exposure."""

from __future__ import annotations

from pathlib import Path

import pytest

from livestream.intake.pairing import parse_exposure
from livestream.intake.settle import FileKind
from mdcatch.errors import MetadataError
from mdcatch.profiles.detectors import load_profiles
from tests.mdcatch.serialem.test_serialem_frame_ts import FRAME_SET_TS


def test_frame_set_tilt_series_is_quarantined(tmp_path: Path) -> None:
    movie = tmp_path / "TS_07_frames.tif"
    movie.write_bytes(b"")
    mdoc = tmp_path / "TS_07_frames.tif.mdoc"
    mdoc.write_text(FRAME_SET_TS, encoding="utf-8")
    with pytest.raises(MetadataError, match="frame range is not supported") as info:
        parse_exposure("TS_07_frames", mdoc, FileKind.MDOC, movie, load_profiles())
    assert str(mdoc) in str(info.value)
    assert "FrameTSStartEndFrames" in str(info.value)
    assert "3 tilts in one movie" in str(info.value)
