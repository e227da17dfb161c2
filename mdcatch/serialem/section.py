"""One mdoc section (``[FrameSet]``, ``[ZValue]``, ``[MontSection]``) -> an Exposure.

Sign and unit conventions: SerialEM writes ``TargetDefocus`` and ``Defocus`` in µm,
negative for underfocus; the record stores positive underfocus.  ``PixelSpacing``
is in Å for the image as saved (the super-resolution pixel when ``Binning = 0.5``).
``ExposureDose`` is e/Å², ``DoseRate`` e/unbinned pixel/s, ``StagePosition`` and
``StageZ`` µm, ``ImageShift`` in SerialEM's image-shift units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType

from mdcatch.errors import MetadataError
from mdcatch.records import CameraMode, Exposure, ImageKind, Optics, Software
from mdcatch.serialem.autodoc import (
    MdocSection,
    parse_bool,
    parse_datetime,
    parse_float,
    parse_floats,
    parse_frame_doses,
    parse_int,
)
from mdcatch.serialem.header import MdocContext
from mdcatch.serialem.paths import is_windows_path, locate_file

__all__ = ["read_section"]

DEFAULT_VOLTAGE_KV = 300.0


def movie_stem(raw: str) -> str:
    """File stem of a ``SubFramePath`` written on Windows or POSIX."""
    text = raw.strip()
    pure = PureWindowsPath(text) if is_windows_path(text) else PurePosixPath(text)
    return pure.stem


class _Reader:
    """Typed access to one section's values; remembers which keys were used."""

    def __init__(self, path: Path, values: Mapping[str, str]) -> None:
        self.path = path
        self.values = values
        self.used: set[str] = set()

    def raw(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is not None:
            self.used.add(key)
        return value

    def number(
        self, key: str, *, low: float | None = None, strict: bool = False
    ) -> float | None:
        raw = self.raw(key)
        if raw is None:
            return None
        value = parse_float(self.path, key, raw)
        if low is not None and (value < low or (strict and value == low)):
            bound = f"> {low:g}" if strict else f">= {low:g}"
            raise MetadataError(self.path, key, raw, f"must be {bound}")
        return value

    def integer(self, key: str, *, low: int | None = None) -> int | None:
        raw = self.raw(key)
        if raw is None:
            return None
        value = parse_int(self.path, key, raw)
        if low is not None and value < low:
            raise MetadataError(self.path, key, raw, f"must be >= {low}")
        return value

    def numbers(self, key: str, count: int) -> tuple[float, ...] | None:
        raw = self.raw(key)
        return None if raw is None else parse_floats(self.path, key, raw, count)

    def leftover(self) -> dict[str, str]:
        return {k: v for k, v in self.values.items() if k not in self.used}


def read_section(
    section: MdocSection,
    context: MdocContext,
    *,
    path: Path,
    path_map: Mapping[str, Path] | None,
    timezone: tzinfo,
    n_framesets: int,
    folders: Sequence[Path] | None = None,
) -> Exposure:
    """The Exposure that ``section`` of the mdoc at ``path`` describes.

    With ``folders``, files it names must lie inside them
    (:func:`~mdcatch.serialem.paths.locate_file`).
    """
    r = _Reader(path, section.values)
    warnings: list[str] = []
    kind = _kind(section, context)

    sub_frame_raw = r.raw("SubFramePath")
    movie_path = None
    if sub_frame_raw is not None and sub_frame_raw.strip():
        exposure_id = movie_stem(sub_frame_raw)
        movie_path = locate_file(
            sub_frame_raw,
            mdoc_dir=path.parent,
            path_map=path_map,
            folders=folders,
            source=path,
        )
    else:
        exposure_id = _exposure_id_without_movie(section, context, n_framesets)
    if not exposure_id:
        raise MetadataError(path, "SubFramePath", sub_frame_raw, "no file name")

    camera_index = r.integer("CameraIndex", low=0)
    optics = _read_optics(r, section, context, camera_index, warnings)
    frame_doses, n_frames, dose = _read_frames_and_dose(r, warnings)
    frame_range = _read_frame_range(r, n_frames)
    if frame_range is not None:  # one tilt of a frame-set tilt series
        exposure_id = f"{exposure_id}_{section.index:03d}"
    exposure_time = r.number("ExposureTime", low=0.0, strict=True)
    if exposure_time is None:
        raise MetadataError(
            path, "ExposureTime", None, f"missing in [{section.kind} = {section.index}]"
        )
    target_defocus_um, current_defocus_um = _read_defocus(r, warnings)
    acquired = _read_acquired(r, section, context, timezone, warnings)
    stage = _read_stage(r)
    image_shift = r.numbers("ImageShift", 2)
    magnification = r.number("Magnification", low=0.0, strict=True)
    spot = r.integer("SpotSize", low=0)

    movie_dir = movie_path.parent if movie_path is not None else None
    gain = _locate_named(r, "GainReference", path, path_map, movie_dir, folders)
    defects = _locate_named(r, "DefectFile", path, path_map, movie_dir, folders)
    if movie_path is None and sub_frame_raw is not None:
        r.used.discard("SubFramePath")  # not found yet: keep where SerialEM put it

    return Exposure(
        exposure_id=exposure_id,
        software=Software.SERIALEM,
        metadata_path=path,
        movie_path=movie_path,
        acquired_utc=acquired,
        optics=optics,
        exposure_time_s=exposure_time,
        total_dose_e_per_a2=dose,
        n_frames=n_frames,
        target_defocus_um=target_defocus_um,
        kind=kind,
        dose_rate_e_per_px_s=r.number("DoseRate", low=0.0),
        current_defocus_um=current_defocus_um,
        magnification=magnification,
        spot_size=spot,
        image_shift=None if image_shift is None else (image_shift[0], image_shift[1]),
        stage_position_um=stage,
        stage_alpha_deg=r.number("TiltAngle"),
        software_version=context.software_version,
        gain_reference_path=gain,
        defect_file_path=defects,
        camera_index=camera_index,
        frame_doses=frame_doses,
        frame_range=frame_range,
        prior_dose_e_per_a2=r.number("PriorRecordDose", low=0.0),
        extra=MappingProxyType(r.leftover()),
        warnings=tuple(warnings),
    )


def _exposure_id_without_movie(
    section: MdocSection, context: MdocContext, n_framesets: int
) -> str:
    """The exposure's name when the section names no movie (from the image file)."""
    if section.kind == "FrameSet":
        suffix = f"_{section.index}" if n_framesets > 1 else ""
        return context.image_stem + suffix
    if section.kind == "MontSection":
        return f"{context.image_stem}_section{section.index:03d}"
    return f"{context.image_stem}_{section.index:03d}"


def _read_optics(
    r: _Reader,
    section: MdocSection,
    context: MdocContext,
    camera_index: int | None,
    warnings: list[str],
) -> Optics:
    voltage = r.number("Voltage", low=0.0, strict=True) or context.voltage_kv
    if voltage is None:
        voltage = DEFAULT_VOLTAGE_KV
        warnings.append(f"mdoc has no Voltage; assumed {DEFAULT_VOLTAGE_KV:g} kV")
    pixel = r.number("PixelSpacing", low=0.0, strict=True) or context.pixel_size_a
    if pixel is None:
        raise MetadataError(
            r.path,
            "PixelSpacing",
            None,
            f"missing in [{section.kind} = {section.index}]",
        )
    binning = r.number("Binning", low=0.0, strict=True)
    if binning is None:
        binning = 1.0
        warnings.append("mdoc has no Binning; assumed 1")
    super_res = binning < 1.0
    cs_mm = r.number("Cs", low=0.0)
    slit_ev = None
    filter_values = r.numbers("FilterSlitAndLoss", 2)
    if filter_values is not None and filter_values[0] > 0:
        slit_ev = filter_values[0]
    elif filter_values is not None:
        r.used.discard("FilterSlitAndLoss")  # slit out: keep the raw entry
    phase_raw = r.raw("PhasePlateInserted")
    phase_plate = phase_raw is not None and parse_bool(
        r.path, "PhasePlateInserted", phase_raw
    )
    return Optics(
        voltage_kv=voltage,
        pixel_size_a=pixel,
        cs_mm=cs_mm,
        detector=context.cameras.get(camera_index, "")
        if camera_index is not None
        else "",
        camera_mode=CameraMode.SUPER_RESOLUTION if super_res else CameraMode.COUNTING,
        super_resolution_factor=round(1.0 / binning) if super_res else 1,
        binning=binning,
        energy_filter_slit_ev=slit_ev,
        phase_plate=phase_plate,
        instrument_id=context.instrument_id,
    )


def _read_frames_and_dose(
    r: _Reader, warnings: list[str]
) -> tuple[tuple[tuple[int, float], ...], int, float]:
    """``(frame_doses, n_frames, total dose e/Å²)``."""
    frame_doses_raw = r.raw("FrameDosesAndNumber")
    frame_doses = (
        ()
        if frame_doses_raw is None
        else parse_frame_doses(r.path, "FrameDosesAndNumber", frame_doses_raw)
    )
    n_sub = r.integer("NumSubFrames", low=1)
    n_listed = sum(count for count, _ in frame_doses)
    if n_sub is not None and frame_doses and n_sub != n_listed:
        warnings.append(
            f"NumSubFrames = {n_sub} but FrameDosesAndNumber lists {n_listed} frames; "
            "NumSubFrames used"
        )
    n_frames = n_sub if n_sub is not None else (n_listed or 1)
    dose = r.number("ExposureDose", low=0.0)
    if dose is None:
        if not frame_doses:
            raise MetadataError(
                r.path, "ExposureDose", None, "missing and no FrameDosesAndNumber"
            )
        dose = sum(count * each for count, each in frame_doses)
        warnings.append(
            "mdoc has no ExposureDose; total dose summed from FrameDosesAndNumber"
        )
    return frame_doses, n_frames, dose


def _read_frame_range(r: _Reader, n_frames: int) -> tuple[int, int] | None:
    """``FrameTSStartEndFrames``: the first and last frame (0-based, inclusive) of
    one tilt inside the frame set's movie of ``n_frames`` frames."""
    raw = r.raw("FrameTSStartEndFrames")
    if raw is None:
        return None
    first, last = parse_floats(r.path, "FrameTSStartEndFrames", raw, 2)
    if first != int(first) or last != int(last):
        raise MetadataError(r.path, "FrameTSStartEndFrames", raw, "must be integers")
    if not 0 <= first <= last < n_frames:
        raise MetadataError(
            r.path,
            "FrameTSStartEndFrames",
            raw,
            f"need 0 <= first <= last < {n_frames} (the movie's frames)",
        )
    return int(first), int(last)


def _read_defocus(r: _Reader, warnings: list[str]) -> tuple[float, float | None]:
    """``(target, current)`` defocus in µm, positive for underfocus."""
    defocus = r.number("Defocus")
    current_defocus_um = None if defocus is None else -defocus
    target = r.number("TargetDefocus")
    if target is not None:
        return -target, current_defocus_um
    if current_defocus_um is not None:
        warnings.append(
            "mdoc has no TargetDefocus; the microscope's Defocus used instead"
        )
        return current_defocus_um, current_defocus_um
    raise MetadataError(
        r.path, "TargetDefocus", None, "neither TargetDefocus nor Defocus given"
    )


def _read_acquired(
    r: _Reader,
    section: MdocSection,
    context: MdocContext,
    timezone: tzinfo,
    warnings: list[str],
) -> datetime:
    time_raw = r.raw("DateTime")
    if time_raw is not None:
        return parse_datetime(r.path, "DateTime", time_raw, timezone)
    if context.title_utc is not None:
        warnings.append("section has no DateTime; the title's time used")
        return context.title_utc
    raise MetadataError(
        r.path, "DateTime", None, f"missing in [{section.kind} = {section.index}]"
    )


def _read_stage(r: _Reader) -> tuple[float, float, float] | None:
    stage_xy = r.numbers("StagePosition", 2)
    stage_z = r.number("StageZ")
    if stage_xy is None or stage_z is None:  # keep a partial stage position raw
        r.used -= {"StagePosition", "StageZ"}
        return None
    return (stage_xy[0], stage_xy[1], stage_z)


def _kind(section: MdocSection, context: MdocContext) -> ImageKind:
    if section.kind == "FrameSet":
        return ImageKind.EXPOSURE
    if section.kind == "MontSection" or context.montage:
        return ImageKind.MONTAGE
    return ImageKind.TILT


def _locate_named(
    r: _Reader,
    key: str,
    path: Path,
    path_map: Mapping[str, Path] | None,
    movie_dir: Path | None,
    folders: Sequence[Path] | None,
) -> Path | None:
    """A gain reference or defect file; its raw entry stays in ``extra`` if not found."""
    raw = r.raw(key)
    if raw is None:
        return None
    found = locate_file(
        raw,
        mdoc_dir=path.parent,
        path_map=path_map,
        near=movie_dir,
        folders=folders,
        source=path,
        field=key,
    )
    if found is None:
        r.used.discard(key)
    return found
