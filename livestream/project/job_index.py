"""Job-level RELION index files, rebuilt from the ledger.

RELION reads a job's results from one index file per job; the service keeps them:

- ``MotionCorr/job002/corrected_micrographs.star`` (``data_optics`` +
  ``data_micrographs``: name, metadata, power spectrum, optics group, accumulated
  motion total/early/late),
- ``CtfFind/job003/micrographs_ctf.star`` (the same micrograph names with
  rlnCtfImage, defocus U/V/angle, astigmatism, figure of merit, fit resolution,
  phase shift),
- ``Extract/job006/particles.star``, the session's particle pool: the
  per-micrograph particle STAR files of the extraction stage, concatenated, of
  the exposures that curation currently accepts (a rejected exposure keeps its
  own particle file but leaves the pool),
- ``Select/job004/micrographs.star``: the rows of
  ``micrographs_ctf.star`` that curation currently accepts,
- ``AutoPick/job005/autopick.star``: RELION's coordinate index
  (``data_coordinate_files``: rlnMicrographName, rlnMicrographCoordinates) of
  the micrographs the picker ran on,
- ``Import/job001/movies.star`` (``data_optics`` + ``data_movies``): the movies
  whose motion correction is done (their optics are recorded then), named through
  the project's ``Movies`` link (:mod:`livestream.project.movies`), in the same
  optics groups as ``corrected_micrographs.star``.

After each rebuild the RELION pipeline files are rewritten
(:class:`~livestream.project.pipeline.RelionPipeline`, when the service gives one:
jobs ``Running``); :meth:`JobIndex.finish` rebuilds and marks them ``Succeeded``.

Every file is rebuilt from the ``done`` rows of the ledger (outputs and figures,
never in-memory state) and written atomically, so after a kill and restart the
first rebuild gives the same files.  Paths are relative to the project folder,
as RELION writes them.  The daemon rebuilds at start-up, at most every
``min_interval_s`` while exposures finish (:meth:`JobIndex.run`), and at shutdown;
after each rebuild by :meth:`JobIndex.run` it calls the ``on_written`` callbacks
(the online 2D classifier feeds its pool then).

Which stage feeds which index is a fact of its kind
(:data:`livestream.stages.registry.STAGE_KINDS`); a plugin stage
(``"package.module:function"``) feeds one when its table says so: ``index =
"extract"`` (or motion, ctf, curate, pick), with the outputs and figures that index
reads.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livestream.ledger.schema import Curation, StageResult, curation_of
from livestream.ledger.store import Ledger
from livestream.project.job_tables import (
    corrected_micrographs,
    micrographs_ctf,
    movies_table,
)
from livestream.project.jobs import (
    AUTO_PICK,
    CTF_FIND,
    EXTRACT,
    IMPORT,
    MOTION_CORR,
    SELECT,
)
from livestream.project.movies import movie_name
from livestream.project.pipeline import RelionPipeline
from livestream.stages.registry import Chain
from livestream.telemetry.reporting import EventType, ServiceEvent
from pipelines.extraction.particles_star import (
    read_particles_star,
    write_particles_star,
)
from pipelines.io.outputs import write_star, write_text_atomic

__all__ = ["IndexTargets", "JobIndex", "index_targets"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexTargets:
    """Which chain stage feeds which index (``None``: not in the chain)."""

    motion_stage: str | None = None
    motion_job: str = MOTION_CORR.folder
    ctf_stage: str | None = None
    ctf_job: str = CTF_FIND.folder
    curate_stage: str | None = None
    curate_job: str = SELECT.folder
    pick_stage: str | None = None
    pick_job: str = AUTO_PICK.folder
    extract_stage: str | None = None
    extract_job: str = EXTRACT.folder

    @property
    def stages(self) -> frozenset[str]:
        names = (
            self.motion_stage,
            self.ctf_stage,
            self.curate_stage,
            self.pick_stage,
            self.extract_stage,
        )
        return frozenset(n for n in names if n is not None)


def index_targets(chain: Chain) -> IndexTargets:
    """The first stage that feeds each index (its kind's, or a plugin's ``index``),
    with its job."""
    found: dict[str, Any] = {}
    for link in chain.links:
        role = link.index
        if role is None or f"{role.value}_stage" in found:
            continue
        found[f"{role.value}_stage"] = link.name
        if link.job is not None:
            found[f"{role.value}_job"] = link.job
    return IndexTargets(**found)


Done = tuple[str, StageResult]  # (exposure_id, the done stage's result)


class JobIndex:
    """Writes the index files of ``targets`` from the ledger at ``ledger_path``."""

    def __init__(
        self,
        ledger_path: Path,
        project: Path,
        targets: IndexTargets,
        *,
        min_interval_s: float = 3.0,
        pipeline: RelionPipeline | None = None,
    ) -> None:
        self.ledger_path = ledger_path
        self.project = project
        self.targets = targets
        self.min_interval_s = min_interval_s
        self.pipeline = pipeline
        self.n_writes = 0
        self._dirty = asyncio.Event() if _has_loop() else None
        self._particle_cache: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._on_written: list[Callable[[], None]] = []

    @property
    def particles_star(self) -> Path | None:
        """The session's particle pool STAR (``None``: no extraction stage)."""
        if self.targets.extract_stage is None:
            return None
        return self.project / self.targets.extract_job / "particles.star"

    def add_written_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop) after each rebuild by :meth:`run`."""
        self._on_written.append(callback)

    # -- when to write ----------------------------------------------------------
    def on_event(self, event: ServiceEvent) -> None:
        """A reporter listener: a done stage that feeds an index marks it dirty."""
        if (
            event.type is EventType.STAGE_FINISHED
            and event.state == "done"
            and event.stage in self.targets.stages
            and self._dirty is not None
        ):
            self._dirty.set()

    async def run(self) -> None:
        """Rewrite when dirty, at most every ``min_interval_s``, until cancelled."""
        if self._dirty is None:
            self._dirty = asyncio.Event()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if await asyncio.to_thread(self.write_logged):
                for callback in self._on_written:
                    callback()
            await asyncio.sleep(self.min_interval_s)

    def write_logged(self) -> bool:
        """:meth:`write_all`, logging a failure instead of raising it (the service
        goes on; the next finished exposure or the next start tries again)."""
        try:
            self.write_all()
        except (OSError, ValueError, KeyError, sqlite3.Error):
            log.exception("cannot rewrite the job index files")
            return False
        return True

    def write_pipeline(self) -> bool:
        """Rewrite the RELION pipeline alone (a new Class2D snapshot), logging a
        failure instead of raising it."""
        if self.pipeline is None:
            return False
        try:
            self.pipeline.write(finished=False)
        except (OSError, ValueError):
            log.exception("cannot rewrite default_pipeline.star")
            return False
        return True

    def finish(self) -> bool:
        """At shutdown: rebuild, and mark every job of the pipeline finished."""
        if not self.write_logged():
            return False
        if self.pipeline is not None:
            try:
                self.pipeline.write(finished=True)
            except OSError:
                log.exception("cannot mark the RELION jobs finished")
                return False
        return True

    # -- what to write ----------------------------------------------------------
    def write_all(self) -> dict[str, int]:
        """Rebuild every index file; return the number of rows of each."""
        counts: dict[str, int] = {}
        ledger = Ledger(self.ledger_path, read_only=True)
        try:
            t = self.targets
            motion = (
                [] if t.motion_stage is None else ledger.done_results(t.motion_stage)
            )
            if t.motion_stage is not None:
                counts["motion"] = self._write_motion(motion)
                counts["movies"] = self._write_movies(motion, ledger.movie_paths())
            decisions = (
                {}
                if t.curate_stage is None
                else {
                    eid: curation_of(result)
                    for eid, result in ledger.done_results(t.curate_stage)
                }
            )
            if t.ctf_stage is not None:
                ctf = ledger.done_results(t.ctf_stage)
                counts["ctf"] = self._write_ctf(ctf, motion)
                if t.curate_stage is not None:
                    # the selection: what curation accepts (not the undecided)
                    accepted = [
                        r for r in ctf if decisions.get(r[0]) is Curation.ACCEPTED
                    ]
                    counts["selected"] = self._write_ctf(
                        accepted, motion, selection=True
                    )
            if t.extract_stage is not None:
                # the pool: all but what curation rejects (the undecided were not
                # curated, as without a curate stage)
                counts["particles"] = self._write_particles(
                    [
                        r
                        for r in ledger.done_results(t.extract_stage)
                        if decisions.get(r[0]) is not Curation.REJECTED
                    ]
                )
            if t.pick_stage is not None:
                counts["picks"] = self._write_autopick(
                    ledger.done_results(t.pick_stage), motion
                )
        finally:
            ledger.close()
        if self.pipeline is not None:
            self.pipeline.write(finished=False)
        self.n_writes += 1
        return counts

    def _write_movies(self, motion: list[Done], movies: dict[str, str]) -> int:
        rows = [
            (movie_name(self.project, Path(movies[eid])), r.figures)
            for eid, r in motion
            if eid in movies and "micrograph" in r.outputs
        ]
        if rows:
            movies_table(self.project / IMPORT.folder / "movies.star", rows)
        return len(rows)

    def _write_autopick(self, picks: list[Done], motion: list[Done]) -> int:
        micrographs = {
            eid: r.outputs["micrograph"]
            for eid, r in motion
            if "micrograph" in r.outputs
        }
        rows = [
            (micrographs[eid], r.outputs["coordinates"])
            for eid, r in picks
            if eid in micrographs and "coordinates" in r.outputs
        ]
        if rows:
            import pandas as pd  # ~0.5 s: loaded on the first table, not at start

            table = pd.DataFrame(
                rows, columns=["rlnMicrographName", "rlnMicrographCoordinates"]
            )
            write_star(
                self.project / self.targets.pick_job / "autopick.star",
                {"coordinate_files": table},
            )
        return len(rows)

    def _write_motion(self, rows: list[Done]) -> int:
        results = [r for _, r in rows if "micrograph" in r.outputs]
        if results:
            path = self.project / self.targets.motion_job / "corrected_micrographs.star"
            corrected_micrographs(path, [(r.outputs, r.figures) for r in results])
        return len(results)

    def _write_ctf(
        self, rows: list[Done], motion: list[Done], *, selection: bool = False
    ) -> int:
        by_id = {eid: r for eid, r in motion if "micrograph" in r.outputs}
        items = [
            (
                by_id[eid].outputs["micrograph"],
                r.outputs,
                {**by_id[eid].figures, **r.figures},
            )
            for eid, r in rows
            if eid in by_id and "ctf_image" in r.outputs
        ]
        if selection:  # written even when empty: nothing is selected now
            path = self.project / self.targets.curate_job / "micrographs.star"
            _write_selection(path, items)
        elif items:
            micrographs_ctf(
                self.project / self.targets.ctf_job / "micrographs_ctf.star", items
            )
        return len(items)

    def _write_particles(self, rows: list[Done]) -> int:
        optics_tables, particle_tables = [], []
        for _, result in rows:
            name = result.outputs.get("particles_star")
            if name is None:
                continue
            path = self.project / name
            key = (name, path.stat().st_mtime_ns)
            if key not in self._particle_cache:
                self._particle_cache[key] = read_particles_star(path)
            optics, particles = self._particle_cache[key]
            optics_tables.append(optics)
            particle_tables.append(particles)
        pool = self.project / self.targets.extract_job / "particles.star"
        if not particle_tables:
            # curation may have rejected every exposure that had particles
            pool.unlink(missing_ok=True)
            return 0
        import pandas as pd  # ~0.5 s: loaded on the first table, not at start

        optics = pd.concat(optics_tables, ignore_index=True).drop_duplicates()
        names = optics["rlnOpticsGroupName"]
        if names.duplicated().any():
            raise ValueError(
                f"{self.targets.extract_job}: per-micrograph particle files disagree "
                f"on the optics of group(s) {sorted(set(names[names.duplicated()]))}"
            )
        particles = pd.concat(particle_tables, ignore_index=True)
        write_particles_star(pool, optics.reset_index(drop=True), particles)
        return len(particles)


def _write_selection(path: Path, items: list[Any]) -> None:
    if items:
        micrographs_ctf(path, items)
        return
    # RELION reads an empty table as "no micrographs"; keep the labels
    write_text_atomic(
        path, "# version 30001\n\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n"
    )


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
