"""When a file counts: size and mtime stable for a settle time, and it is complete.

:class:`SettleTracker` is pure bookkeeping (no threads, no asyncio): the watcher
tells it which paths it saw, asks which are due for a check, and the tracker answers
with the paths whose ``(size, mtime)`` did not change for ``settle_time_s``.  A
path already accepted with the same signature is ignored, so duplicate and
out-of-order events are harmless; a changed signature (a rewritten file) starts
over.  :func:`check_complete` then asks mdcatch whether the file parses (metadata)
or its header is complete (movie).
"""

from __future__ import annotations

import enum
import heapq
import os
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path

from livestream.config import SoftwareChoice
from mdcatch import matching
from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.errors import MetadataError
from mdcatch.headers.movie import check_movie_complete
from mdcatch.serialem.mdoc import read_mdoc

__all__ = [
    "FileKind",
    "FileSignature",
    "SettleTracker",
    "check_complete",
    "classify_path",
    "exposure_key",
    "is_temporary_name",
    "read_signature",
]

_MOVIE_SUFFIXES = (".tif", ".tiff", ".mrc", ".mrcs", ".eer")
_TEMPORARY_SUFFIXES = (
    ".tmp",
    ".temp",
    ".partial",
    ".part",
    ".filepart",
    ".crdownload",
    "~",
)


class FileKind(enum.Enum):
    EPU_XML = "epu_xml"
    MDOC = "mdoc"
    MOVIE = "movie"


@dataclass(frozen=True, slots=True)
class FileSignature:
    size_bytes: int
    mtime_ns: int


def read_signature(path: Path) -> FileSignature | None:
    """Size and mtime of the file, ``None`` once it is gone.

    A name that cannot be followed (a symbolic link loop, a dangling or forbidden
    target) has the signature of the link itself, so that it settles and the
    intake reports it instead of it being silently skipped; any other
    :class:`OSError` is raised for the caller to report.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
    return FileSignature(st.st_size, st.st_mtime_ns)


def is_temporary_name(path: Path) -> bool:
    name = path.name
    return name.startswith((".", "~", "#")) or name.lower().endswith(
        _TEMPORARY_SUFFIXES
    )


def classify_path(
    path: Path,
    software: SoftwareChoice = SoftwareChoice.AUTO,
    expected: Container[Path] = frozenset(),
) -> FileKind | None:
    """What a session file is, or ``None`` for anything the service ignores.

    EPU: exposure XMLs and movies named like them (:mod:`mdcatch.matching`).
    SerialEM: ``*.mdoc`` and a movie with an mdoc beside it (or one an mdoc named:
    ``expected``).  EPU's summed images and thumbnails are ignored.
    """
    if is_temporary_name(path):
        return None
    name = path.name.lower()
    epu = software is not SoftwareChoice.SERIALEM
    serialem = software is not SoftwareChoice.EPU
    if name.endswith(".mdoc"):
        return FileKind.MDOC if serialem else None
    if epu and matching.is_epu_exposure_xml(path):
        return FileKind.EPU_XML
    if epu and matching.is_movie_name(path):
        return FileKind.MOVIE
    if (
        serialem
        and name.endswith(_MOVIE_SUFFIXES)
        and (path in expected or path.with_name(path.name + ".mdoc").exists())
    ):
        return FileKind.MOVIE
    return None


def exposure_key(path: Path, kind: FileKind) -> str | None:
    """The ledger key shared by an exposure's metadata and movie."""
    if kind is FileKind.MDOC:
        return Path(path.name[: -len(".mdoc")]).stem or None
    stem = matching.exposure_stem(path)
    if stem is None and kind is FileKind.MOVIE:
        return path.stem or None
    return stem


def check_complete(
    path: Path, kind: FileKind, folders: Sequence[Path] | None = None
) -> str | None:
    """``None`` when the settled file is complete, else what is wrong with it.

    Metadata must parse (an mdoc's files must lie in ``folders`` when given); a
    movie's header must be sane and complete (all frames present).  The reason
    is mdcatch's message, naming the file, the field and the value.
    """
    try:
        if kind is FileKind.EPU_XML:
            read_epu_exposure(path)
        elif kind is FileKind.MDOC:
            read_mdoc(path, folders=folders)
        else:
            check_movie_complete(path)
    except MetadataError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: cannot be read: {exc}"
    return None


class SettleTracker:
    """Remember the last signature of each path and when it was first seen."""

    def __init__(
        self, settle_time_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settle_time_s = settle_time_s
        self._clock = clock
        self._watching: dict[Path, tuple[FileSignature, float]] = {}
        self._accepted: dict[Path, FileSignature] = {}
        self._due: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._watching)

    def observe(self, path: Path) -> None:
        """Note that ``path`` may have changed (an event or a rescan saw it)."""
        signature = read_signature(path)
        if signature is None:
            self._watching.pop(path, None)
            return
        if self._accepted.get(path) == signature:
            return
        known = self._watching.get(path)
        if known is not None and known[0] == signature:
            return
        now = self._clock()
        self._watching[path] = (signature, now)
        heapq.heappush(self._due, (now + self.settle_time_s, str(path)))

    def next_due_s(self) -> float | None:
        """Seconds until the next check, ``None`` when nothing is waiting."""
        if not self._due:
            return None
        return max(0.0, self._due[0][0] - self._clock())

    def pop_settled(self) -> list[tuple[Path, FileSignature]]:
        """Paths whose signature held for the settle time; they become accepted."""
        now = self._clock()
        settled = []
        while self._due and self._due[0][0] <= now:
            _, name = heapq.heappop(self._due)
            path = Path(name)
            known = self._watching.get(path)
            if known is None:
                continue
            current = read_signature(path)
            if current is None:
                del self._watching[path]
            elif current != known[0]:
                self._watching[path] = (current, now)
                heapq.heappush(self._due, (now + self.settle_time_s, name))
            elif known[1] + self.settle_time_s <= now:
                del self._watching[path]
                self._accepted[path] = current
                settled.append((path, current))
        return settled

    def forget(self, path: Path) -> None:
        """Let ``path`` be accepted again (after it was rejected as incomplete)."""
        self._accepted.pop(path, None)
