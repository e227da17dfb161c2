"""Detector and instrument profiles (the shipped ``profiles.toml`` plus a site override): gain orientation, EER grouping, super-resolution."""

from mdcatch.profiles.detectors import (
    DetectorProfile,
    GainFlip,
    Profiles,
    load_profiles,
)

__all__ = [
    "DetectorProfile",
    "GainFlip",
    "Profiles",
    "load_profiles",
]
