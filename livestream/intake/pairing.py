"""Pair settled metadata and movies into ready exposures.

EPU writes the exposure XML and the movie into different folder trees, in either
order; SerialEM writes ``movie.tif`` and ``movie.tif.mdoc``.  Both are keyed by
:func:`mdcatch.matching.exposure_stem`.  An exposure is ready when both files have
settled and are complete; it is then parsed once more with the movie (mdcatch
cross-checks header against metadata) and handed to the scheduler.  Bad input is
quarantined in the ledger with mdcatch's message; a movie or metadata file whose
partner never arrives is quarantined after ``orphan_timeout_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from livestream.intake.settle import (
    FileKind,
    FileSignature,
    check_complete,
    exposure_key,
)
from livestream.ledger.store import Ledger, StageState
from livestream.telemetry.reporting import Reporter
from mdcatch.errors import MetadataError
from mdcatch.records import Exposure

if TYPE_CHECKING:
    from mdcatch.profiles.detectors import Profiles

__all__ = ["Intake", "parse_exposure"]

log = logging.getLogger(__name__)


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
) -> Exposure:
    """Read the metadata with its movie; cross-check against the movie's header.

    The returned record's ``exposure_id`` is ``key`` (the ledger's key).
    """
    from mdcatch.crosscheck import reconcile
    from mdcatch.headers.movie import read_movie_header

    if kind is FileKind.EPU_XML:
        from mdcatch.epu.exposure import read_epu_exposure

        exposure = read_epu_exposure(metadata_path, movie_path=movie_path)
    else:
        from mdcatch.serialem.mdoc import read_mdoc

        _, exposures = read_mdoc(metadata_path, path_map=path_map)
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
    ) -> None:
        self._ledger = ledger
        self._chain = chain
        self._offer = offer
        self._reporter = reporter
        self._orphan_timeout_s = orphan_timeout_s
        self._path_map = path_map
        self._clock = clock
        self._expect_movie = expect_movie
        self._loaded_profiles: Profiles | None = None
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def on_settled(self, path: Path, kind: FileKind, signature: FileSignature) -> None:
        """A file settled: check it, pair it, and maybe make an exposure ready."""
        stem = exposure_key(path, kind)
        if stem is None:
            return
        try:
            self._take(stem, path, kind, signature)
        except Exception as exc:
            log.exception("unexpected error importing %s", path)
            self._quarantine(
                stem, f"{path}: unexpected {type(exc).__name__}: {exc}", None
            )

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
        problem = check_complete(path, kind)
        if problem is not None:
            self._quarantine(stem, problem, signature if is_movie else None)
            return
        if kind is FileKind.MDOC and self._expect_movie is not None:
            self._announce_serialem_movie(path)
        pending = self._pending.setdefault(stem, _Pending(first_seen_s=self._clock()))
        if is_movie:
            pending.movie = (path, signature)
        else:
            pending.metadata = (path, kind)
        if pending.metadata is not None and pending.movie is not None:
            del self._pending[stem]
            self._make_ready(stem, pending.metadata, pending.movie)

    def _profiles(self) -> Profiles:
        if self._loaded_profiles is None:
            from mdcatch.profiles.detectors import load_profiles

            self._loaded_profiles = load_profiles()
        return self._loaded_profiles

    def _announce_serialem_movie(self, mdoc: Path) -> None:
        """An mdoc may name a movie in another folder: have the watcher track it."""
        from mdcatch.serialem.mdoc import read_mdoc

        _, exposures = read_mdoc(mdoc, path_map=self._path_map)
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
            )
        except MetadataError as exc:
            self._quarantine(stem, str(exc), signature)
            return
        except OSError as exc:
            self._quarantine(stem, f"{movie_path}: cannot be read: {exc}", signature)
            return
        if not self._ledger.is_imported(stem):
            self._reporter.exposure_ready(exposure)
        self._ledger.mark_ready(
            stem,
            chain=self._chain,
            acquired_unix_s=exposure.acquired_utc.timestamp(),
            metadata_path=metadata[0],
            movie_path=movie_path,
            movie_size_bytes=signature.size_bytes,
            movie_mtime_ns=signature.mtime_ns,
        )
        self._offer(exposure)

    def _quarantine(
        self, stem: str, reason: str, signature: FileSignature | None
    ) -> None:
        self._pending.pop(stem, None)
        self._ledger.quarantine_import(
            stem,
            reason,
            input_size_bytes=None if signature is None else signature.size_bytes,
            input_mtime_ns=None if signature is None else signature.mtime_ns,
        )
        self._reporter.import_quarantined(stem, reason)

    def quarantine_orphans(self) -> int:
        """Quarantine half-pairs older than the orphan timeout; return how many."""
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
            if self._ledger.import_state(stem) is not StageState.QUARANTINED:
                self._quarantine(stem, reason, None)
            # Keep waiting: a late partner still makes the exposure ready.
            self._pending[stem] = pending
            pending.first_seen_s = float("inf")
        return len(expired)
