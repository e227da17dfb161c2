"""Write Session and Exposure records as a SerialEM ``.mdoc`` that ``read_mdoc`` reads back.

Example::

    from mdcatch.serialem.mdoc import read_mdoc
    from mdcatch.serialem.writer import write_mdoc
    write_mdoc(session, exposures, folder / "movie_0001.tif.mdoc")
    assert read_mdoc(folder / "movie_0001.tif.mdoc")[1] == exposures

Exposures of kind ``EXPOSURE`` become ``[FrameSet = n]`` sections, ``TILT`` become
``[ZValue = n]``, ``MONTAGE`` pieces (with ``PieceCoordinates`` in ``extra``)
become ``[ZValue = n]`` under ``Montage = 1`` and the other ``MONTAGE`` records
``[MontSection = n]``.  Consecutive sub-exposures of one movie (``frame_range``
set) become a frame-set tilt series: one ``[FrameSet]`` with what they share and
a ``[ZValue]`` per tilt with ``TiltAngle``, ``FrameTSStartEndFrames``,
``ExposureDose``, ``PriorRecordDose`` and whatever else differs.  Times are written in ``timezone`` (default UTC), to the
second, as SerialEM does.  The detector names go into the first title
(``Camera -> 0:name``), as SerialEM writes them.  Records that a SerialEM mdoc
cannot hold (a super-resolution camera mode without ``binning < 1``, sub-second
times) do not survive the round trip.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from mdcatch.records import Exposure, ImageKind, Session

__all__ = ["write_mdoc"]

_MONTHS = [
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
]
_DOTTED_VERSION = re.compile(r"^\d+(?:\.\d+)+$")
_D_NUMBER = re.compile(r"^D\d{3,5}$")
_PER_TILT_KEYS = frozenset(
    {"TiltAngle", "FrameTSStartEndFrames", "ExposureDose", "PriorRecordDose"}
)


def write_mdoc(
    session: Session,
    exposures: Sequence[Exposure],
    path: Path,
    *,
    frames_prefix: str | None = None,
    timezone: tzinfo = UTC,
) -> Path:
    """Write ``exposures`` of ``session`` to the mdoc ``path``; returns ``path``.

    ``frames_prefix`` (such as ``X:\\\\Data\\\\run1``) writes ``SubFramePath`` as a
    Windows path under that folder, as SerialEM on the microscope PC would;
    without it the movie's local path is written.  The file appears atomically.
    """
    if not exposures:
        raise ValueError(f"{path}: an mdoc needs at least one exposure")
    path = Path(path)
    first = exposures[0]
    pieces = any(_is_piece(e) for e in exposures)
    lines = [f"PixelSpacing = {_num(first.optics.pixel_size_a)}"]
    lines.append(f"Voltage = {_num(first.optics.voltage_kv)}")
    if session.software_version:
        version = session.software_version
        dotted = _DOTTED_VERSION.match(version)
        lines.append(
            f"Version = SerialEM Version {version}"
            if dotted
            else f"Version = {version}"
        )
    for key, value in session.extra.items():
        if not key.startswith("title.") and key not in {"Montage"}:
            lines.append(f"{key} = {value}")
    if pieces:
        lines.append("Montage = 1")
    lines.append("")
    for title in _titles(session, exposures, timezone):
        lines += [f"[T = {title}]", ""]
    counters = {"FrameSet": 0, "ZValue": 0, "MontSection": 0}
    for group in _sections(exposures):
        if group[0].frame_range is not None:  # one movie, one section per tilt
            sections = _frame_set_sections(group, first, frames_prefix, timezone)
        else:
            values = _section_values(group[0], first, frames_prefix, timezone)
            sections = [(_section_kind(group[0]), values)]
        for kind, values in sections:
            lines.append(f"[{kind} = {counters[kind]}]")
            counters[kind] += 1
            lines += [f"{key} = {value}" for key, value in values.items()]
            lines.append("")
    _write_atomically(path, "\n".join(lines))
    return path


def _is_piece(exposure: Exposure) -> bool:
    return exposure.kind is ImageKind.MONTAGE and "PieceCoordinates" in exposure.extra


def _section_kind(exposure: Exposure) -> str:
    if exposure.kind is ImageKind.EXPOSURE:
        return "FrameSet"
    if exposure.kind is ImageKind.MONTAGE and not _is_piece(exposure):
        return "MontSection"
    return "ZValue"


def _titles(
    session: Session, exposures: Sequence[Exposure], timezone: tzinfo
) -> list[str]:
    kept = [
        (int(k.split(".")[1]), v)
        for k, v in session.extra.items()
        if re.match(r"^title\.\d+$", k)
    ]
    if kept:
        return [title for _, title in sorted(kept)]
    cameras: dict[int, str] = {}
    for exposure in exposures:
        index, name = exposure.camera_index, exposure.optics.detector
        if index is not None and name and cameras.setdefault(index, name) != name:
            raise ValueError(f"camera {index} is both {cameras[index]!r} and {name!r}")
    words = ["SerialEM: written by mdcatch"]
    instrument = exposures[0].optics.instrument_id
    if _D_NUMBER.match(instrument):
        words.append(f"on {instrument}")
    if cameras:
        words.append(
            "Camera -> " + " ".join(f"{i}:{n}" for i, n in sorted(cameras.items()))
        )
    start = session.start_utc or min(e.acquired_utc for e in exposures)
    return [" ".join(words) + "    " + _time(start, timezone)]


def _sections(exposures: Sequence[Exposure]) -> list[list[Exposure]]:
    """Exposures in file order, the consecutive sub-exposures of one movie
    (``frame_range`` set, same ``movie_path``) grouped."""
    groups: list[list[Exposure]] = []
    for exposure in exposures:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and exposure.frame_range is not None
            and last.frame_range is not None
            and exposure.movie_path == last.movie_path
        ):
            groups[-1].append(exposure)
        else:
            groups.append([exposure])
    return groups


def _frame_set_sections(
    group: Sequence[Exposure],
    first: Exposure,
    frames_prefix: str | None,
    timezone: tzinfo,
) -> list[tuple[str, dict[str, str]]]:
    """A frame-set tilt series: ``[FrameSet]`` with what the sub-exposures share,
    then one ``[ZValue]`` per sub-exposure with its per-tilt values and whatever
    else differs from the frame set (``read_mdoc`` merges them back)."""
    every = [_section_values(e, first, frames_prefix, timezone) for e in group]
    shared = {k: v for k, v in every[0].items() if k not in _PER_TILT_KEYS}
    sections: list[tuple[str, dict[str, str]]] = [("FrameSet", shared)]
    for exposure, values in zip(group, every, strict=True):
        lost = sorted(set(shared) - set(values))
        if lost:
            raise ValueError(
                f"{exposure.exposure_id}: has no {', '.join(lost)} but the first "
                "tilt of its frame set has: they cannot share one [FrameSet]"
            )
        own = {
            k: v for k, v in values.items() if k in _PER_TILT_KEYS or shared.get(k) != v
        }
        sections.append(("ZValue", own))
    return sections


def _section_values(
    e: Exposure, first: Exposure, frames_prefix: str | None, timezone: tzinfo
) -> dict[str, str]:
    o = e.optics
    stage = e.stage_position_um
    shift = e.image_shift
    voltage = o.voltage_kv if o.voltage_kv != first.optics.voltage_kv else None
    values: dict[str, str | None] = {
        "TiltAngle": _opt(e.stage_alpha_deg),
        "StagePosition": None
        if stage is None
        else f"{_num(stage[0])} {_num(stage[1])}",
        "StageZ": None if stage is None else _num(stage[2]),
        "Magnification": _opt(e.magnification),
        "ExposureDose": _num(e.total_dose_e_per_a2),
        "DoseRate": _opt(e.dose_rate_e_per_px_s),
        "PixelSpacing": _num(o.pixel_size_a),
        "Voltage": _opt(voltage),
        "SpotSize": _opt_str(e.spot_size),
        "Defocus": _opt(
            None if e.current_defocus_um is None else -e.current_defocus_um
        ),
        "ImageShift": None if shift is None else f"{_num(shift[0])} {_num(shift[1])}",
        "ExposureTime": _num(e.exposure_time_s),
        "Binning": _num(o.binning),
        "CameraIndex": _opt_str(e.camera_index),
        "TargetDefocus": _num(-e.target_defocus_um),
        "SubFramePath": _sub_frame_path(e, frames_prefix),
        "NumSubFrames": str(e.n_frames),
        "FrameDosesAndNumber": "  ".join(f"{_num(d)} {n}" for n, d in e.frame_doses)
        or None,
        "DateTime": _time(e.acquired_utc, timezone),
        "FilterSlitAndLoss": None
        if o.energy_filter_slit_ev is None
        else f"{_num(o.energy_filter_slit_ev)} 0",
        "GainReference": _opt_str(e.gain_reference_path),
        "DefectFile": _opt_str(e.defect_file_path),
        "PhasePlateInserted": "True" if o.phase_plate else None,
        "Cs": _opt(o.cs_mm),
        "FrameTSStartEndFrames": None
        if e.frame_range is None
        else f"{e.frame_range[0]} {e.frame_range[1]}",
        "PriorRecordDose": _opt(e.prior_dose_e_per_a2),
    }
    kept = {key: value for key, value in values.items() if value is not None}
    for key, value in e.extra.items():
        kept.setdefault(key, value)
    return kept


def _sub_frame_path(e: Exposure, frames_prefix: str | None) -> str | None:
    """Where SerialEM would have saved the movie (under ``frames_prefix`` if given)."""
    if e.movie_path is None:
        return None
    if frames_prefix:
        return f"{frames_prefix.rstrip(chr(92))}\\{e.movie_path.name}"
    return str(e.movie_path)


def _opt(value: float | None) -> str | None:
    return None if value is None else _num(value)


def _opt_str(value: object | None) -> str | None:
    return None if value is None else str(value)


def _num(value: float) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"cannot write the non-finite number {value!r} to an mdoc")
    return repr(number)


def _time(moment: datetime, timezone: tzinfo) -> str:
    local = moment.astimezone(timezone)
    month = _MONTHS[local.month - 1]
    return f"{local.day:02d}-{month}-{local.year:04d}  {local:%H:%M:%S}"


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8", newline="\r\n") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
