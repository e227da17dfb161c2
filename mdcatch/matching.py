"""Pair EPU movies with their metadata XML by the name stem they share.

EPU names the metadata ``X.xml`` and the movie ``X_Fractions.mrc``,
``X_fractions.tiff``, ``X_Fractions.tiff``, ``X_EER.eer`` or ``X.eer``, often in a
different folder tree (``DoseFractions``).  :func:`exposure_stem` is a pure function
of the name, so a watcher can pair the two files whichever arrives first.  ``X.mrc``
and ``X.jpg`` beside the XML are EPU's summed image and thumbnail, not movies, and
temporary names (``.X.xml.Ab12``, ``~X``, ``X.xml.tmp``, ``X.mrc.part``) match nothing.

Example::

    exposure_stem("FoilHole_1_Data_2_3_20200320_090200_Fractions.tiff")
    # 'FoilHole_1_Data_2_3_20200320_090200'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from mdcatch.containment import check_inside
from mdcatch.errors import MetadataError

__all__ = [
    "exposure_stem",
    "find_movie",
    "index_movies",
    "is_epu_exposure_xml",
    "is_movie_name",
]

_EXPOSURE_XML = re.compile(r"(FoilHole_\d+_Data_\d+(?:_\d+)*_\d{8}_\d{6})\.xml")
_SUFFIXED_MOVIE = re.compile(
    r"(.+?)_(?:fractions|eer)\.(?:mrc|mrcs|tif|tiff|eer)", re.IGNORECASE
)
_PLAIN_EER = re.compile(r"(.+)\.eer", re.IGNORECASE)


def _name(path: str | os.PathLike[str]) -> str:
    # Split on both separators so Windows paths read on Linux give the right name.
    return re.split(r"[\\/]", os.fspath(path))[-1]


def _is_temporary(name: str) -> bool:
    return not name or name[0] in ".~" or "~" in name


def is_epu_exposure_xml(path: str | os.PathLike[str]) -> bool:
    """True for an EPU per-exposure XML name (``FoilHole_*_Data_*_<date>_<time>.xml``)."""
    name = _name(path)
    return not _is_temporary(name) and _EXPOSURE_XML.fullmatch(name) is not None


def _movie_stem(name: str) -> str | None:
    if _is_temporary(name):
        return None
    match = _SUFFIXED_MOVIE.fullmatch(name) or _PLAIN_EER.fullmatch(name)
    return None if match is None else match.group(1)


def is_movie_name(path: str | os.PathLike[str]) -> bool:
    """True for a movie name that pairs with an exposure XML."""
    return _movie_stem(_name(path)) is not None


def exposure_stem(path: str | os.PathLike[str]) -> str | None:
    """The stem shared by an exposure XML and its movie; ``None`` for other files.

    ``X.xml``, ``X_Fractions.mrc``, ``X_fractions.tiff``, ``X_EER.eer`` and ``X.eer``
    all give ``X``.  Temporary names, summed images and thumbnails give ``None``.
    """
    name = _name(path)
    if is_epu_exposure_xml(name):
        return name[: -len(".xml")]
    return _movie_stem(name)


def _walk_movies(roots: Sequence[Path]) -> Iterator[tuple[str, Path]]:
    """(stem, path) for every movie under ``roots``: root order, then sorted names.

    A movie whose resolved path leaves ``roots`` (a symbolic link elsewhere, a
    loop) is not one of this session's (:func:`mdcatch.containment.check_inside`).
    """
    for root in roots:
        for folder, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                stem = _movie_stem(filename)
                path = Path(folder) / filename
                if stem is not None and _is_inside(path, roots):
                    yield stem, path


def _is_inside(path: Path, roots: Sequence[Path]) -> bool:
    try:
        check_inside(path, roots, source=path, field="movie_path")
    except MetadataError:
        return False
    return True


def index_movies(roots: Sequence[Path]) -> dict[str, Path]:
    """``{stem: movie path}`` for every movie under ``roots`` (first one wins).

    One walk of each tree, for pairing a whole session at once.
    """
    index: dict[str, Path] = {}
    for stem, path in _walk_movies(roots):
        index.setdefault(stem, path)
    return index


def find_movie(stem: str, roots: Sequence[Path]) -> Path | None:
    """The first movie under ``roots`` whose stem is ``stem``, or ``None``.

    Roots are searched in order, each one recursively in sorted order, so the answer
    does not depend on the file system's listing order.
    """
    return next((path for s, path in _walk_movies(roots) if s == stem), None)
