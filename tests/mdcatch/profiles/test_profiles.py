"""Detector and instrument profiles: the shipped TOML and site overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdcatch import CameraMode, MetadataError, MovieFormat
from mdcatch.profiles.detectors import GainFlip, load_profiles


def test_shipped_profiles_cover_the_detectors() -> None:
    profiles = load_profiles()
    expected = {
        "k2", "k2_super_resolution", "k3", "k3_super_resolution", "falcon3",
        "falcon4", "falcon4_eer", "falcon4i", "falcon4i_eer",
    }  # fmt: skip
    assert expected <= set(profiles.detectors)
    for profile in profiles.detectors.values():
        ny, nx = profile.physical_shape_px
        assert ny > 0
        assert nx > 0
        assert profile.gain_rotation_deg in {0, 90, 180, 270}
        assert profile.relion_gain_rot == profile.gain_rotation_deg // 90
    assert profiles.detectors["falcon4_eer"].physical_shape_px == (4096, 4096)
    assert profiles.detectors["k3"].physical_shape_px == (4092, 5760)
    assert profiles.detectors["k3_super_resolution"].movie_shape_px == (8184, 11520)
    assert profiles.detectors["falcon4_eer"].eer_grouping_target_e_per_a2 is not None
    assert profiles.detectors["k3"].eer_grouping_target_e_per_a2 is None


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("BM-Falcon", "falcon3"),  # EPU 2.6 MDCatch sample
        ("EF-CCD", "k3"),
        ("BioQuantum K3", "k3"),  # EPU 3.9 CommercialName
        ("Falcon 4i", "falcon4i"),
        ("falcon 4", "falcon4"),
        ("GIF-K3", "k3"),  # SerialEM camera name in the UMass title
        ("Gatan K2 Summit camera", "k2"),
    ],
)
def test_detector_names(name: str, key: str) -> None:
    assert load_profiles().detector(name).key == key


def test_unknown_detector_names_the_value() -> None:
    with pytest.raises(MetadataError, match="Ceta") as caught:
        load_profiles().detector("Ceta")
    assert caught.value.field == "detector"


def test_mode_variants() -> None:
    profiles = load_profiles()
    sr = profiles.detector_for("K3", camera_mode=CameraMode.SUPER_RESOLUTION)
    assert sr.key == "k3_super_resolution"
    assert sr.super_resolution_factor == 2
    eer = profiles.detector_for(
        "Falcon 4i", camera_mode=CameraMode.COUNTING, movie_format=MovieFormat.EER
    )
    assert eer.key == "falcon4i_eer"
    plain = profiles.detector_for("Falcon 3", camera_mode=CameraMode.COUNTING)
    assert plain.key == "falcon3"


def test_mtf_gain_and_cs() -> None:
    profiles = load_profiles()
    assert profiles.detector("K2").mtf_file(300.0) == "mtf_k2_300kV.star"
    assert profiles.detector("K2").mtf_file(200.2) == "mtf_k2_200kV.star"
    assert profiles.detector("Falcon 3").mtf_file(300.0) == "mtf_falcon3EC_300kV.star"
    assert profiles.detector("Falcon 4").mtf_file(200.0) == "mtf_falcon4EC_200kV.star"
    assert profiles.detector("Falcon 4i").mtf_file(300.0) is None
    k3 = profiles.detector("K3")
    assert k3.gain_flip is GainFlip.UPSIDE_DOWN
    assert k3.relion_gain_flip == 1
    assert profiles.detector("Falcon 4").relion_gain_flip == 0
    assert profiles.instrument_cs_mm("3299") == 2.7
    assert profiles.instrument_cs_mm("3632") == 2.7
    assert profiles.instrument_cs_mm("9999") is None


def test_mtf_files_named_in_profiles_exist_in_shared_data(shared_data: Path) -> None:
    """The three RELION curves in ../shared/data/real are the ones named here."""
    profiles = load_profiles()
    for name in ("K2", "Falcon 3", "Falcon 4"):
        file_name = profiles.detector(name).mtf_file(300.0)
        assert file_name is not None
        assert (shared_data / "real" / file_name).is_file()


def test_site_file_overrides_and_extends(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        """
[detectors.k3]
gain_rotation_deg = 90
gain_flip = "left_right"

[detectors.de64]
display_name = "DE-64"
physical_shape_px = [8192, 8192]
counting = true
super_resolution_factor = 1
gain_rotation_deg = 0
gain_flip = "none"
mtf_files = {}

[names]
"EF-CCD" = "k2"
"Apollo" = "de64"

[instruments."4001"]
cs_mm = 0.01
description = "Cs-corrected Krios"
"""
    )
    profiles = load_profiles(site)
    k3 = profiles.detector("K3")
    assert (k3.relion_gain_rot, k3.relion_gain_flip) == (1, 2)
    assert k3.mtf_file(300.0) == "mtf_k3_standard_300kV_FL2.star"  # kept
    assert profiles.detector("EF-CCD").key == "k2"
    assert profiles.detector("Apollo").physical_shape_px == (8192, 8192)
    assert profiles.instrument_cs_mm("4001") == 0.01
    assert profiles.instrument_cs_mm("3299") == 2.7


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[detectors.k3]\ngain_flip = "sideways"\n', "detectors.k3.gain_flip"),
        ("[detectors.k3]\ngain_rotation_deg = 45\n", "detectors.k3.gain_rotation_deg"),
        (
            "[detectors.k3]\nphysical_shape_px = [0, 5]\n",
            "detectors.k3.physical_shape_px",
        ),
        ("[detectors.k3]\ncolour = 1\n", "detectors.k3.colour"),
        ('[instruments."1"]\ncs_mm = -1\n', "instruments.1.cs_mm"),
        ('[names]\n"X" = "nope"\n', "names.X"),
        ('[detectors.new]\ndisplay_name = "n"\n', "detectors.new.physical_shape_px"),
        ("[detectors.k3\n", "TOML"),
    ],
)
def test_bad_site_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text(text)
    with pytest.raises(MetadataError) as caught:
        load_profiles(site)
    assert caught.value.field == key
    assert caught.value.path == site
