"""Pair settled metadata and movies into ready exposures.

EPU writes the exposure XML and the movie into different folder trees, in either
order; SerialEM writes ``movie.tif`` and ``movie.tif.mdoc``.  Both are keyed by
:func:`mdcatch.matching.exposure_stem`.  An exposure is ready when both files have
settled and are complete; it is then parsed once more with the movie (mdcatch
cross-checks header against metadata) and handed to the scheduler.  Bad input is
quarantined in the ledger with mdcatch's message; a movie or metadata file whose
partner never arrives is quarantined after ``orphan_timeout_s``.

Every file is held to :func:`mdcatch.containment.check_inside` before it is
opened: its resolved path must lie in the session or movie folders
(:func:`session_folders`).  A quarantined import whose file changes afterwards
(a copy that stalled longer than the settle time) is examined again, at most
:data:`MAX_REEXAMINATIONS` times per file; its partner is kept for it meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from livestream.config import SessionConfig
from livestream.intake.settle import (
    FileKind,
    FileSignature,
    check_complete,
    exposure_key,
)
from livestream.ledger.store import Ledger, StageState
from livestream.scheduling.pause import PauseGate, PauseReason, is_disk_full
from livestream.telemetry.reporting import Reporter
from mdcatch.containment import check_inside
from mdcatch.crosscheck import reconcile
from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.errors import MetadataError
from mdcatch.headers.movie import read_movie_header
from mdcatch.profiles.detectors import Profiles, load_profiles
from mdcatch.records import Exposure
from mdcatch.serialem.mdoc import read_mdoc

__all__ = ["MAX_REEXAMINATIONS", "Intake", "parse_exposure", "session_folders"]

log = logging.getLogger(__name__)

MAX_REEXAMINATIONS = 5  # per file: a file rewritten for ever is not looked at for ever


def session_folders(config: SessionConfig) -> tuple[Path, ...]:
    """The folders the service may read: the session folder, the movie folders and
    the local folders of ``path_map`` (where SerialEM's Windows paths point)."""
    return tuple(
        dict.fromkeys([config.path, *config.movie_roots, *config.path_map.values()])
    )


@dataclass(slots=True)
class _Pending:
    metadata: tuple[Path, FileKind] | None = None
    movie: tuple[Path, FileSignature] | None = None
    first_seen_s: float = field(default_factory=time.monotonic)


def parse_exposure(
    key: str,
    metadata_path: Path,
    kind: FileKind,
    movie_path: Path,
    profiles: Profiles,
    path_map: Mapping[str, Path] | None = None,
    folders: Sequence[Path] | None = None,
) -> Exposure:
    """Read the metadata with its movie; cross-check against the movie's header.

    The returned record's ``exposure_id`` is ``key`` (the ledger's key).  With
    ``folders``, files an mdoc names must lie inside them.
    """
    if kind is FileKind.EPU_XML:
        exposure = read_epu_exposure(metadata_path, movie_path=movie_path)
    else:
        _, exposures = read_mdoc(metadata_path, path_map=path_map, folders=folders)
        if not exposures:
            raise MetadataError(
                metadata_path, "FrameSet", None, "mdoc holds no exposure"
            )
        exposure = exposures[0]
        if exposure.frame_range is not None:
            raise MetadataError(
                metadata_path,
                "FrameTSStartEndFrames",
                f"{len(exposures)} tilts in one movie",
                "a frame-set tilt series: motion correction of a frame range is "
                "not supported yet, so its sub-exposures are quarantined rather "
                "than the whole movie processed as one exposure",
            )
    exposure = replace(exposure, exposure_id=key, movie_path=movie_path)
    header = read_movie_header(movie_path)
    return reconcile(exposure, header, profiles)


class Intake:
    """Called by the watcher with each settled, classified file."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        chain: tuple[str, ...],
        offer: Callable[[Exposure], None],
        reporter: Reporter,
        orphan_timeout_s: float,
        path_map: Mapping[str, Path] | None = None,
        expect_movie: Callable[[Path], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        folders: Sequence[Path] | None = None,
        gate: PauseGate | None = None,
    ) -> None:
        """``folders``: where files may lie (:func:`session_folders`); ``None``
        reads any file (offline use)."""
        self._ledger = ledger
        self._chain = chain
        self._offer = offer
        self._reporter = reporter
        self._orphan_timeout_s = orphan_timeout_s
        self._path_map = path_map
        self._clock = clock
        self._expect_movie = expect_movie
        self._folders = folders
        self._loaded_profiles: Profiles | None = None
        self._pending: dict[str, _Pending] = {}
        self._suspects: set[Path] = set()  # files that got an import quarantined
        self._reexamined: dict[Path, int] = {}
        # while paused (a full disk) settled files wait here, in order
        self._gate = gate if gate is not None else PauseGate()
        self._gate.add_listener(self._on_gate_change)
        self._deferred: list[tuple[Path, FileKind, FileSignature]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def on_settled(self, path: Path, kind: FileKind, signature: FileSignature) -> None:
        """A file settled: check it, pair it, and maybe make an exposure ready."""
        stem = exposure_key(path, kind)
        if stem is None:
            return
        if self._gate.paused:
            self._deferred.append((path, kind, signature))
            return
        try:
            try:
                self._take(stem, path, kind, signature)
            except Exception as exc:
                if is_disk_full(exc):
                    raise
                log.exception("unexpected error importing %s", path)
                self._quarantine(
                    stem, f"{path}: unexpected {type(exc).__name__}: {exc}", None
                )
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            # not the file's fault: take it again when space returns
            self._gate.pause(PauseReason.DISK_FULL, f"importing {path}: {exc}")
            self._deferred.append((path, kind, signature))

    def on_unreadable(self, path: Path, reason: str) -> None:
        """The watcher could not even look at ``path``: quarantine its exposure."""
        mdoc = path.name.lower().endswith(".mdoc")
        stem = exposure_key(path, FileKind.MDOC if mdoc else FileKind.MOVIE)
        if stem and self._ledger.import_state(stem) is not StageState.DONE:
            if self._ledger.record_discovered(stem):
                self._reporter.exposure_discovered(stem)
            self._quarantine(stem, reason, None, (path,))

    def _take(
        self, stem: str, path: Path, kind: FileKind, signature: FileSignature
    ) -> None:
        is_movie = kind is FileKind.MOVIE
        if self._ledger.record_discovered(
            stem,
            metadata_path=None if is_movie else path,
            movie_path=path if is_movie else None,
        ):
            self._reporter.exposure_discovered(stem)
        elif path in self._suspects and not self._count_reexamination(path):
            return
        problem = self._check(path, kind)
        if problem is not None:
            self._quarantine(stem, problem, signature if is_movie else None, (path,))
            return
        if kind is FileKind.MDOC and self._expect_movie is not None:
            try:
                self._announce_serialem_movie(path)
            except MetadataError as exc:
                self._quarantine(stem, str(exc), None, (path,))
                return
        pending = self._pending.setdefault(stem, _Pending(first_seen_s=self._clock()))
        if is_movie:
            pending.movie = (path, signature)
        else:
            pending.metadata = (path, kind)
        if pending.metadata is not None and pending.movie is not None:
            self._make_ready(stem, pending.metadata, pending.movie)
            self._pending.pop(stem, None)  # kept if that raised (a full disk)

    def _on_gate_change(self) -> None:
        """The gate opened: take the files that settled while it was closed."""
        if not self._gate.paused:
            deferred, self._deferred = self._deferred, []
            for path, kind, signature in deferred:
                self.on_settled(path, kind, signature)

    def _check(self, path: Path, kind: FileKind) -> str | None:
        """What is wrong with a settled file (outside the folders, incomplete), or
        ``None``; nothing outside the folders is opened."""
        if self._folders is not None:
            name = "movie_path" if kind is FileKind.MOVIE else "metadata_path"
            try:
                check_inside(path, self._folders, source=path, field=name)
            except MetadataError as exc:
                return str(exc)
        return check_complete(path, kind, self._folders)

    def _count_reexamination(self, path: Path) -> bool:
        """A quarantined import's file changed: examine it again (and count it),
        unless it was already examined :data:`MAX_REEXAMINATIONS` times."""
        count = self._reexamined.get(path, 0)
        if count >= MAX_REEXAMINATIONS:
            log.warning(
                "%s changed again after %d re-examinations: ignored until a restart",
                path,
                count,
            )
            return False
        self._reexamined[path] = count + 1
        self._reporter.intake_reexamined()
        log.info("%s changed after it was quarantined: examining it again", path)
        return True

    def _profiles(self) -> Profiles:
        if self._loaded_profiles is None:
            self._loaded_profiles = load_profiles()
        return self._loaded_profiles

    def _announce_serialem_movie(self, mdoc: Path) -> None:
        """An mdoc may name a movie in another folder: have the watcher track it."""
        _, exposures = read_mdoc(mdoc, path_map=self._path_map, folders=self._folders)
        for exposure in exposures[:1]:
            if exposure.movie_path is not None and self._expect_movie is not None:
                self._expect_movie(exposure.movie_path)

    def _make_ready(
        self,
        stem: str,
        metadata: tuple[Path, FileKind],
        movie: tuple[Path, FileSignature],
    ) -> None:
        movie_path, signature = movie
        try:
            exposure = parse_exposure(
                stem,
                metadata[0],
                metadata[1],
                movie_path,
                self._profiles(),
                self._path_map,
                self._folders,
            )
        except MetadataError as exc:
            self._quarantine(stem, str(exc), signature, (metadata[0], movie_path))
            return
        except OSError as exc:
            reason = f"{movie_path}: cannot be read: {exc}"
            self._quarantine(stem, reason, signature, (metadata[0], movie_path))
            return
        self._suspects.difference_update((metadata[0], movie_path))
        newly_ready = not self._ledger.is_imported(stem)
        self._ledger.mark_ready(
            stem,
            chain=self._chain,
            acquired_unix_s=exposure.acquired_utc.timestamp(),
            metadata_path=metadata[0],
            movie_path=movie_path,
            movie_size_bytes=signature.size_bytes,
            movie_mtime_ns=signature.mtime_ns,
        )
        if newly_ready:  # after the write: a full disk must not count it twice
            self._reporter.exposure_ready(exposure)
        self._offer(exposure)

    def _quarantine(
        self,
        stem: str,
        reason: str,
        signature: FileSignature | None,
        files: tuple[Path, ...] = (),
    ) -> None:
        """Quarantine the import.  ``files`` caused it: each is examined again if
        it changes, and the exposure's other file keeps waiting for it."""
        self._suspects.update(files)
        pending = self._pending.pop(stem, None)
        if pending is not None and files:
            pending.first_seen_s = float("inf")  # no orphan message over this one
            self._pending[stem] = pending
        self._ledger.quarantine_import(
            stem,
            reason,
            input_size_bytes=None if signature is None else signature.size_bytes,
            input_mtime_ns=None if signature is None else signature.mtime_ns,
        )
        self._reporter.import_quarantined(stem, reason)

    def quarantine_orphans(self) -> int:
        """Quarantine half-pairs older than the orphan timeout; return how many.

        Not while paused: the partner may be waiting among the deferred files.
        """
        if self._gate.paused:
            return 0
        now = self._clock()
        expired = [
            stem
            for stem, p in self._pending.items()
            if now - p.first_seen_s >= self._orphan_timeout_s
        ]
        for stem in expired:
            pending = self._pending[stem]
            if pending.movie is not None:
                reason = (
                    f"{pending.movie[0]}: movie has no metadata (.xml or .mdoc) after "
                    f"{self._orphan_timeout_s:g} s"
                )
            else:
                assert pending.metadata is not None
                reason = (
                    f"{pending.metadata[0]}: metadata has no movie after "
                    f"{self._orphan_timeout_s:g} s (check session.movie_roots)"
                )
            try:
                if self._ledger.import_state(stem) is not StageState.QUARANTINED:
                    self._quarantine(stem, reason, None)
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                self._gate.pause(PauseReason.DISK_FULL, f"ledger: {exc}")
                self._pending[stem] = pending  # looked at again after the pause
                return 0
            # Keep waiting: a late partner still makes the exposure ready.
            self._pending[stem] = pending
            pending.first_seen_s = float("inf")
        return len(expired)
