"""The template loop in the service: one :class:`TemplateFeed` per service.

The daemon wires it like this::

    feed = TemplateFeed(config, ledger, chain, scheduler, reporter, index, reread)
    await feed.start()                  # the stored set, if any, picks again
    live = class2d_for(config, index, reporter, after_snapshot=feed.after_snapshot)
    group.create_task(feed.run(reload)) # SIGHUP: [templates] read again

After every 2D snapshot, :meth:`TemplateFeed.after_snapshot` looks at the
ranker's selection.  Once at least ``min_selected_classes`` classes with at least
``min_particles`` particles behind them are selected, and the chosen classes (the
``max_templates`` most populated selected ones) differ from the current set's (for
a replacement: in ``stable_snapshots`` successive snapshots), the averages become
template set ``N+1`` (:mod:`livestream.templates.store`), the
scheduler runs the pick stage from then on with ``picker = "template"`` and the
set's stack as ``templates_path`` (the task carries the path; a worker process
reads the stack from disk), the ``class2d`` event carries the set under
``templates`` and ``livestream_templates_version`` is set.

Before a set is stored and used, the guard (:mod:`livestream.templates.guard`)
picks the last ``guard_exposures`` picked exposures in memory with the stage's own
picker and with the candidate averages (written to
``<job>/templates/candidate_itNNNNNN.mrcs`` first, moved to the set's name when
used); under ``min_pick_ratio`` of the blob picks, or finding less than
``min_blob_recovered`` of the blob picker's better half of picks, the set is not
used, the stage
keeps its picker, and the log, the ``class2d`` event (``guard``) and
``livestream_templates_rejected_total`` say so.

With ``repick_earlier`` the exposures picked before the current set are picked
and extracted again (:meth:`TemplateFeed.repick`; at start, on SIGHUP and after a
new set): their pick and later rows go back to pending in one transaction, the
particle pool loses their particles at the next index rewrite, and the scheduler
runs them from the pick stage (motion and CTF stay done).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from livestream.config import ServiceConfig, TemplatesSection, reloads
from livestream.ledger.store import Ledger
from livestream.project.job_index import JobIndex
from livestream.scheduling.scheduler import Scheduler
from livestream.stages.params import PickParams
from livestream.stages.registry import Chain
from livestream.telemetry.reporting import Reporter
from livestream.templates.guard import (
    GuardVerdict,
    done_results,
    judge_trial,
    recent_picked,
    trial_picks,
)
from livestream.templates.store import (
    TemplateSet,
    latest_template_set,
    next_template_version,
    record_template_set,
    reopen_for_repick,
    template_stack_path,
    write_template_stack,
)
from mdcatch.records import Exposure
from pipelines.picking.class_templates import choose_template_classes

__all__ = ["TemplateFeed", "choose_classes"]

log = logging.getLogger(__name__)

Reread = Callable[[str], Awaitable[Exposure | None]]


def choose_classes(
    payload: Mapping[str, Any], section: TemplatesSection
) -> tuple[tuple[int, ...], int] | None:
    """The classes (1-based, most populated first) and the particles behind the
    selection of a ``class2d`` event body, or ``None`` while too few are selected
    (:func:`pipelines.picking.class_templates.choose_template_classes`)."""
    behind = payload.get("selected_particles")
    return choose_template_classes(
        payload.get("selected_classes", []),
        payload.get("class_counts", []),
        n_particles=None if behind is None else int(behind),
        min_selected_classes=section.min_selected_classes,
        min_particles=section.min_particles,
        max_templates=section.max_templates,
    )


class TemplateFeed:
    """See the module docstring."""

    def __init__(
        self,
        config: ServiceConfig,
        ledger: Ledger,
        chain: Chain,
        scheduler: Scheduler,
        reporter: Reporter,
        index: JobIndex,
        reread: Reread,
    ) -> None:
        self.section = config.templates
        self.config = config
        self.project = config.project.path
        self._ledger = ledger
        self._chain = chain
        self._scheduler = scheduler
        self._reporter = reporter
        self._index = index
        self._reread = reread
        self.current: TemplateSet | None = None
        self.n_repicked = 0
        self._lock = asyncio.Lock()  # one new set or re-pick at a time
        self._candidate: frozenset[int] | None = None  # classes of a new set
        self._streak = 0  # successive snapshots that chose them
        self.last_guard: GuardVerdict | None = None  # the guard's latest trial
        self.n_rejected = 0  # sets the guard did not use

    @property
    def pick_stage(self) -> str | None:
        """The pick stage the sets feed (``None``: off, or not a pick stage)."""
        name = self.section.pick_stage
        if not self.section.template_feed or name not in self._chain.names:
            return None
        link = self._chain.links[self._chain.names.index(name)]
        return name if isinstance(link.params, PickParams) else None

    # -- start, reload ------------------------------------------------------------
    async def start(self) -> None:
        """Pick with the newest stored set (a restart keeps the set it had)."""
        with self._ledger.transaction() as db:
            self.current = latest_template_set(db)
        if self.current is not None and self.pick_stage is not None:
            self._apply(self.current)
            if self.section.repick_earlier:
                await self.repick()

    async def run(self, reload: asyncio.Event) -> None:
        """Read ``[templates]`` again each time ``reload`` is set (SIGHUP)."""
        async for config in reloads(reload, lambda: self.config, "templates"):
            self.config, self.section = config, config.templates
            if self.current is not None and self.pick_stage is not None:
                self._apply(self.current)  # a changed threshold applies now
                if self.section.repick_earlier:
                    await self.repick()

    # -- after a snapshot -----------------------------------------------------------
    async def after_snapshot(self, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """Make a new set from the snapshot's selection when due; return the
        ``templates`` field of the ``class2d`` event (``None``: no set yet)."""
        stage = self.pick_stage
        chosen = None if stage is None else choose_classes(payload, self.section)
        published = False
        verdict: GuardVerdict | None = None
        if self._due(chosen):
            assert chosen is not None
            async with self._lock:
                verdict = await self._publish(payload, *chosen)
            published = verdict is None or verdict.accepted
            if published and self.section.repick_earlier:
                await self.repick()
        guard = {} if verdict is None else {"guard": verdict.as_json()}
        if self.current is None:  # a rejected first set: still blob picking
            return {"version": 0, "published": False, **guard} if guard else None
        return {**self.current.as_json(), "published": published, **guard}

    def _due(self, chosen: tuple[tuple[int, ...], int] | None) -> bool:
        """Whether ``chosen`` makes a new set: the first one at once; one that
        replaces the current set only once the same classes were chosen in
        ``stable_snapshots`` successive snapshots (a flip does not re-pick)."""
        if chosen is None or (
            self.current is not None and set(chosen[0]) == set(self.current.classes)
        ):
            self._candidate, self._streak = None, 0
            return False
        key = frozenset(chosen[0])
        self._streak = self._streak + 1 if key == self._candidate else 1
        self._candidate = key
        return self.current is None or self._streak >= self.section.stable_snapshots

    async def _publish(
        self, payload: Mapping[str, Any], classes: tuple[int, ...], n_particles: int
    ) -> GuardVerdict | None:
        """Write the chosen averages, let the guard try them, and (accepted, or no
        guard) store and use them as the next set; the guard's verdict."""
        pick = self.section.pick_stage
        link = self._chain.links[self._chain.names.index(pick)]
        assert isinstance(link.params, PickParams)
        with self._ledger.transaction() as db:
            version = next_template_version(db)
        relative = template_stack_path(link.params.job, version)
        iteration = int(payload["iteration"])
        # the candidate's stack; a rejected one stays there for the operator
        candidate = relative.with_name(f"candidate_it{iteration:06d}.mrcs")
        await asyncio.to_thread(
            write_template_stack,
            payload["classes_mrcs"],
            classes,
            self.project / candidate,
        )
        verdict = None
        if self.section.min_pick_ratio > 0 or self.section.min_blob_recovered > 0:
            verdict = await self._try(link.params, candidate, version)
            self.last_guard = verdict
            if not verdict.accepted:
                self.n_rejected += 1
                self._reporter.templates_rejected()
                log.warning(
                    "template set from 2D iteration %d (classes %s) not used: it "
                    "picked %d particles on the last %d exposures where the %s "
                    "picker picked %d (ratio %.2f, min_pick_ratio %.2f) and found "
                    "%.2f of that picker's better half of %d picks "
                    "(min_blob_recovered %.2f); "
                    "the pick stage keeps its picker; averages in %s",
                    iteration,
                    list(classes),
                    verdict.template_picks,
                    verdict.exposures,
                    link.params.picker,
                    verdict.blob_picks,
                    verdict.ratio,
                    verdict.min_pick_ratio,
                    verdict.blob_recovered,
                    verdict.blob_better_half,
                    verdict.min_blob_recovered,
                    candidate,
                )
                return verdict
        os.replace(self.project / candidate, self.project / relative)
        with self._ledger.transaction() as db:
            self.current = record_template_set(
                db,
                version=version,
                iteration=iteration,
                classes=classes,
                n_particles=n_particles,
                path=relative,
            )
        self._apply(self.current)
        log.info(
            "template set %d from 2D iteration %d: classes %s (%d particles)%s",
            version,
            self.current.iteration,
            list(classes),
            n_particles,
            ""
            if verdict is None
            else f"; the guard: {verdict.template_picks} template picks against "
            f"{verdict.blob_picks} on the last {verdict.exposures} exposures, "
            f"{verdict.blob_recovered:.2f} of the blob picker's better half found",
        )
        return verdict

    async def _try(
        self, blob: PickParams, candidate: Path, version: int
    ) -> GuardVerdict:
        """Pick the last ``guard_exposures`` picked exposures in memory with the
        stage's own picker and with ``candidate`` (:mod:`livestream.templates.guard`)."""
        pick = self.section.pick_stage
        with self._ledger.transaction() as db:
            names = recent_picked(db, pick, self.section.guard_exposures)
        exposures = []
        for eid in names:
            exposure = await self._reread(eid)
            if exposure is not None:
                exposures.append((exposure, done_results(self._ledger, eid)))
        trial = self._params_with(candidate, version=version)
        found = await asyncio.to_thread(
            trial_picks, pick, exposures, self.project, blob, trial
        )
        return judge_trial(
            found,
            diameter_a=0.5 * (trial.diameter_min_a + trial.diameter_max_a),
            min_pick_ratio=self.section.min_pick_ratio,
            min_blob_recovered=self.section.min_blob_recovered,
        )

    def pick_params(self, templates: TemplateSet) -> PickParams:
        """The pick stage's parameters for picking with ``templates``."""
        return self._params_with(Path(templates.path), version=templates.version)

    def _params_with(self, stack: Path, *, version: int) -> PickParams:
        """The pick stage's parameters for the template stack ``stack`` (relative
        to the project folder) as set ``version``."""
        name = self.section.pick_stage
        link = self._chain.links[self._chain.names.index(name)]
        assert isinstance(link.params, PickParams)
        return PickParams.model_validate(
            {
                **link.params.model_dump(),
                "picker": "template",
                "templates_path": self.project / stack,
                "template_set": version,
                "threshold_sd": self.section.threshold_sd,
            }
        )

    def _apply(self, templates: TemplateSet) -> None:
        """The scheduler's pick stage picks with ``templates`` from now on."""
        params = self.pick_params(templates)
        self._scheduler.update_params(self.section.pick_stage, params)
        self._reporter.templates_version(templates.version)

    # -- re-picking -----------------------------------------------------------------
    async def repick(self) -> int:
        """Pick the finished exposures again with the current set; return how
        many were put back (see the module docstring)."""
        stage = self.pick_stage
        if self.current is None or stage is None:
            return 0
        async with self._lock:
            names = self._chain.names
            stages = names[names.index(stage) :]
            with self._ledger.transaction() as db:
                reopened = reopen_for_repick(db, self.current.version, stages)
            if not reopened:
                return 0
            self.n_repicked += len(reopened)
            log.info(
                "re-picking %d exposures with template set %d",
                len(reopened),
                self.current.version,
            )
            await asyncio.to_thread(self._index.write_logged)  # their old particles go
            for eid in reopened:
                exposure = await self._reread(eid)
                if exposure is not None:
                    self._scheduler.offer(exposure)
            return len(reopened)
