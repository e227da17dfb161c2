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
- ``Select/job004/micrographs_selected.star``: the rows of
  ``micrographs_ctf.star`` that curation currently accepts.

Every file is rebuilt from the ``done`` rows of the ledger (outputs and figures,
never in-memory state) and written atomically, so after a kill and restart the
first rebuild gives the same files.  Paths are relative to the project folder,
as RELION writes them.  The daemon rebuilds at start-up, at most every
``min_interval_s`` while exposures finish (:meth:`JobIndex.run`), and at shutdown;
after each rebuild by :meth:`JobIndex.run` it calls the ``on_written`` callbacks
(the online 2D classifier feeds its pool then).

A stage of another kind (``"package.module:function"``) feeds an index when its
table says so: ``index = "extract"`` (or motion, ctf, curate), with the outputs
and figures that index reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livestream.stages.registry import Chain
from livestream.telemetry.reporting import EventType, ServiceEvent

__all__ = ["IndexTargets", "JobIndex", "index_targets"]

log = logging.getLogger(__name__)

_DEFAULT_JOBS = {
    "motion": "MotionCorr/job002",
    "ctf": "CtfFind/job003",
    "curate": "Select/job004",
    "extract": "Extract/job006",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexTargets:
    """Which chain stage feeds which index (``None``: not in the chain)."""

    motion_stage: str | None = None
    motion_job: str = _DEFAULT_JOBS["motion"]
    ctf_stage: str | None = None
    ctf_job: str = _DEFAULT_JOBS["ctf"]
    curate_stage: str | None = None
    curate_job: str = _DEFAULT_JOBS["curate"]
    extract_stage: str | None = None
    extract_job: str = _DEFAULT_JOBS["extract"]

    @property
    def stages(self) -> frozenset[str]:
        names = (
            self.motion_stage,
            self.ctf_stage,
            self.curate_stage,
            self.extract_stage,
        )
        return frozenset(n for n in names if n is not None)


def index_targets(chain: Chain) -> IndexTargets:
    """The first stage of kind motion, ctf, curate and extract (or with that
    ``index`` parameter), with their jobs."""
    found: dict[str, Any] = {}
    for link in chain.links:
        role = str(link.params.get("index", link.kind))
        if role in _DEFAULT_JOBS and f"{role}_stage" not in found:
            found[f"{role}_stage"] = link.name
            found[f"{role}_job"] = str(link.params.get("job", _DEFAULT_JOBS[role]))
    return IndexTargets(**found)


@dataclass(frozen=True, slots=True)
class _Done:
    exposure_id: str
    outputs: dict[str, str]
    figures: dict[str, float]


def _done_rows(db: sqlite3.Connection, stage: str) -> Iterator[_Done]:
    cursor = db.execute(
        "SELECT s.exposure_id, s.outputs, s.figures FROM stages s"
        " JOIN exposures e ON e.exposure_id = s.exposure_id"
        " WHERE s.stage = ? AND s.state = 'done'"
        " ORDER BY e.acquired_unix_s, s.exposure_id",
        (stage,),
    )
    for exposure_id, outputs, figures in cursor:
        yield _Done(str(exposure_id), json.loads(outputs), json.loads(figures))


class JobIndex:
    """Writes the index files of ``targets`` from the ledger at ``ledger_path``."""

    def __init__(
        self,
        ledger_path: Path,
        project: Path,
        targets: IndexTargets,
        *,
        min_interval_s: float = 3.0,
    ) -> None:
        self.ledger_path = ledger_path
        self.project = project
        self.targets = targets
        self.min_interval_s = min_interval_s
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

    # -- what to write ----------------------------------------------------------
    def write_all(self) -> dict[str, int]:
        """Rebuild every index file; return the number of rows of each."""
        counts: dict[str, int] = {}
        db = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            t = self.targets
            motion = (
                [] if t.motion_stage is None else list(_done_rows(db, t.motion_stage))
            )
            if t.motion_stage is not None:
                counts["motion"] = self._write_motion(motion)
            rejected = _rejected(db, t.curate_stage)
            if t.ctf_stage is not None:
                ctf = list(_done_rows(db, t.ctf_stage))
                counts["ctf"] = self._write_ctf(ctf, motion)
                if t.curate_stage is not None:
                    curated = {r.exposure_id for r in _done_rows(db, t.curate_stage)}
                    accepted = [
                        r
                        for r in ctf
                        if r.exposure_id in curated and r.exposure_id not in rejected
                    ]
                    counts["selected"] = self._write_ctf(
                        accepted, motion, selection=True
                    )
            if t.extract_stage is not None:
                counts["particles"] = self._write_particles(
                    [
                        r
                        for r in _done_rows(db, t.extract_stage)
                        if r.exposure_id not in rejected
                    ]
                )
        finally:
            db.close()
        self.n_writes += 1
        return counts

    def _write_motion(self, rows: list[_Done]) -> int:
        from livestream.project.job_tables import corrected_micrographs

        rows = [r for r in rows if "micrograph" in r.outputs]
        if rows:
            path = self.project / self.targets.motion_job / "corrected_micrographs.star"
            corrected_micrographs(path, [(r.outputs, r.figures) for r in rows])
        return len(rows)

    def _write_ctf(
        self, rows: list[_Done], motion: list[_Done], *, selection: bool = False
    ) -> int:
        from livestream.project.job_tables import micrographs_ctf

        by_id = {r.exposure_id: r for r in motion if "micrograph" in r.outputs}
        items = [
            (
                by_id[r.exposure_id].outputs["micrograph"],
                r.outputs,
                {**by_id[r.exposure_id].figures, **r.figures},
            )
            for r in rows
            if r.exposure_id in by_id and "ctf_image" in r.outputs
        ]
        if selection:  # written even when empty: nothing is selected now
            path = self.project / self.targets.curate_job / "micrographs_selected.star"
            _write_selection(path, items)
        elif items:
            micrographs_ctf(
                self.project / self.targets.ctf_job / "micrographs_ctf.star", items
            )
        return len(items)

    def _write_particles(self, rows: list[_Done]) -> int:
        import pandas as pd

        from pipelines.io.particles_star import (
            read_particles_star,
            write_particles_star,
        )

        optics_tables, particle_tables = [], []
        for row in rows:
            name = row.outputs.get("particles_star")
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


def _rejected(db: sqlite3.Connection, curate_stage: str | None) -> set[str]:
    """Exposures whose current curation decision is a rejection."""
    if curate_stage is None:
        return set()
    return {
        row.exposure_id
        for row in _done_rows(db, curate_stage)
        if row.figures.get("accepted", 1.0) == 0.0
    }


def _write_selection(path: Path, items: list[Any]) -> None:
    from livestream.project.job_tables import micrographs_ctf

    if items:
        micrographs_ctf(path, items)
        return
    from pipelines.io.outputs import write_text_atomic

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
