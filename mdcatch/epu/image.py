"""Sections of an EPU ``MicroscopeImage``: camera, defocus, energy filter, stage.

Each reader takes an :class:`ImageDocument` (the parsed tree, its two key/value
dictionaries and the warnings collected so far) and returns typed values in the
record's units.  Values are found by element name and dictionary key, never by
position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from mdcatch.epu.xml_values import (
    DEGREES_PER_RADIAN,
    DRAWING,
    SO,
    TYPES,
    element_text,
    is_nil,
    key_values,
    parse_bool,
    parse_float,
    parse_int,
)
from mdcatch.errors import MetadataError
from mdcatch.records import CameraMode

__all__ = [
    "CameraSettings",
    "ImageDocument",
    "read_camera",
    "read_slit_ev",
    "read_stage",
    "require_positive",
]

CAMERA = ("microscopeData", "acquisition", "camera")
OPTICS = ("microscopeData", "optics")


def so_path(*parts: str) -> str:
    """ElementPath of nested elements in the Fei.SharedObjects namespace."""
    return "/".join(f"{{{SO}}}{p}" for p in parts)


@dataclass(slots=True)
class ImageDocument:
    """A parsed ``MicroscopeImage`` with CustomData and CameraSpecificInput by key."""

    root: etree._Element
    path: Path
    custom: dict[str, etree._Element] = field(init=False)
    camera_input: dict[str, etree._Element] = field(init=False)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.custom = key_values(
            self.root.find(f"{{{SO}}}CustomData"), self.path, "CustomData"
        )
        self.camera_input = key_values(
            self.root.find(so_path(*CAMERA, "CameraSpecificInput")),
            self.path,
            "CameraSpecificInput",
        )

    def text(self, *parts: str, tail: str = "") -> str | None:
        """Text at ``parts`` (Fei.SharedObjects names) plus an optional raw tail."""
        return element_text(self.root.find(so_path(*parts) + tail))

    def number(self, *parts: str, field: str, scale_exp: int = 0) -> float:
        return parse_float(self.text(*parts), self.path, field, scale_exp=scale_exp)

    def optional_number(
        self, *parts: str, field: str, scale_exp: int = 0
    ) -> float | None:
        text = self.text(*parts)
        return (
            None
            if text is None
            else parse_float(text, self.path, field, scale_exp=scale_exp)
        )

    def custom_text(self, key: str) -> str | None:
        return element_text(self.custom.get(key))

    def pair(self, *parts: str, field: str) -> tuple[float, float] | None:
        element = self.root.find(so_path(*parts))
        if element is None or is_nil(element):
            return None
        x, y = (
            parse_float(
                element_text(element.find(f"{{{TYPES}}}{a}")), self.path, f"{field}.{a}"
            )
            for a in ("_x", "_y")
        )
        return (x, y)


def require_positive(
    value: float, path: Path, field: str, reason: str, *, allow_zero: bool = False
) -> float:
    """``value`` unless it is negative (or zero, unless ``allow_zero``)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise MetadataError(path, field, value, reason)
    return value


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """Detector as EPU describes it; ``detector`` is the commercial name if known."""

    camera_name: str
    detector: str
    mode: CameraMode
    super_resolution_factor: int
    binning: int


def read_camera(doc: ImageDocument) -> CameraSettings:
    """Camera name, commercial name, counting / super-resolution and binning."""
    path = doc.path
    name = doc.text(*CAMERA, "Name")
    if name is None:
        raise MetadataError(path, "camera.Name", None, "missing")
    commercial = doc.custom_text("DetectorCommercialName") or doc.custom_text(
        f"Detectors[{name}].CommercialName"
    )
    counting_element = doc.camera_input.get("ElectronCountingEnabled")
    if counting_element is None:
        counting_element = doc.custom.get(f"Detectors[{name}].ElectronCounted")
    if counting_element is None:
        counting = False
        doc.warnings.append(
            "ElectronCountingEnabled not recorded; assuming integrating"
        )
    else:
        counting = parse_bool(
            element_text(counting_element), path, "ElectronCountingEnabled"
        )
    factor = 1
    if "SuperResolutionFactor" in doc.camera_input:
        text = element_text(doc.camera_input["SuperResolutionFactor"])
        factor = parse_int(text, path, "SuperResolutionFactor")
        if factor < 1:
            raise MetadataError(
                path, "SuperResolutionFactor", factor, "must be at least 1"
            )
    binning = parse_int(
        doc.text(*CAMERA, "Binning", tail=f"/{{{DRAWING}}}x"), path, "Binning"
    )
    if binning < 1:
        raise MetadataError(path, "Binning", binning, "must be at least 1")
    mode = CameraMode.INTEGRATING
    if counting:
        # The K3 counts in super-resolution (factor 2) but EPU bins the saved movie
        # by ``Binning``: with Binning 2 the movie is at the physical pixel, so it is
        # a counting movie; only factor > binning leaves super-resolution pixels.
        super_res = factor > binning
        mode = CameraMode.SUPER_RESOLUTION if super_res else CameraMode.COUNTING
    return CameraSettings(name, commercial or name, mode, factor, binning)


def read_slit_ev(doc: ImageDocument) -> float | None:
    """Energy-filter slit width (eV) when the slit is inserted, else ``None``."""
    energy_filter = doc.root.find(so_path(*OPTICS, "EnergyFilter"))
    if energy_filter is None or is_nil(energy_filter):
        return None
    inserted = element_text(energy_filter.find(f"{{{SO}}}EnergySelectionSlitInserted"))
    if inserted is None or not parse_bool(
        inserted, doc.path, "EnergySelectionSlitInserted"
    ):
        return None
    width = parse_float(
        element_text(energy_filter.find(f"{{{SO}}}EnergySelectionSlitWidth")),
        doc.path,
        "EnergySelectionSlitWidth",
    )
    return require_positive(
        width,
        doc.path,
        "EnergySelectionSlitWidth",
        "an inserted slit has a positive width",
    )


def read_stage(
    doc: ImageDocument,
) -> tuple[tuple[float, float, float] | None, float | None]:
    """Stage position (µm, from metres) and alpha tilt (degrees, from radians)."""
    position = doc.root.find(so_path("microscopeData", "stage", "Position"))
    if position is None or is_nil(position):
        return None, None
    texts = [element_text(position.find(f"{{{SO}}}{axis}")) for axis in "XYZ"]
    xyz = None
    if all(t is not None for t in texts):
        x, y, z = (
            parse_float(t, doc.path, f"stage.{axis}", scale_exp=6)
            for t, axis in zip(texts, "XYZ", strict=True)
        )
        xyz = (x, y, z)
    alpha_text = element_text(position.find(f"{{{SO}}}A"))
    alpha = None
    if alpha_text is not None:
        alpha = parse_float(alpha_text, doc.path, "stage.A", factor=DEGREES_PER_RADIAN)
    return xyz, alpha
