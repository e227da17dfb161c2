"""Read whatever the user points at: a session folder, an XML, an mdoc or a movie.

:func:`inspect_path` dispatches to the EPU or SerialEM reader, reads each movie's
header (header only), and reconciles metadata with header and profiles, so the
records it returns carry Cs and the cross-check warnings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mdcatch.crosscheck import reconcile
from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.epu.session import scan_epu_session
from mdcatch.errors import MetadataError
from mdcatch.headers.movie import read_movie_header
from mdcatch.matching import exposure_stem, is_movie_name
from mdcatch.profiles.detectors import Profiles, load_profiles
from mdcatch.records import Exposure, MovieHeader, Session, Software
from mdcatch.serialem.mdoc import read_mdoc, scan_serialem_session

__all__ = ["Inspection", "exposure_to_json", "inspect_path", "session_to_json"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Inspection:
    """What :func:`inspect_path` found."""

    session: Session
    exposures: tuple[Exposure, ...]
    headers: Mapping[str, MovieHeader]


def _detect_software(folder: Path) -> Software:
    if (folder / "EpuSession.dm").exists() or any(
        folder.rglob("FoilHole_*_Data_*.xml")
    ):
        return Software.EPU
    if any(folder.rglob("*.mdoc")):
        return Software.SERIALEM
    raise MetadataError(
        folder, "session", str(folder), "no EpuSession.dm, EPU Data XML or .mdoc found"
    )


def _metadata_beside(movie: Path) -> Path | None:
    stem = exposure_stem(movie)
    candidates = [movie.with_name(movie.name + ".mdoc")]
    if stem is not None:
        candidates += [movie.with_name(stem + ".xml"), movie.with_name(stem + ".mdoc")]
    return next((c for c in candidates if c.exists()), None)


def _read_without_reconcile(
    path: Path, movie_roots: Sequence[Path], path_map: Mapping[str, Path] | None
) -> tuple[Session, list[Exposure]]:
    if path.is_dir():
        if _detect_software(path) is Software.EPU:
            return scan_epu_session(path, movie_roots=movie_roots)
        return scan_serialem_session(path, path_map=path_map)
    suffix = path.suffix.lower()
    if suffix == ".mdoc":
        return read_mdoc(path, path_map=path_map)
    if suffix == ".xml":
        movie = None
        stem = exposure_stem(path)
        if stem is not None:
            for root in (path.parent, *movie_roots):
                movie = next(
                    (m for m in root.glob(f"{stem}*") if is_movie_name(m)), None
                )
                if movie is not None:
                    break
        exposure = read_epu_exposure(path, movie_path=movie)
        session = Session(
            name=path.stem, software=Software.EPU, session_path=path.parent
        )
        return session, [exposure]
    if is_movie_name(path) or suffix in {".mrc", ".mrcs", ".tif", ".tiff", ".eer"}:
        metadata = _metadata_beside(path)
        session = Session(
            name=path.stem, software=Software.EPU, session_path=path.parent
        )
        if metadata is None:
            return session, []
        return _read_without_reconcile(metadata, (path.parent,), path_map)
    raise MetadataError(
        path, "path", str(path), "not a session folder, XML, mdoc or movie"
    )


def inspect_path(
    path: Path,
    *,
    movie_roots: Sequence[Path] = (),
    path_map: Mapping[str, Path] | None = None,
    profiles: Profiles | None = None,
) -> Inspection:
    """Parse ``path`` and reconcile every exposure with its movie header.

    Raises :class:`MetadataError` for anything that cannot be trusted.
    """
    path = Path(path)
    if not path.exists():
        raise MetadataError(path, "path", str(path), "does not exist")
    profiles = profiles if profiles is not None else load_profiles()
    session, exposures = _read_without_reconcile(path, movie_roots, path_map)
    headers: dict[str, MovieHeader] = {}
    if path.is_file() and path.suffix.lower() not in {".xml", ".mdoc"}:
        headers[str(path)] = read_movie_header(path)
    reconciled = []
    for exposure in exposures:
        header = None
        if exposure.movie_path is not None and exposure.movie_path.exists():
            header = headers.get(str(exposure.movie_path)) or read_movie_header(
                exposure.movie_path
            )
            headers[str(exposure.movie_path)] = header
        reconciled.append(reconcile(exposure, header, profiles))
    return Inspection(session=session, exposures=tuple(reconciled), headers=headers)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def exposure_to_json(exposure: Exposure) -> dict[str, Any]:
    """A flat JSON object: the record's fields, with the optics fields inlined."""
    data: dict[str, Any] = _jsonable(exposure)
    optics = data.pop("optics")
    data.update(optics)
    data["dose_per_frame_e_per_a2"] = exposure.dose_per_frame_e_per_a2
    return data


def session_to_json(session: Session) -> dict[str, Any]:
    result: dict[str, Any] = _jsonable(session)
    return result
