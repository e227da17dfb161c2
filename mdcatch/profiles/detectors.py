"""Detector and instrument profiles: what the metadata does not say.

Example::

    from mdcatch.profiles.detectors import load_profiles
    profiles = load_profiles()                       # or load_profiles(Path("site.toml"))
    k3 = profiles.detector("BioQuantum K3")
    k3.relion_gain_rot, k3.relion_gain_flip, k3.mtf_file(300.0)
    profiles.instrument_cs_mm("3299")                # 2.7

The shipped ``profiles.toml`` (inside the package) covers K2, K3 (counting and
super-resolution), Falcon 3, Falcon 4, Falcon 4i and Falcon 4/4i EER; a site file
of the same layout overrides single fields or adds detectors, names and
instruments.  A bad site file raises :class:`~mdcatch.errors.MetadataError`
naming the key.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from mdcatch.errors import MetadataError
from mdcatch.profiles.schema import DetectorEntry, ProfilesFile
from mdcatch.records import CameraMode, MovieFormat

__all__ = ["DetectorProfile", "GainFlip", "Profiles", "load_profiles"]

SHIPPED = "profiles.toml"


class GainFlip(enum.Enum):
    """Flip of the gain reference, applied after the rotation."""

    NONE = "none"
    UPSIDE_DOWN = "upside_down"
    LEFT_RIGHT = "left_right"

    @property
    def relion_code(self) -> int:
        """RELION's ``--gain_flip`` (and MotionCor2's ``-FlipGain``) value."""
        return {"none": 0, "upside_down": 1, "left_right": 2}[self.value]


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorProfile:
    """What mdcatch knows about one detector in one readout mode."""

    key: str
    display_name: str
    physical_shape_px: tuple[int, int]
    counting: bool
    super_resolution_factor: int
    gain_rotation_deg: int
    gain_flip: GainFlip
    mtf_files: Mapping[int, str]
    eer_grouping_target_e_per_a2: float | None = None
    super_resolution_variant: str | None = None
    eer_variant: str | None = None

    @property
    def movie_shape_px(self) -> tuple[int, int]:
        """``(ny, nx)`` of a full-frame movie in this mode."""
        ny, nx = self.physical_shape_px
        return ny * self.super_resolution_factor, nx * self.super_resolution_factor

    @property
    def relion_gain_rot(self) -> int:
        """RELION's ``--gain_rot`` (MotionCor2 ``-RotGain``): 90° steps, counter-clockwise."""
        return self.gain_rotation_deg // 90

    @property
    def relion_gain_flip(self) -> int:
        return self.gain_flip.relion_code

    def mtf_file(self, voltage_kv: float) -> str | None:
        """The MTF file name for ``voltage_kv`` (nearest whole kV), or None."""
        return self.mtf_files.get(round(voltage_kv))


def _fold(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True, slots=True)
class Profiles:
    """Detector profiles by key, the name table, and Cs by instrument ID."""

    source: Path
    detectors: Mapping[str, DetectorProfile]
    names: Mapping[str, str]
    instruments_cs_mm: Mapping[str, float]

    def detector(self, name: str) -> DetectorProfile:
        """The profile for a camera name as EPU or SerialEM writes it.

        Exact match first (ignoring case, spaces and punctuation) on the name
        table, the keys and the display names; then the longest known name
        contained in ``name`` (``"Gatan K3 camera"`` -> K3).
        """
        folded = _fold(name)
        table = {_fold(k): v for k, v in self.names.items()}
        for known, profile in self.detectors.items():
            table.setdefault(_fold(known), known)
            table.setdefault(_fold(profile.display_name), known)
        key = table.get(folded)
        if key is None and folded:
            contained = [alias for alias in table if alias and alias in folded]
            if contained:
                key = table[max(contained, key=len)]
        if key is None or key not in self.detectors:
            raise MetadataError(
                self.source,
                "detector",
                name,
                "no detector profile matches; add the name under [names] in a site file",
            )
        return self.detectors[key]

    def detector_for(
        self,
        name: str,
        *,
        camera_mode: CameraMode,
        movie_format: MovieFormat | None = None,
    ) -> DetectorProfile:
        """The profile of ``name`` in the readout mode the exposure used."""
        profile = self.detector(name)
        variant = None
        if movie_format is MovieFormat.EER:
            variant = profile.eer_variant
        elif camera_mode is CameraMode.SUPER_RESOLUTION:
            variant = profile.super_resolution_variant
        return self.detectors.get(variant, profile) if variant else profile

    def instrument_cs_mm(self, instrument_id: str) -> float | None:
        """Spherical aberration (mm) of an instrument, or None if unknown."""
        return self.instruments_cs_mm.get(instrument_id.strip())


def load_profiles(site_file: Path | None = None) -> Profiles:
    """The shipped profiles, overridden and extended by ``site_file`` if given."""
    shipped_text = (
        resources.files("mdcatch.profiles").joinpath(SHIPPED).read_text("utf-8")
    )
    shipped_path = Path(str(resources.files("mdcatch.profiles").joinpath(SHIPPED)))
    merged = _validate(shipped_path, _parse(shipped_path, shipped_text))
    source = shipped_path
    if site_file is not None:
        site_file = Path(site_file)
        try:
            text = site_file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise MetadataError(
                site_file, "file", str(site_file), f"cannot read: {error}"
            ) from error
        site = _validate(site_file, _parse(site_file, text))
        merged = _merge(merged, site)
        source = site_file
    return _build(source, merged)


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise MetadataError(path, "TOML", text[:40], str(error)) from error


def _validate(path: Path, data: dict[str, Any]) -> ProfilesFile:
    try:
        return ProfilesFile.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise MetadataError(path, key, first.get("input"), first["msg"]) from error


def _merge(base: ProfilesFile, site: ProfilesFile) -> ProfilesFile:
    detectors = dict(base.detectors)
    for key, entry in site.detectors.items():
        old = detectors.get(key)
        fields = entry.model_dump(exclude_none=True)
        detectors[key] = old.model_copy(update=fields) if old else entry
    return ProfilesFile(
        detectors=detectors,
        names={**base.names, **site.names},
        instruments={**base.instruments, **site.instruments},
    )


def _build(source: Path, data: ProfilesFile) -> Profiles:
    detectors = {
        key: _detector(source, key, entry) for key, entry in data.detectors.items()
    }
    for key, profile in detectors.items():
        for variant in (profile.super_resolution_variant, profile.eer_variant):
            if variant is not None and variant not in detectors:
                raise MetadataError(
                    source, f"detectors.{key}", variant, "names an unknown detector"
                )
    for name, key in data.names.items():
        if key not in detectors:
            raise MetadataError(
                source, f"names.{name}", key, "names an unknown detector"
            )
    return Profiles(
        source=source,
        detectors=MappingProxyType(detectors),
        names=MappingProxyType(dict(data.names)),
        instruments_cs_mm=MappingProxyType(
            {k: v.cs_mm for k, v in data.instruments.items()}
        ),
    )


def _detector(source: Path, key: str, entry: DetectorEntry) -> DetectorProfile:
    required = (
        "display_name",
        "physical_shape_px",
        "counting",
        "super_resolution_factor",
        "gain_rotation_deg",
        "gain_flip",
        "mtf_files",
    )
    for field in required:
        if getattr(entry, field) is None:
            raise MetadataError(
                source, f"detectors.{key}.{field}", None, "required for a new detector"
            )
    return DetectorProfile(
        key=key,
        display_name=str(entry.display_name),
        physical_shape_px=entry.physical_shape_px or (0, 0),
        counting=bool(entry.counting),
        super_resolution_factor=int(entry.super_resolution_factor or 1),
        gain_rotation_deg=int(entry.gain_rotation_deg or 0),
        gain_flip=GainFlip(entry.gain_flip),
        mtf_files=MappingProxyType(dict(entry.mtf_files or {})),
        eer_grouping_target_e_per_a2=entry.eer_grouping_target_e_per_a2,
        super_resolution_variant=entry.super_resolution_variant,
        eer_variant=entry.eer_variant,
    )
