"""reconcile(): Cs from profiles, pixel size and frames against the movie header."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mdcatch import (
    CameraMode,
    Exposure,
    MovieFormat,
    MovieHeader,
    Optics,
    Software,
)
from mdcatch.crosscheck import reconcile
from mdcatch.profiles.detectors import Profiles, load_profiles
from mdcatch.serialem.mdoc import read_mdoc


@pytest.fixture(scope="module")
def profiles() -> Profiles:
    return load_profiles()


def epu_k3(**optics: object) -> Exposure:
    """The smartem-decisions K3 exposure as the EPU reader reports it."""
    base = Optics(
        voltage_kv=300.0,
        pixel_size_a=1.0559,
        detector="BioQuantum K3",
        camera_mode=CameraMode.COUNTING,
        super_resolution_factor=2,
        binning=2.0,
        instrument_id="3632",
    )
    return Exposure(
        exposure_id="FoilHole_9015883_Data_9017347_6_20250108_154915",
        software=Software.EPU,
        metadata_path=Path("FoilHole_9015883_Data_9017347_6_20250108_154915.xml"),
        movie_path=Path(
            "FoilHole_9015883_Data_9017347_6_20250108_154915_fractions.tiff"
        ),
        acquired_utc=datetime(2025, 1, 8, 15, 49, 15, tzinfo=UTC),
        optics=replace(base, **optics),  # type: ignore[arg-type]
        exposure_time_s=0.89,
        total_dose_e_per_a2=14.41,
        n_frames=50,
        target_defocus_um=1.5,
    )


def header(
    shape: tuple[int, int, int], fmt: MovieFormat, pixel: float | None = None
) -> MovieHeader:
    return MovieHeader(
        path=Path("movie"), format=fmt, shape=shape, dtype="uint8", pixel_size_a=pixel
    )


def test_cs_from_instrument_profile(profiles: Profiles) -> None:
    out = reconcile(epu_k3(), None, profiles)
    assert out.optics.cs_mm == 2.7
    assert out.warnings == ()


def test_unknown_instrument_gets_default_cs_with_warning(profiles: Profiles) -> None:
    out = reconcile(epu_k3(instrument_id="1234"), None, profiles)
    assert out.optics.cs_mm == 2.7
    (warning,) = out.warnings
    assert "Cs unknown for instrument '1234'" in warning
    assert "rule: default Cs" in warning


def test_consistent_k3_counting_movie(profiles: Profiles) -> None:
    out = reconcile(epu_k3(), header((50, 4092, 5760), MovieFormat.TIFF), profiles)
    assert out.optics.pixel_size_a == 1.0559
    assert out.warnings == ()


def test_k3_super_resolution_movie_halves_the_pixel(profiles: Profiles) -> None:
    """The classic: EPU reports the binned pixel, the movie is super-resolution."""
    out = reconcile(epu_k3(), header((50, 8184, 11520), MovieFormat.TIFF), profiles)
    assert out.optics.pixel_size_a == pytest.approx(1.0559 / 2)
    assert out.optics.camera_mode is CameraMode.SUPER_RESOLUTION
    assert out.optics.super_resolution_factor == 2
    assert out.optics.binning == 0.5
    (warning,) = out.warnings
    assert "super-resolution ambiguity" in warning
    assert "11520x8184" in warning
    assert out.n_frames == 50


def test_serialem_super_resolution_saved_at_physical_size(
    shared_data: Path, profiles: Profiles
) -> None:
    """Real GIF-K3 mdoc says Binning 0.5 (super-res); a physical-size movie doubles the pixel."""
    _, (e,) = read_mdoc(
        shared_data / "sessions/serialem/mdocfile/frame_set_single.mdoc"
    )
    same = reconcile(e, header((12, 8184, 11520), MovieFormat.TIFF), profiles)
    assert same.optics.pixel_size_a == 1.2827
    (warning,) = same.warnings
    assert warning.startswith("no Cs and no instrument ID in the metadata: assumed 2.7")
    binned = reconcile(e, header((12, 4092, 5760), MovieFormat.TIFF), profiles)
    assert binned.optics.pixel_size_a == pytest.approx(2 * 1.2827)
    assert binned.optics.camera_mode is CameraMode.COUNTING
    assert any("detector profile" in w for w in binned.warnings)


def test_real_mdoc_cs_is_kept_and_missing_detector_said(
    shared_data: Path, profiles: Profiles
) -> None:
    path = (
        shared_data
        / "sessions/serialem/MDCatch/img_h1_s2_i374_movie_00001_Jul30_07.56.47.tif.mdoc"
    )
    _, (e,) = read_mdoc(path)
    out = reconcile(e, header((40, 8184, 11520), MovieFormat.TIFF), profiles)
    assert out.optics.cs_mm == 2.7
    assert out.optics.pixel_size_a == 0.50226
    (warning,) = out.warnings
    assert "names no detector" in warning


def test_cropped_readout_is_not_judged(profiles: Profiles) -> None:
    out = reconcile(epu_k3(), header((50, 2046, 2880 + 1), MovieFormat.TIFF), profiles)
    assert out.optics.pixel_size_a == 1.0559
    assert out.warnings == ()


@pytest.mark.parametrize(
    ("movie_pixel", "expected", "rule"),
    [
        (1.0559, 1.0559, None),
        (1.0559 * 1.005, 1.0559, None),
        (0.52795, 0.52795, "super-resolution movie"),
        (2.1118, 2.1118, "binned by 2 movie"),
        (1.0, 1.0559, "not trusted"),
    ],
)
def test_mrc_header_pixel(
    profiles: Profiles, movie_pixel: float, expected: float, rule: str | None
) -> None:
    out = reconcile(
        epu_k3(), header((50, 4092, 5760), MovieFormat.MRC, movie_pixel), profiles
    )
    assert out.optics.pixel_size_a == pytest.approx(expected)
    if rule is None:
        assert out.warnings == ()
    else:
        (warning,) = out.warnings
        assert rule in warning


def test_eer_raw_frames_replace_fractions(profiles: Profiles) -> None:
    e = replace(
        epu_k3(),
        optics=Optics(
            voltage_kv=300.0,
            pixel_size_a=0.73,
            detector="Falcon 4i",
            instrument_id="3299",
        ),
        total_dose_e_per_a2=40.0,
        n_frames=40,
    )
    out = reconcile(e, header((1000, 4096, 4096), MovieFormat.EER), profiles)
    assert out.n_frames == 1000
    assert out.frame_doses == ((1000, pytest.approx(0.04)),)
    target = profiles.detectors["falcon4i_eer"].eer_grouping_target_e_per_a2
    assert target is not None
    group = int(out.extra["eer_group_frames"])
    assert group == round(target / 0.04)
    assert out.extra["eer_fractions_in_metadata"] == "40"
    assert out.optics.pixel_size_a == 0.73
    (warning,) = out.warnings
    assert "EER movie has 1000 raw frames, metadata 40 fractions" in warning
    assert out.total_dose_e_per_a2 == 40.0


def test_frame_count_mismatch_header_wins(profiles: Profiles) -> None:
    out = reconcile(epu_k3(), header((48, 4092, 5760), MovieFormat.TIFF), profiles)
    assert out.n_frames == 48
    (warning,) = out.warnings
    assert "movie header wins" in warning


def test_reconcile_keeps_earlier_warnings_and_is_idempotent(profiles: Profiles) -> None:
    e = replace(epu_k3(), warnings=("from the parser",))
    h = header((50, 8184, 11520), MovieFormat.TIFF)
    once = reconcile(e, h, profiles)
    assert once.warnings[0] == "from the parser"
    assert reconcile(once, h, profiles) == once
