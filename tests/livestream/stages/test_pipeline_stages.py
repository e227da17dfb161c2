"""The motion adapter takes gain orientation and EER grouping from the profiles."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from livestream.stages.motion_ctf import _detector_settings
from mdcatch import CameraMode, Exposure, MetadataError, Optics, Software


def _exposure(detector: str, movie: str, gain: str | None) -> Exposure:
    return Exposure(
        exposure_id="x",
        software=Software.EPU,
        metadata_path=Path("/s/x.xml"),
        movie_path=Path("/m") / movie,
        acquired_utc=datetime(2026, 1, 1, tzinfo=UTC),
        optics=Optics(
            voltage_kv=300.0,
            pixel_size_a=0.8,
            detector=detector,
            camera_mode=CameraMode.COUNTING,
        ),
        exposure_time_s=2.0,
        total_dose_e_per_a2=40.0,
        n_frames=40,
        target_defocus_um=1.5,
        gain_reference_path=None if gain is None else Path("/m") / gain,
    )


def test_without_gain_or_eer_nothing_is_oriented() -> None:
    assert _detector_settings(_exposure("Nonexistent", "x.mrc", None), None) == (
        0,
        None,
        None,
    )


def test_k3_gain_is_flipped_upside_down_by_the_shipped_profile() -> None:
    exposure = _exposure("BioQuantum K3", "x_fractions.tiff", "gain.dm4")
    assert _detector_settings(exposure, None) == (0, "y", None)


def test_falcon_eer_gets_the_grouping_target() -> None:
    exposure = _exposure("Falcon 4i", "x_EER.eer", None)
    assert _detector_settings(exposure, None) == (0, None, pytest.approx(0.8))


def test_site_profile_overrides_the_orientation(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[detectors.k3]\ngain_rotation_deg = 90\ngain_flip = "left_right"\n'
    )
    exposure = _exposure("BioQuantum K3", "x_fractions.tiff", "gain.dm4")
    assert _detector_settings(exposure, site) == (90, "x", None)


def test_unknown_detector_with_a_gain_is_refused() -> None:
    with pytest.raises(MetadataError, match="Mystery Cam"):
        _detector_settings(_exposure("Mystery Cam", "x.tiff", "gain.mrc"), None)
