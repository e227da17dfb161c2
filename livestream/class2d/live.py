"""The online 2D classifier inside the service: one asyncio task per service that
owns the session's :class:`~livestream.class2d.actor.Class2dActor`.

The daemon wires it like this::

    live = class2d_for(config, index, reporter)  # None: off or no extraction
    task = group.create_task(live.run(), name="class2d")
    ...                                          # SIGTERM:
    live.request_stop()                          # ends after this mini-batch,
    await drain_class2d(task, deadline)          # with a checkpoint

:meth:`Class2dLive.run` resumes the actor from ``<job>/actor_checkpoint.npz`` (or
starts one), feeds it ``Extract/job006/particles.star`` at start and whenever the
job index rewrites that file (at most every ``project.index_interval_s``; only when
its mtime changed), and runs one mini-batch per :func:`asyncio.to_thread` call, so
the event loop never blocks and a stop request is honoured within one mini-batch.
Every ``snapshot_every`` mini-batches it writes a snapshot into the job folder
(class averages, STAR files, montage; ``run_class2d.json`` holds the event body for
``livestream status``), hands the body to ``after_snapshot`` (the template loop,
:mod:`livestream.templates.live`, which adds ``templates``), publishes the
``class2d`` event and metrics through the
:class:`~livestream.telemetry.reporting.Reporter`, has the job index rewrite
``default_pipeline.star`` (which names the newest iteration's files), and
checkpoints.

A classifier error (a bad particle STAR, a missing stack, a checkpoint that
is not one) is logged with its file, field and value and counted in
``livestream_class2d_errors_total``; the service goes on, and a failed step is
tried again when the pool changes.  A valid checkpoint whose particle stacks
cannot be read is left alone and the classifier stays off until the next start.
An unexpected exception stops the classifier (logged with its traceback and
counted), never the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from livestream.class2d.actor import CHECKPOINT_NAME, ActorSettings, Class2dActor
from livestream.config import Class2dSection, ServiceConfig
from livestream.project.job_index import JobIndex
from livestream.telemetry.reporting import Reporter
from pipelines.class2d import Schedule
from pipelines.errors import StageInputError
from pipelines.io.outputs import write_text_atomic

__all__ = [
    "SUMMARY_NAME",
    "Class2dLive",
    "actor_settings",
    "class2d_for",
    "drain_class2d",
]

log = logging.getLogger(__name__)

SUMMARY_NAME = "run_class2d.json"  # the latest snapshot's event body
# what a bad input, a full disk or a malformed table raises (StageInputError is
# a ValueError); anything else is a bug and stops the classifier
_EXPECTED = (OSError, ValueError, KeyError, IndexError)

T = TypeVar("T")
# called with each snapshot's event body before it is published; what it returns
# goes in the body under "templates" (livestream.templates.live.TemplateFeed)
AfterSnapshot = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any] | None]]


def actor_settings(section: Class2dSection) -> ActorSettings:
    """The actor's parameters from the ``[class2d]`` config section."""
    return ActorSettings(
        n_classes=section.n_classes,
        min_pool=section.min_pool,
        new_fraction=section.new_fraction,
        max_passes=section.max_passes,
        snapshot_every=section.snapshot_every,
        snapshot_sample=section.snapshot_sample,
        score_threshold=section.score_threshold,
        particle_outlier_mad=section.particle_outlier_mad,
        psi_step_deg=section.psi_step_deg,
        offset_range_px=section.offset_range_px,
        max_resolution_a=section.max_resolution_a,
        max_particles_per_class=section.max_particles_per_class,
        schedule=Schedule(n_minibatches=section.n_minibatches),
    )


def class2d_for(
    config: ServiceConfig,
    index: JobIndex,
    reporter: Reporter,
    *,
    after_snapshot: AfterSnapshot | None = None,
) -> Class2dLive | None:
    """The service's classifier, fed on every rebuild of ``index``'s particle
    pool STAR; ``None`` when ``[class2d]`` is off or the chain extracts nothing."""
    particles_star = index.particles_star
    if not config.class2d.enabled or particles_star is None:
        return None
    live = Class2dLive(
        config.class2d,
        config.project.path,
        particles_star,
        reporter,
        on_snapshot=index.write_pipeline,
        after_snapshot=after_snapshot,
    )
    index.add_written_listener(live.notify)
    return live


async def drain_class2d(task: asyncio.Task[None], deadline: float) -> None:
    """Wait for the classifier's last mini-batch and checkpoint until ``deadline``
    (event-loop time), then cancel it (its previous checkpoint stands)."""
    timeout = max(deadline - asyncio.get_running_loop().time(), 1.0)
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        log.warning("class2d: no checkpoint within the drain time limit; cancelled")
        task.cancel()


class Class2dLive:
    """The classifier task of one service (see the module docstring)."""

    def __init__(
        self,
        section: Class2dSection,
        project: Path,
        particles_star: Path,
        reporter: Reporter,
        *,
        on_snapshot: Callable[[], object] | None = None,
        after_snapshot: AfterSnapshot | None = None,
    ) -> None:
        self.section = section
        # after each snapshot (the RELION pipeline names the newest iteration)
        self.on_snapshot = on_snapshot
        self.after_snapshot = after_snapshot
        self.project = project
        self.folder = project / section.job
        self.particles_star = particles_star
        self.reporter = reporter
        self.actor: Class2dActor | None = None
        self.n_snapshots = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._star_mtime_ns: int | None = None
        self._dirty = False  # changed since the last checkpoint
        self._step_failed = False  # wait for new particles before trying again
        self._reported: set[str] = set()  # pool problems already logged

    # -- called by the daemon (in the event loop) -------------------------------
    def notify(self) -> None:
        """The job index rewrote its files: feed the pool STAR if it changed."""
        self._wake.set()

    def request_stop(self) -> None:
        """Finish the current mini-batch, checkpoint and return from :meth:`run`."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Resume, then feed, step and snapshot until :meth:`request_stop`."""
        try:
            self.actor = await self._start()
            if self.actor is None:
                return
            while not self._stopping:
                self._wake.clear()
                await self._feed()
                while not self._stopping and self._can_step():
                    await self._step()
                    due = self.actor.minibatches_since_snapshot >= (
                        self.section.snapshot_every
                    )
                    if due and not self._stopping:  # else: next start, resumed
                        await self._snapshot()
                    if self._wake.is_set():
                        break  # new particles first
                if not self._stopping and not self._wake.is_set():
                    await self._wake.wait()
            if self._dirty:
                await self._guarded("checkpoint", self._checkpoint)
        except Exception:
            log.exception("class2d: the online classifier stopped")
            self.reporter.class2d_error("step", RuntimeError("classifier stopped"))

    # -- the steps ---------------------------------------------------------------
    async def _start(self) -> Class2dActor | None:
        """The resumed actor, a new one (no checkpoint, or one that is not a
        checkpoint: kept as ``.unreadable``), or ``None`` when a valid checkpoint
        cannot be resumed now (its stacks are not readable): the classifier stays
        off for this run and the checkpoint is left for the next start."""
        settings = actor_settings(self.section)
        path = self.folder / CHECKPOINT_NAME
        try:
            actor = await asyncio.to_thread(
                Class2dActor.resume, self.folder, project=self.project
            )
        except _EXPECTED as error:
            self.reporter.class2d_error("resume", error)
            if not (isinstance(error, StageInputError) and error.path == path):
                log.error("class2d: off until the next start; %s is kept", path)
                return None
            path.replace(path.with_name(f"{CHECKPOINT_NAME}.unreadable"))
            actor = None
        if actor is None:
            return Class2dActor(
                self.folder, settings, seed=self.section.seed, project=self.project
            )
        if actor.settings != settings:
            log.warning(
                "class2d: %s keeps the settings it was started with (%s); move it "
                "away to start over with the config's",
                path,
                actor.settings,
            )
        state = actor.state
        log.info(
            "class2d: resumed at mini-batch %d with %d particles",
            0 if state is None else state.minibatch_index,
            actor.pool_size,
        )
        self._report_progress(actor, None)
        return actor

    async def _feed(self) -> None:
        assert self.actor is not None
        try:
            mtime_ns = self.particles_star.stat().st_mtime_ns
        except FileNotFoundError:
            return  # no particles yet (or curation rejected them all)
        if mtime_ns == self._star_mtime_ns:
            return
        actor = self.actor
        added = await self._guarded("feed", lambda: actor.feed(self.particles_star))
        self._star_mtime_ns = mtime_ns
        for problem in actor.pool.problems:
            if str(problem) not in self._reported:  # once each, not every feed
                self._reported.add(str(problem))
                self.reporter.class2d_error("feed", problem)
        if added or actor.pool.n_retired_last:
            self._dirty = True
            self._step_failed = False
            self._report_progress(actor, None)

    def _can_step(self) -> bool:
        return self.actor is not None and not self._step_failed and self.actor.ready()

    async def _step(self) -> None:
        assert self.actor is not None
        started = time.perf_counter()
        ran = await self._guarded("step", self.actor.step)
        if ran is None:
            self._step_failed = True
            return
        self._dirty = True
        self._report_progress(self.actor, time.perf_counter() - started)

    async def _snapshot(self) -> None:
        actor = self.actor
        assert actor is not None

        payload = await self._guarded("snapshot", lambda: actor.snapshot().payload)
        if payload is None:
            actor.minibatches_since_snapshot = 0  # try again after snapshot_every
            return
        self.n_snapshots += 1
        if self.after_snapshot is not None:
            try:
                payload["templates"] = await self.after_snapshot(payload)
            except (*_EXPECTED, sqlite3.Error) as error:  # waits for the next one
                self.reporter.class2d_error("snapshot", error)
        await self._guarded(
            "snapshot",
            lambda: write_text_atomic(self.folder / SUMMARY_NAME, json.dumps(payload)),
        )
        self.reporter.class2d_snapshot(payload)
        if self.on_snapshot is not None:
            await asyncio.to_thread(self.on_snapshot)
        await self._guarded("checkpoint", self._checkpoint)

    def _checkpoint(self) -> Path:
        assert self.actor is not None
        path = self.actor.checkpoint()
        self._dirty = False
        return path

    async def _guarded(self, operation: str, call: Callable[[], T]) -> T | None:
        """``call()`` in a worker thread; an expected error is logged and counted
        and gives ``None``."""
        try:
            return await asyncio.to_thread(call)
        except _EXPECTED as error:
            self.reporter.class2d_error(operation, error)
            return None

    def _report_progress(self, actor: Class2dActor, seconds: float | None) -> None:
        state = actor.state
        self.reporter.class2d_progress(
            0 if state is None else state.minibatch_index,
            0 if state is None else state.particles_seen,
            actor.pool_size,
            seconds,
        )
