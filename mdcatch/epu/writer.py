"""Write EPU sessions from records: per-exposure ``MicroscopeImage`` XML and
``EpuSession.dm``, laid out as EPU lays them out, so tests and the demo microscope
produce sessions that :mod:`mdcatch.epu.exposure` and :mod:`mdcatch.epu.session` read back.

Numbers are written with exact decimal scaling (Å to m, e/Å² to e/m², µm to m), so
a record the reader produced reads back equal.  Files are written to a hidden
temporary name in the same folder and renamed, like a careful copy tool; the
temporary name never pairs with a movie.

Example::

    relpath = epu_exposure_relpath("8999138", "9015883", "9017347_6", acquired_utc)
    write_epu_exposure_xml(exposure, session_folder / relpath)
"""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePath

from lxml import etree

from mdcatch.epu.session_writer import write_epu_session_file
from mdcatch.epu.xml_output import dotnet_time, nil, scaled, sub, write_xml_atomically
from mdcatch.epu.xml_values import (
    ARR,
    DEGREES_PER_RADIAN,
    DRAWING,
    OMP,
    SO,
    TYPES,
    XSD,
    XSI,
)
from mdcatch.records import CameraMode, Exposure, ImageKind

__all__ = ["epu_exposure_relpath", "write_epu_exposure_xml", "write_epu_session_file"]

# Keys of Exposure.extra the writer places outside CustomData.
_STRUCTURAL_EXTRA = frozenset(
    {"CameraName", "FractionationSettings", "DoseFractions", "ReadoutArea", "ProbeMode"}
)


def _radians_text(degrees: float) -> str:
    """Radians as 34-digit decimal text, so the reader's conversion back to degrees
    (40-digit decimal arithmetic, one rounding) gives ``degrees`` exactly."""
    context = decimal.Context(prec=34)
    return str(context.divide(decimal.Decimal(repr(degrees)), DEGREES_PER_RADIAN))


def _xsd_type(text: str) -> str:
    if text in ("true", "false"):
        return "boolean"
    try:
        float(text)
    except ValueError:
        return "string"
    return "double"


def _dictionary(
    parent: etree._Element, name: str, items: Mapping[str, str]
) -> etree._Element:
    container = etree.SubElement(parent, f"{{{SO}}}{name}", nsmap={"a": ARR})
    for key, text in items.items():
        entry = sub(container, ARR, "KeyValueOfstringanyType")
        sub(entry, ARR, "Key", key)
        value = etree.SubElement(entry, f"{{{ARR}}}Value", nsmap={"b": XSD})
        value.set(f"{{{XSI}}}type", f"b:{_xsd_type(text)}")
        value.text = text
    return container


def _fractionation(entry_parent: etree._Element, exposure: Exposure) -> None:
    entry = sub(entry_parent, ARR, "KeyValueOfstringanyType")
    sub(entry, ARR, "Key", "FractionationSettings")
    if exposure.kind is not ImageKind.EXPOSURE:
        nil(entry, ARR, "Value")
        return
    value = etree.SubElement(entry, f"{{{ARR}}}Value", nsmap={"b": OMP})
    ranges = exposure.extra.get("DoseFractions")
    kind = exposure.extra.get("FractionationSettings")
    if ranges:
        pairs = [tuple(int(n) for n in r.split("-")) for r in ranges.split(",")]
        if len(pairs) != exposure.n_frames:
            raise ValueError(
                f"DoseFractions has {len(pairs)} ranges, n_frames is {exposure.n_frames}"
            )
        value.set(f"{{{XSI}}}type", f"b:{kind or 'VaridistantFractionation'}")
        fractions = sub(value, OMP, "DoseFractions")
        for start, end in pairs:
            item = sub(fractions, ARR, "anyType")
            item.set(f"{{{XSI}}}type", "b:DoseFractionDefinition")
            sub(item, OMP, "EndFrameNumber", str(end))
            sub(item, OMP, "StartFrameNumber", str(start))
    else:
        value.set(f"{{{XSI}}}type", f"b:{kind or 'EquidistantFractionation'}")
        sub(value, OMP, "NumberOffractions", str(exposure.n_frames))


def _camera(acquisition: etree._Element, exposure: Exposure) -> None:
    optics = exposure.optics
    if optics.binning != int(optics.binning) or optics.binning < 1:
        raise ValueError(f"EPU binning is a whole number, not {optics.binning}")
    super_res = optics.camera_mode is CameraMode.SUPER_RESOLUTION
    # Super-resolution pixels are saved only when EPU does not bin them away.
    if (
        super_res != (optics.super_resolution_factor > optics.binning)
        and optics.camera_mode is not CameraMode.INTEGRATING
    ):
        raise ValueError(
            f"camera mode {optics.camera_mode.value} contradicts super-resolution factor "
            f"{optics.super_resolution_factor}"
        )
    camera = sub(acquisition, SO, "camera")
    binning = etree.SubElement(camera, f"{{{SO}}}Binning", nsmap={"a": DRAWING})
    sub(binning, DRAWING, "x", str(int(optics.binning)))
    sub(binning, DRAWING, "y", str(int(optics.binning)))
    inputs = _dictionary(
        camera,
        "CameraSpecificInput",
        {
            "ElectronCountingEnabled": str(
                optics.camera_mode is not CameraMode.INTEGRATING
            ).lower(),
            "SuperResolutionFactor": str(optics.super_resolution_factor),
        },
    )
    _fractionation(inputs, exposure)
    sub(camera, SO, "ExposureTime", repr(exposure.exposure_time_s))
    sub(camera, SO, "Name", exposure.extra.get("CameraName", optics.detector))
    readout = exposure.extra.get("ReadoutArea")
    if readout:
        width, height = readout.split("x")
        area = etree.SubElement(camera, f"{{{SO}}}ReadoutArea", nsmap={"a": DRAWING})
        sub(area, DRAWING, "height", height)
        sub(area, DRAWING, "width", width)


def _pair(parent: etree._Element, name: str, pair: tuple[float, float] | None) -> None:
    if pair is None:
        return
    element = etree.SubElement(parent, f"{{{SO}}}{name}", nsmap={"a": TYPES})
    sub(element, TYPES, "_x", repr(pair[0]))
    sub(element, TYPES, "_y", repr(pair[1]))


def _optics(microscope: etree._Element, exposure: Exposure) -> None:
    optics = sub(microscope, SO, "optics")
    _pair(optics, "BeamShift", exposure.beam_shift)
    if exposure.current_defocus_um is not None:
        sub(optics, SO, "Defocus", scaled(-exposure.current_defocus_um, -6))
    slit = exposure.optics.energy_filter_slit_ev
    sub(optics, SO, "EFTEMOn", "false" if slit is None else "true")
    if slit is None:
        nil(optics, SO, "EnergyFilter")
    else:
        energy_filter = sub(optics, SO, "EnergyFilter")
        sub(energy_filter, SO, "EnergySelectionSlitInserted", "true")
        sub(energy_filter, SO, "EnergySelectionSlitWidth", repr(slit))
    _pair(optics, "ImageShift", exposure.image_shift)
    if "ProbeMode" in exposure.extra:
        sub(optics, SO, "ProbeMode", exposure.extra["ProbeMode"])
    if exposure.spot_size is not None:
        sub(optics, SO, "SpotIndex", str(exposure.spot_size))
    if exposure.magnification is not None:
        magnification = sub(optics, SO, "TemMagnification")
        sub(magnification, SO, "NominalMagnification", repr(exposure.magnification))


def _custom_data(root: etree._Element, exposure: Exposure) -> None:
    items = {
        "Dose": scaled(exposure.total_dose_e_per_a2, 20),
        "AppliedDefocus": scaled(-exposure.target_defocus_um, -6),
        "PhasePlateUsed": str(exposure.optics.phase_plate).lower(),
    }
    if exposure.dose_rate_e_per_px_s is not None:
        items["DoseRate"] = repr(exposure.dose_rate_e_per_px_s)
    if exposure.optics.detector != exposure.extra.get(
        "CameraName", exposure.optics.detector
    ):
        items["DetectorCommercialName"] = exposure.optics.detector
    items.update(
        {k: v for k, v in exposure.extra.items() if k not in _STRUCTURAL_EXTRA}
    )
    _dictionary(root, "CustomData", items)


def epu_exposure_relpath(
    grid_square_id: str, foil_hole_id: str, data_id: str, acquired_utc: datetime
) -> PurePath:
    """Where EPU puts an exposure's XML inside the session folder:
    ``Images-Disc1/GridSquare_<gs>/Data/FoilHole_<fh>_Data_<data>_<YYYYMMDD>_<HHMMSS>.xml``.
    The movie goes to the same relative folder of the DoseFractions tree."""
    stamp = acquired_utc.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    return PurePath(
        "Images-Disc1",
        f"GridSquare_{grid_square_id}",
        "Data",
        f"FoilHole_{foil_hole_id}_Data_{data_id}_{stamp}.xml",
    )


def write_epu_exposure_xml(exposure: Exposure, path: Path) -> Path:
    """Write ``exposure`` as an EPU ``MicroscopeImage`` XML (one long line, as EPU
    writes it) and return ``path``.  ``extra`` keys go to CustomData, except the
    ones the reader takes from elsewhere (``CameraName``, ``ReadoutArea``, ...)."""
    path = Path(path)
    root = etree.Element(f"{{{SO}}}MicroscopeImage", nsmap={None: SO, "i": XSI})
    sub(root, SO, "name", "Empty")
    sub(root, SO, "uniqueID", str(uuid.uuid5(uuid.NAMESPACE_URL, exposure.exposure_id)))
    _custom_data(root, exposure)
    scale = sub(root, SO, "SpatialScale")
    pixel_size = sub(scale, SO, "pixelSize")
    for axis in ("x", "y"):
        sub(
            sub(pixel_size, SO, axis),
            SO,
            "numericValue",
            scaled(exposure.optics.pixel_size_a, -10),
        )
    microscope = sub(root, SO, "microscopeData")
    acquisition = sub(microscope, SO, "acquisition")
    sub(acquisition, SO, "acquisitionDateTime", dotnet_time(exposure.acquired_utc))
    _camera(acquisition, exposure)
    core = sub(microscope, SO, "core")
    sub(core, SO, "ApplicationSoftware", "EPU")
    sub(core, SO, "ApplicationSoftwareVersion", exposure.software_version)
    gun = sub(microscope, SO, "gun")
    sub(gun, SO, "AccelerationVoltage", scaled(exposure.optics.voltage_kv, 3))
    instrument = sub(microscope, SO, "instrument")
    sub(instrument, SO, "InstrumentID", exposure.optics.instrument_id)
    _optics(microscope, exposure)
    if exposure.stage_position_um is not None or exposure.stage_alpha_deg is not None:
        position = sub(sub(microscope, SO, "stage"), SO, "Position")
        if exposure.stage_alpha_deg is not None:
            sub(position, SO, "A", _radians_text(exposure.stage_alpha_deg))
        if exposure.stage_position_um is not None:
            for axis, value in zip("XYZ", exposure.stage_position_um, strict=True):
                sub(position, SO, axis, scaled(value, -6))
    return write_xml_atomically(root, path, declaration=False)
