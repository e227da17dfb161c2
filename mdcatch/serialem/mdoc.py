"""Read SerialEM ``.mdoc`` files into Session and Exposure records.

Example::

    from pathlib import Path
    from mdcatch.serialem.mdoc import read_mdoc
    session, exposures = read_mdoc(
        Path("frames/run_00001.tif.mdoc"),
        path_map={"X:\\\\Data": Path("/mnt/krios")},
    )

Frame-set mdocs (``[FrameSet = n]``, one per movie in single-particle work) give
exposures of kind ``EXPOSURE``; stacks and tilt series (``[ZValue = n]``) give
``TILT``; montages (``Montage = 1`` with ``[ZValue]`` pieces, and
``[MontSection = n]``) give ``MONTAGE``.  A frame-set tilt series (one
``[FrameSet]`` movie, ``[ZValue]`` sections with ``FrameTSStartEndFrames``) gives
one ``TILT`` sub-exposure per ZValue (:func:`inherit_frame_sets`), with its
``frame_range`` in the movie and the ID ``<movie stem>_<ZValue:03d>``.  SerialEM writes local time without a
zone: ``timezone`` says which zone the microscope PC was in (default UTC).
The exposure ID is the movie's file stem (``SubFramePath``); without a movie it
is the image file's stem plus the section index.  See ``docs/serialem.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, tzinfo
from pathlib import Path, PureWindowsPath
from types import MappingProxyType

from mdcatch.errors import MetadataError
from mdcatch.records import Exposure, ImageKind, MovieFormat, Session, Software
from mdcatch.serialem.autodoc import MdocSection, parse_autodoc
from mdcatch.serialem.header import read_context
from mdcatch.serialem.section import read_section

__all__ = ["inherit_frame_sets", "read_mdoc", "scan_serialem_session"]

_FORMATS = {
    ".tif": MovieFormat.TIFF,
    ".tiff": MovieFormat.TIFF,
    ".mrc": MovieFormat.MRC,
    ".eer": MovieFormat.EER,
}


def read_mdoc(
    path: Path,
    *,
    path_map: Mapping[str, Path] | None = None,
    timezone: tzinfo = UTC,
    folders: Sequence[Path] | None = None,
) -> tuple[Session, list[Exposure]]:
    """The session and the exposures (one per section) described by one mdoc.

    ``path_map`` maps Windows prefixes of ``SubFramePath`` (drive or UNC,
    case-insensitive) to local folders; without a match the movie is looked for
    next to the mdoc by its file name.  A movie not found yet has
    ``movie_path=None`` and keeps its raw ``SubFramePath`` in ``extra``.
    With ``folders`` (the live service's session and movie folders) every file
    it names (``SubFramePath``, ``GainReference``, ``DefectFile``) must resolve
    inside them (:func:`mdcatch.containment.check_inside`).
    Raises :class:`~mdcatch.errors.MetadataError` for anything it cannot trust.
    """
    path = Path(path)
    doc = parse_autodoc(_read_text(path), path)
    context = read_context(doc, timezone)
    sections = inherit_frame_sets(doc.sections)
    n_framesets = sum(1 for section in sections if section.kind == "FrameSet")
    exposures = [
        read_section(
            section,
            context,
            path=path,
            path_map=path_map,
            timezone=timezone,
            n_framesets=n_framesets,
            folders=folders,
        )
        for section in sections
    ]
    first_movie = next((e.movie_path for e in exposures if e.movie_path), None)
    raw_movie = next(
        (s.values["SubFramePath"] for s in doc.sections if "SubFramePath" in s.values),
        "",
    )
    session = Session(
        name=path.parent.name,
        software=Software.SERIALEM,
        session_path=path.parent,
        start_utc=context.title_utc or min(e.acquired_utc for e in exposures),
        movie_folder=first_movie.parent if first_movie else None,
        storage_folder_raw=str(PureWindowsPath(raw_movie).parent) if raw_movie else "",
        movie_format=_FORMATS.get(PureWindowsPath(raw_movie).suffix.lower()),
        software_version=context.software_version,
        extra=context.extra,
    )
    return session, exposures


def inherit_frame_sets(sections: Sequence[MdocSection]) -> list[MdocSection]:
    """The sections to read as exposures, a frame-set tilt series resolved.

    SerialEM records a continuous tilt series as one movie: a ``[FrameSet = n]``
    section with the optics, the movie and the frame doses, followed by
    ``[ZValue = i]`` sections that hold only what changes per tilt (``TiltAngle``,
    ``FrameTSStartEndFrames``, ``ExposureDose``, ``PriorRecordDose``).  Each such
    ZValue section inherits every value of the frame set before it (its own values
    win) and becomes one sub-exposure; the frame set is then the movie, not an
    exposure of its own.  Other files pass through unchanged.
    """
    resolved: list[MdocSection] = []
    parent: int | None = None  # position in ``resolved`` of the last frame set
    movies: set[int] = set()  # frame sets that turned out to be tilt-series movies
    for section in sections:
        if section.kind == "FrameSet":
            parent = len(resolved)
        elif (
            section.kind == "ZValue"
            and parent is not None
            and "FrameTSStartEndFrames" in section.values
        ):
            movies.add(parent)
            inherited = {**resolved[parent].values, **section.values}
            section = replace(section, values=MappingProxyType(inherited))
        resolved.append(section)
    return [s for i, s in enumerate(resolved) if i not in movies]


def scan_serialem_session(
    folder: Path,
    *,
    path_map: Mapping[str, Path] | None = None,
    timezone: tzinfo = UTC,
    folders: Sequence[Path] | None = None,
) -> tuple[Session, list[Exposure]]:
    """Every ``*.mdoc`` below ``folder``, merged into one session.

    Exposures are sorted by acquisition time.  When two mdocs describe the same
    movie (a tilt-series stack mdoc and the movie's own frame mdoc), the frame
    mdoc's exposure is kept, with a warning naming the other file.
    """
    folder = Path(folder)
    paths = sorted(folder.rglob("*.mdoc"))
    if not paths:
        raise MetadataError(folder, "*.mdoc", 0, "no mdoc file below this folder")
    sessions: list[Session] = []
    by_id: dict[str, Exposure] = {}
    for mdoc in paths:
        session, exposures = read_mdoc(mdoc, path_map=path_map, timezone=timezone)
        sessions.append(session)
        for exposure in exposures:
            by_id[exposure.exposure_id] = _prefer(
                by_id.get(exposure.exposure_id), exposure
            )
    starts = [s.start_utc for s in sessions if s.start_utc is not None]
    first = sessions[0]
    merged = Session(
        name=folder.name,
        software=Software.SERIALEM,
        session_path=folder,
        start_utc=min(starts) if starts else None,
        movie_folder=next((s.movie_folder for s in sessions if s.movie_folder), None),
        storage_folder_raw=first.storage_folder_raw,
        movie_format=next((s.movie_format for s in sessions if s.movie_format), None),
        software_version=next(
            (s.software_version for s in sessions if s.software_version), ""
        ),
        extra=MappingProxyType(dict(first.extra)),
    )
    exposures = sorted(by_id.values(), key=lambda e: (e.acquired_utc, e.exposure_id))
    return merged, exposures


def _prefer(old: Exposure | None, new: Exposure) -> Exposure:
    """Of two records of one movie, the frame-set one, noting the other file."""
    if old is None:
        return new
    keep, drop = (
        (new, old)
        if new.kind is ImageKind.EXPOSURE and old.kind is not ImageKind.EXPOSURE
        else (old, new)
    )
    note = f"{keep.exposure_id} is also described by {drop.metadata_path}; {keep.metadata_path} used"
    return _with_warning(keep, note)


def _with_warning(exposure: Exposure, note: str) -> Exposure:
    return replace(exposure, warnings=(*exposure.warnings, note))


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MetadataError(path, "file", str(path), f"cannot read: {error}") from error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # SerialEM writes the Windows code page
