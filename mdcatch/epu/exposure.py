"""Read one EPU ``MicroscopeImage`` XML (``FoilHole_*_Data_*.xml``) into an Exposure.

Values are looked up by element name and by dictionary key (CustomData and
CameraSpecificInput are ``KeyValueOfstringanyType`` dictionaries), never by position.
Units are converted on the way in: metres to Å/µm, e/m² to e/Å² (1e20 e/m² =
1 e/Å²), volts to kV, radians to degrees.  EPU writes defocus negative for
underfocus; the record holds it positive.

Example::

    exposure = read_epu_exposure(Path("FoilHole_1_Data_2_3_20200320_090200.xml"))
    exposure.optics.pixel_size_a, exposure.n_frames, exposure.target_defocus_um
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import MappingProxyType

from mdcatch.epu.fractionation import Fractionation, fraction_doses, read_fractionation
from mdcatch.epu.image import (
    CAMERA,
    OPTICS,
    ImageDocument,
    read_camera,
    read_slit_ev,
    read_stage,
    require_positive,
)
from mdcatch.epu.xml_values import (
    DRAWING,
    SO,
    element_text,
    parse_bool,
    parse_datetime_utc,
    parse_float,
    parse_int,
    read_xml_root,
)
from mdcatch.errors import MetadataError
from mdcatch.records import Exposure, ImageKind, Optics, Software

__all__ = ["image_kind_from_name", "read_epu_exposure"]

# CustomData keys that become record fields; every other key goes to ``extra``.
_MAPPED_CUSTOM = frozenset(
    {"Dose", "DoseRate", "AppliedDefocus", "PhasePlateUsed", "DetectorCommercialName"}
)
_GRID_SQUARE_DIR = re.compile(r"GridSquare_(\d+)")
_FOIL_HOLE_NAME = re.compile(r"FoilHole_(\d+)_")


def image_kind_from_name(name: str) -> ImageKind | None:
    """What an EPU image is for, from its file name; ``None`` when the name is not
    one EPU uses (the content then decides)."""
    if name.startswith("GridSquare_"):
        return ImageKind.GRID_SQUARE
    if name.startswith("FoilHole_"):
        return ImageKind.EXPOSURE if "_Data_" in name else ImageKind.FOIL_HOLE
    if name.startswith(("Tile_", "Atlas")):
        return ImageKind.ATLAS
    return None


def _image_kind(doc: ImageDocument, fractions: Fractionation | None) -> ImageKind:
    kind = image_kind_from_name(doc.path.name)
    if kind is None and fractions is None:
        raise MetadataError(
            doc.path,
            "name",
            doc.path.name,
            "not an EPU image name and no fractionation",
        )
    if kind in (None, ImageKind.EXPOSURE) and fractions is None:
        raise MetadataError(
            doc.path,
            "FractionationSettings",
            None,
            "Data image without fractionation (no movie saved)",
        )
    return ImageKind.EXPOSURE if kind is None else kind


def _read_defocus_um(doc: ImageDocument, kind: ImageKind) -> tuple[float, float | None]:
    """(target, current) defocus in µm, positive for underfocus."""
    current = doc.optional_number(*OPTICS, "Defocus", field="Defocus", scale_exp=6)
    current = None if current is None else -current
    applied = doc.custom_text("AppliedDefocus")
    if "AppliedDefocus" in doc.custom:
        return -parse_float(applied, doc.path, "AppliedDefocus", scale_exp=6), current
    if kind is not ImageKind.EXPOSURE and current is not None:
        doc.warnings.append(
            "AppliedDefocus not recorded; target is the current defocus"
        )
        return current, current
    raise MetadataError(doc.path, "AppliedDefocus", None, "missing")


def _read_dose(doc: ImageDocument, kind: ImageKind) -> tuple[float, float | None]:
    """Total dose (e/Å², from CustomData ``Dose`` in e/m²) and ``DoseRate``."""
    is_exposure = kind is ImageKind.EXPOSURE
    dose = parse_float(doc.custom_text("Dose"), doc.path, "Dose", scale_exp=-20)
    require_positive(
        dose, doc.path, "Dose", "dose must be positive", allow_zero=not is_exposure
    )
    rate = None
    if "DoseRate" in doc.custom:
        rate = parse_float(doc.custom_text("DoseRate"), doc.path, "DoseRate")
        require_positive(
            rate, doc.path, "DoseRate", "must not be negative", allow_zero=True
        )
    return dose, rate


def _read_extra(
    doc: ImageDocument, camera_name: str, fractions: Fractionation | None
) -> dict[str, str]:
    """CustomData keys that are not record fields, plus a few settings worth keeping."""
    extra = {"CameraName": camera_name}
    for key, value in doc.custom.items():
        text = element_text(value)
        unmapped = key not in _MAPPED_CUSTOM and not key.endswith("].CommercialName")
        if unmapped and text is not None and len(value) == 0:
            extra[key] = text
    if fractions is not None:
        extra["FractionationSettings"] = fractions.kind
        if fractions.ranges:
            extra["DoseFractions"] = ",".join(f"{s}-{e}" for s, e in fractions.ranges)
    width = doc.text(*CAMERA, "ReadoutArea", tail=f"/{{{DRAWING}}}width")
    height = doc.text(*CAMERA, "ReadoutArea", tail=f"/{{{DRAWING}}}height")
    if width is not None and height is not None:
        extra["ReadoutArea"] = f"{width}x{height}"
    probe_mode = doc.text(*OPTICS, "ProbeMode")
    if probe_mode is not None:
        extra["ProbeMode"] = probe_mode
    return extra


def _read_pixel_size_a(doc: ImageDocument) -> float:
    x = doc.number(
        "SpatialScale",
        "pixelSize",
        "x",
        "numericValue",
        field="pixelSize",
        scale_exp=10,
    )
    require_positive(x, doc.path, "pixelSize", "pixel size must be positive")
    y = doc.optional_number(
        "SpatialScale",
        "pixelSize",
        "y",
        "numericValue",
        field="pixelSize.y",
        scale_exp=10,
    )
    if y is not None and not math.isclose(x, y, rel_tol=1e-6):
        doc.warnings.append(f"non-square pixels {x} x {y} Å; using x")
    return x


def read_epu_exposure(xml_path: Path, *, movie_path: Path | None = None) -> Exposure:
    """Read an EPU per-image XML into an :class:`~mdcatch.records.Exposure`.

    ``kind`` is ``EXPOSURE`` only for a fractionated Data image; GridSquare and
    FoilHole images come back as ``GRID_SQUARE`` / ``FOIL_HOLE`` with one frame.
    ``optics.cs_mm`` stays ``None`` (EPU does not record Cs).  Raises
    :class:`MetadataError` for malformed files, missing keys and impossible values.
    """
    path = Path(xml_path)
    doc = ImageDocument(read_xml_root(path, root_tag=f"{{{SO}}}MicroscopeImage"), path)
    fractions = read_fractionation(doc.camera_input.get("FractionationSettings"), path)
    kind = _image_kind(doc, fractions)
    is_exposure = kind is ImageKind.EXPOSURE
    pixel_size_a = _read_pixel_size_a(doc)
    acquired = parse_datetime_utc(
        doc.text("microscopeData", "acquisition", "acquisitionDateTime"),
        path,
        "acquisitionDateTime",
    )
    voltage_kv = doc.number(
        "microscopeData",
        "gun",
        "AccelerationVoltage",
        field="AccelerationVoltage",
        scale_exp=-3,
    )
    require_positive(
        voltage_kv, path, "AccelerationVoltage", "voltage must be positive"
    )
    exposure_time = doc.number(*CAMERA, "ExposureTime", field="ExposureTime")
    require_positive(
        exposure_time,
        path,
        "ExposureTime",
        "exposure time must be positive",
        allow_zero=not is_exposure,
    )
    dose, dose_rate = _read_dose(doc, kind)
    camera = read_camera(doc)
    target, current = _read_defocus_um(doc, kind)
    phase_plate = False
    if "PhasePlateUsed" in doc.custom:
        phase_plate = parse_bool(
            doc.custom_text("PhasePlateUsed"), path, "PhasePlateUsed"
        )
    magnification = doc.optional_number(
        *OPTICS,
        "TemMagnification",
        "NominalMagnification",
        field="NominalMagnification",
    )
    if magnification is not None:
        require_positive(
            magnification, path, "NominalMagnification", "must be positive"
        )
    spot_text = doc.text(*OPTICS, "SpotIndex")
    stage_position, stage_alpha = read_stage(doc)
    grid_square = next(
        (
            m.group(1)
            for part in reversed(path.parent.parts)
            if (m := _GRID_SQUARE_DIR.fullmatch(part))
        ),
        None,
    )
    foil_hole = _FOIL_HOLE_NAME.match(path.name)
    optics = Optics(
        voltage_kv=voltage_kv,
        pixel_size_a=pixel_size_a,
        detector=camera.detector,
        camera_mode=camera.mode,
        super_resolution_factor=camera.super_resolution_factor,
        binning=float(camera.binning),
        energy_filter_slit_ev=read_slit_ev(doc),
        phase_plate=phase_plate,
        instrument_id=doc.text("microscopeData", "instrument", "InstrumentID") or "",
    )
    return Exposure(
        exposure_id=path.stem,
        software=Software.EPU,
        metadata_path=path,
        movie_path=movie_path,
        acquired_utc=acquired,
        optics=optics,
        exposure_time_s=exposure_time,
        total_dose_e_per_a2=dose,
        n_frames=1 if fractions is None else fractions.n_frames,
        target_defocus_um=target,
        kind=kind,
        dose_rate_e_per_px_s=dose_rate,
        current_defocus_um=current,
        magnification=magnification,
        spot_size=None
        if spot_text is None
        else parse_int(spot_text, path, "SpotIndex"),
        beam_shift=doc.pair(*OPTICS, "BeamShift", field="BeamShift"),
        image_shift=doc.pair(*OPTICS, "ImageShift", field="ImageShift"),
        stage_position_um=stage_position,
        stage_alpha_deg=stage_alpha,
        grid_square_id=grid_square,
        foil_hole_id=None if foil_hole is None else foil_hole.group(1),
        software_version=doc.text(
            "microscopeData", "core", "ApplicationSoftwareVersion"
        )
        or "",
        frame_doses=fraction_doses(fractions.ranges, dose)
        if fractions and fractions.ranges
        else (),
        extra=MappingProxyType(_read_extra(doc, camera.camera_name, fractions)),
        warnings=tuple(doc.warnings),
    )
