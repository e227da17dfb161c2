"""Curation thresholds that change while the service runs.

On SIGHUP (``systemctl reload livestream@X``) the daemon reads its config file
again; :class:`CurationReload` applies changed ``[stages.<curate>]`` thresholds:

1. the scheduler curates new exposures with them;
2. every past exposure is decided again from its stored figures
   (:func:`livestream.curation.live.reevaluate_curation`, no reprocessing), in one
   ledger transaction that also puts the skipped pick/extract rows of newly
   accepted exposures back to pending;
3. the decision files of changed exposures, the selection
   ``Select/job004/micrographs.star`` and the particle pool are rewritten
   (newly rejected exposures keep their particle files but leave the pool);
4. newly accepted exposures are offered to the scheduler, which picks and
   extracts them;
5. the curation gauges are set from the ledger.

Other changed settings need a restart; a reload says so in the log.  A curate
stage that was running while the thresholds changed is decided again as soon as
it finishes (:meth:`CurationReload.recurate`, which the daemon passes to the
scheduler).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from livestream.config import ServiceConfig, reloads
from livestream.curation.live import (
    curation_counts,
    reevaluate_curation,
    reopen_skipped,
    write_decision_files,
)
from livestream.intake.pairing import parse_exposure
from livestream.intake.settle import FileKind
from livestream.ledger.store import Ledger, StageResult
from livestream.project.job_index import JobIndex
from livestream.scheduling.scheduler import Scheduler
from livestream.stages.params import CurateParams
from livestream.stages.registry import Chain
from livestream.telemetry.reporting import EventType, Reporter, ServiceEvent
from mdcatch.errors import MetadataError
from mdcatch.profiles.detectors import load_profiles
from mdcatch.records import Exposure

__all__ = ["CurationReload"]

log = logging.getLogger(__name__)


class CurationReload:
    def __init__(
        self,
        config: ServiceConfig,
        ledger: Ledger,
        chain: Chain,
        scheduler: Scheduler,
        reporter: Reporter,
        index: JobIndex,
    ) -> None:
        self.config = config
        self._ledger = ledger
        self._chain = chain
        self._scheduler = scheduler
        self._reporter = reporter
        self._index = index
        self._params: dict[str, CurateParams] = {
            link.name: link.params
            for link in chain.links
            if link.kind.decides_curation and isinstance(link.params, CurateParams)
        }
        self.n_reloads = 0

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self._params)

    @property
    def thresholds(self) -> Mapping[str, CurateParams]:
        """Curate stage -> the thresholds in force (changed by a reload)."""
        return MappingProxyType(self._params)

    # -- gauges ---------------------------------------------------------------------
    def publish_counts(self) -> None:
        for stage in self._params:
            with self._ledger.transaction() as db:
                counts = curation_counts(db, stage)
            self._reporter.curation_state(
                counts.accepted, counts.rejected, counts.reasons
            )

    def on_event(self, event: ServiceEvent) -> None:
        """A reporter listener: a curate stage finished, the decision set changed."""
        if (
            event.type is EventType.STAGE_FINISHED
            and event.state == "done"
            and event.stage in self._params
        ):
            self.publish_counts()

    # -- reload ---------------------------------------------------------------------
    async def run(self, reload: asyncio.Event) -> None:
        """Apply the config file each time ``reload`` is set, until cancelled."""
        async for config in reloads(reload, lambda: self.config, "curation"):
            try:
                await self.apply(config)
            except (OSError, ValueError, KeyError, sqlite3.Error):
                # the ledger transaction rolled back; the next reload tries again
                log.exception("cannot apply the reloaded curation thresholds")

    async def apply(self, config: ServiceConfig) -> int:
        """Apply ``config``'s curation thresholds; return the exposures re-offered."""
        self.n_reloads += 1
        if (
            config.model_dump(exclude={"stages", "templates"})
            != self.config.model_dump(exclude={"stages", "templates"})
            or config.stages.chain != self.config.stages.chain
        ):
            log.warning(
                "reload: only curation thresholds and [templates] apply without a "
                "restart"
            )
        self.config = config
        n_offered = 0
        for stage, params in self._params.items():
            if stage not in config.stages.chain:
                continue
            new = config.stages.table_of(stage)
            if not isinstance(new, CurateParams) or new == params:
                continue
            n_offered += await self._apply_stage(stage, new)
        return n_offered

    async def _apply_stage(self, stage: str, params: CurateParams) -> int:
        self._params[stage] = params
        self._scheduler.update_params(stage, params)
        later = self._chain.names[self._chain.names.index(stage) + 1 :]
        with self._ledger.transaction() as db:
            result = reevaluate_curation(db, params, curate_stage=stage)
            reopened = reopen_skipped(db, result.newly_accepted, later)
        self._reporter.curation_reevaluated(
            result.version, len(result.newly_accepted), len(result.newly_rejected)
        )
        self.publish_counts()
        await asyncio.to_thread(
            write_decision_files,
            self.config.project.path,
            params.job,
            result.changed,
            result.version,
        )
        await asyncio.to_thread(self._index.write_logged)
        for eid in reopened:
            exposure = await self.reread(eid)
            if exposure is not None:
                self._scheduler.offer(exposure)
        return len(reopened)

    async def reread(self, exposure_id: str) -> Exposure | None:
        """The exposure record of ``exposure_id``, parsed again from the files the
        ledger names (``None``: not readable now, logged)."""
        paths = self._paths_of(exposure_id)
        if paths is None:
            return None
        return await asyncio.to_thread(self._exposure_of, exposure_id, *paths)

    def recurate(self, exposure_id: str, stage: str) -> StageResult | None:
        """Decide ``exposure_id`` again with the current thresholds (its curate
        stage ran while they changed); return the curate row's new result."""
        with self._ledger.transaction() as db:
            result = reevaluate_curation(
                db, self._params[stage], curate_stage=stage, only=[exposure_id]
            )
        write_decision_files(
            self.config.project.path,
            self._params[stage].job,
            result.changed,
            result.version,
        )
        for row in self._ledger.rows_of(exposure_id):
            if row.stage == stage:
                return row.result
        return None

    def _paths_of(self, exposure_id: str) -> tuple[Path, Path] | None:
        with self._ledger.transaction() as db:
            row = db.execute(
                "SELECT metadata_path, movie_path FROM exposures WHERE exposure_id=?",
                (exposure_id,),
            ).fetchone()
        if row is None or row[0] is None or row[1] is None:
            return None
        return Path(row[0]), Path(row[1])

    def _exposure_of(
        self, exposure_id: str, metadata: Path, movie: Path
    ) -> Exposure | None:
        """The exposure record, parsed again (in a thread: it reads files)."""
        kind = FileKind.MDOC if metadata.suffix == ".mdoc" else FileKind.EPU_XML
        try:
            return parse_exposure(
                exposure_id,
                metadata,
                kind,
                movie,
                load_profiles(),
                _path_map(self.config.session.path_map),
            )
        except (MetadataError, OSError) as exc:
            log.warning(
                "%s cannot be read again (%s); its picking waits for the next start",
                exposure_id,
                exc,
            )
            return None


def _path_map(mapping: Mapping[str, Path]) -> Mapping[str, Path] | None:
    return mapping or None
