"""Records are immutable, comparable and cross process boundaries (pickle)."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest

from mdcatch import Exposure, MetadataError, Optics, Software
from mdcatch.records import FrozenMap


def _exposure() -> Exposure:
    return Exposure(
        exposure_id="FoilHole_1_Data_2_3_20250101_000000",
        software=Software.EPU,
        metadata_path=Path("/s/x.xml"),
        movie_path=None,
        acquired_utc=datetime(2025, 1, 1, tzinfo=UTC),
        optics=Optics(voltage_kv=300.0, pixel_size_a=0.83),
        exposure_time_s=2.0,
        total_dose_e_per_a2=40.0,
        n_frames=40,
        target_defocus_um=1.5,
        extra=MappingProxyType({"OpticalGroup": "3"}),
    )


def test_extra_is_frozen_picklable_and_equal_to_a_dict() -> None:
    exposure = _exposure()
    assert isinstance(exposure.extra, FrozenMap)
    assert exposure.extra == {"OpticalGroup": "3"}
    back = pickle.loads(pickle.dumps(exposure))
    assert back == exposure
    assert back.dose_per_frame_e_per_a2 == pytest.approx(1.0)
    with pytest.raises(TypeError):
        exposure.extra["OpticalGroup"] = "4"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        exposure.n_frames = 3  # type: ignore[misc]


def test_metadata_error_keeps_its_fields_across_pickle() -> None:
    error = MetadataError("/s/x.xml", "pixelSize", 0, "must be positive")
    back = pickle.loads(pickle.dumps(error))
    assert (back.path, back.field, back.value, back.reason) == (
        Path("/s/x.xml"),
        "pixelSize",
        0,
        "must be positive",
    )
    assert "pixelSize" in str(back)
    assert "x.xml" in str(back)
