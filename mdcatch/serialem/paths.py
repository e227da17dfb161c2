"""Where a file named in an mdoc lies on this machine.

SerialEM runs on Windows and writes drive (``X:\\Data\\run\\a.tif``) and UNC
(``\\\\server\\share\\run\\a.tif``) paths.  ``path_map`` maps a Windows prefix to a
local folder (``{"X:\\Data": Path("/mnt/krios/data")}``); the prefix is compared
part by part and case-insensitively, the longest matching prefix wins and the rest
of the path is appended with its case kept.  Without a match the file is looked for
next to the mdoc by its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PureWindowsPath

from mdcatch.containment import check_inside
from mdcatch.errors import MetadataError

__all__ = ["is_windows_path", "locate_file", "map_windows_path"]


def is_windows_path(raw: str) -> bool:
    """True for drive-letter, UNC or backslash paths."""
    return "\\" in raw or (len(raw) > 1 and raw[1] == ":")


def _folded_parts(path: PureWindowsPath) -> tuple[str, ...]:
    return tuple(part.rstrip("\\/").lower() for part in path.parts)


def map_windows_path(raw: str, path_map: Mapping[str, Path] | None) -> Path | None:
    """The local path that ``raw`` maps to through ``path_map``, or None."""
    if not path_map:
        return None
    target = PureWindowsPath(raw)
    target_parts = _folded_parts(target)
    best: tuple[int, Path] | None = None
    for prefix, folder in path_map.items():
        prefix_parts = _folded_parts(PureWindowsPath(prefix))
        n = len(prefix_parts)
        if n and target_parts[:n] == prefix_parts and (best is None or n > best[0]):
            best = (n, Path(folder))
    if best is None:
        return None
    n, folder = best
    return folder.joinpath(*target.parts[n:])


def locate_file(
    raw: str,
    *,
    mdoc_dir: Path,
    path_map: Mapping[str, Path] | None,
    near: Path | None = None,
    folders: Sequence[Path] | None = None,
    source: Path | None = None,
    field: str = "SubFramePath",
) -> Path | None:
    """The existing local file that an mdoc entry ``raw`` refers to, or None.

    Candidates, first existing wins: the ``path_map`` mapping of a Windows path; a
    POSIX path as written (absolute, or relative to the mdoc); the file name in the
    folder ``near`` (the movie's folder, for gain references); the file name next to
    the mdoc.  With ``folders`` (the live service's session and movie folders) a
    candidate is considered only if it lies inside them
    (:func:`mdcatch.containment.check_inside`), so nothing outside is even looked
    at; when no candidate inside exists but one outside was refused, that refusal
    is raised as a :class:`MetadataError` naming ``source`` (the mdoc), ``field``
    and ``raw``.
    """
    text = raw.strip()
    if not text:
        return None
    candidates: list[Path] = []
    if is_windows_path(text):
        mapped = map_windows_path(text, path_map)
        if mapped is not None:
            candidates.append(mapped)
        name = PureWindowsPath(text).name
    else:
        posix = Path(text)
        candidates.append(posix if posix.is_absolute() else mdoc_dir / posix)
        name = posix.name
    if name:
        if near is not None:
            candidates.append(near / name)
        candidates.append(mdoc_dir / name)
    refused: MetadataError | None = None
    for candidate in candidates:
        if folders is not None:
            try:
                check_inside(
                    candidate,
                    folders,
                    source=mdoc_dir if source is None else source,
                    field=field,
                    value=raw,
                )
            except MetadataError as error:
                refused = refused or error
                continue
        try:
            if candidate.is_file():
                return candidate
        except (OSError, ValueError):
            continue  # unreadable or impossible name: try the next candidate
    if refused is not None:
        raise refused
    return None
