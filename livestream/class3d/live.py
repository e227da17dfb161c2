"""The online 3D initial model inside the service: one asyncio task per service
that owns the session's :class:`~livestream.class3d.actor.Class3dActor`.

The daemon wires it like this::

    live = class3d_for(config, index, reporter)  # None: off (or no 2D classes)
    events.add_listener(live.on_event)           # wakes on each class2d snapshot
    task = group.create_task(live.run(), name="class3d")
    ...                                          # SIGTERM:
    live.request_stop()                          # ends after this mini-batch,
    await drain_class3d(task, deadline)          # with a checkpoint

:meth:`Class3dLive.run` resumes the actor from ``<job>/actor_checkpoint.npz`` (or
starts one) and feeds it the 2D selection, ``Class2D/job007/run_selected.star``, at
start and after every ``class2d`` snapshot (only when its mtime changed).  The model
starts once ``start_particles`` are selected; then one mini-batch runs per
:func:`asyncio.to_thread` call (the event loop never blocks; a stop request is
honoured within one mini-batch).  Every ``snapshot_every`` mini-batches it writes
a snapshot into ``InitialModel/job008/`` (maps, half maps, slices, FSC and
viewing-direction PNGs, STAR files, ``initial_model.mrc``; ``run_class3d.json``
holds the event body for ``livestream status``), publishes the ``class3d`` event
and metrics, has the job index rewrite ``default_pipeline.star`` and checkpoints.

An error (a bad STAR, a missing stack, a checkpoint that is not one) is logged with
its file, field and value and counted in ``livestream_class3d_errors_total``; the
service goes on and a failed step is tried again when the selection changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from livestream.class3d.actor import CHECKPOINT_NAME, Class3dActor, Class3dSettings
from livestream.config import Class3dSection, ServiceConfig
from livestream.project.job_index import JobIndex
from livestream.telemetry.reporting import EventType, Reporter, ServiceEvent
from pipelines.errors import StageInputError
from pipelines.io.outputs import write_text_atomic

__all__ = [
    "SELECTED_NAME",
    "SUMMARY_NAME",
    "Class3dLive",
    "class3d_for",
    "class3d_settings",
    "drain_class3d",
]

log = logging.getLogger(__name__)

SUMMARY_NAME = "run_class3d.json"  # the latest snapshot's event body
SELECTED_NAME = "run_selected.star"  # the 2D snapshot's selected particles
# what a bad input, a full disk or a malformed table raises (StageInputError is
# a ValueError); anything else is a bug and stops the model
_EXPECTED = (OSError, ValueError, KeyError, IndexError)

T = TypeVar("T")


def class3d_settings(section: Class3dSection) -> Class3dSettings:
    """The actor's parameters from the ``[class3d]`` config section."""
    return Class3dSettings(
        start_particles=section.start_particles,
        symmetry=section.symmetry,
        classes=section.classes,
        mini_batch=section.mini_batch,
        n_minibatches=section.n_minibatches,
        snapshot_every=section.snapshot_every,
        snapshot_sample=section.snapshot_sample,
        box_px=section.box_px,
        angular_step_deg=section.angular_step_deg,
        particle_diameter_a=section.particle_diameter_a,
        max_passes=section.max_passes,
    )


def class3d_for(
    config: ServiceConfig, index: JobIndex, reporter: Reporter
) -> Class3dLive | None:
    """The service's initial model, fed the 2D selection; ``None`` when
    ``[class3d]`` or ``[class2d]`` is off or the chain extracts nothing."""
    if not (config.class3d.enabled and config.class2d.enabled):
        return None
    if index.particles_star is None:
        return None
    project = config.project.path
    return Class3dLive(
        config.class3d,
        project,
        project / config.class2d.job / SELECTED_NAME,
        reporter,
        on_snapshot=index.write_pipeline,
    )


async def drain_class3d(task: asyncio.Task[None], deadline: float) -> None:
    """Wait for the model's last mini-batch and checkpoint until ``deadline``
    (event-loop time), then cancel it (its previous checkpoint stands)."""
    timeout = max(deadline - asyncio.get_running_loop().time(), 1.0)
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        log.warning("class3d: no checkpoint within the drain time limit; cancelled")
        task.cancel()


class Class3dLive:
    """The initial-model task of one service (see the module docstring)."""

    def __init__(
        self,
        section: Class3dSection,
        project: Path,
        selected_star: Path,
        reporter: Reporter,
        *,
        on_snapshot: Callable[[], object] | None = None,
    ) -> None:
        self.section = section
        self.on_snapshot = on_snapshot  # the RELION pipeline names the new files
        self.project = project
        self.folder = project / section.job
        self.selected_star = selected_star
        self.reporter = reporter
        self.actor: Class3dActor | None = None
        self.n_snapshots = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._star_mtime_ns: int | None = None
        self._dirty = False  # changed since the last checkpoint
        self._step_failed = False  # wait for a new selection before trying again
        self._reported: set[str] = set()  # pool problems already logged

    # -- called by the daemon (in the event loop) -------------------------------
    def on_event(self, event: ServiceEvent) -> None:
        """A listener: each ``class2d`` snapshot may have a new selection."""
        if event.type is EventType.CLASS2D_SNAPSHOT:
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
                        break  # a new selection first
                if not self._stopping and not self._wake.is_set():
                    await self._wake.wait()
            if self._dirty:
                await self._guarded("checkpoint", self._checkpoint)
        except Exception:
            log.exception("class3d: the online initial model stopped")
            self.reporter.class3d_error("step", RuntimeError("initial model stopped"))

    # -- the steps ---------------------------------------------------------------
    async def _start(self) -> Class3dActor | None:
        """The resumed actor, a new one (no checkpoint, or a file that is not
        one: kept as ``.unreadable``), or ``None`` when a valid checkpoint cannot
        be resumed now (its stacks are not readable): the model stays off for this
        run and the checkpoint is left for the next start."""
        settings = class3d_settings(self.section)
        path = self.folder / CHECKPOINT_NAME
        try:
            actor = await asyncio.to_thread(
                Class3dActor.resume, self.folder, project=self.project
            )
        except _EXPECTED as error:
            self.reporter.class3d_error("resume", error)
            if not (isinstance(error, StageInputError) and error.path == path):
                log.error("class3d: off until the next start; %s is kept", path)
                return None
            path.replace(path.with_name(f"{CHECKPOINT_NAME}.unreadable"))
            actor = None
        if actor is None:
            return Class3dActor(
                self.folder, settings, seed=self.section.seed, project=self.project
            )
        if actor.settings != settings:
            log.warning(
                "class3d: %s keeps the settings it was started with (%s); move it "
                "away to start over with the config's",
                path,
                actor.settings,
            )
        log.info(
            "class3d: resumed at mini-batch %d with %d particles",
            0 if actor.state is None else actor.state.minibatch_index,
            actor.pool_size,
        )
        self._report_progress(actor, None)
        return actor

    async def _feed(self) -> None:
        assert self.actor is not None
        try:
            mtime_ns = self.selected_star.stat().st_mtime_ns
        except FileNotFoundError:
            return  # no 2D snapshot yet
        if mtime_ns == self._star_mtime_ns:
            return
        actor = self.actor
        added = await self._guarded("feed", lambda: actor.feed(self.selected_star))
        self._star_mtime_ns = mtime_ns
        for problem in actor.pool.problems:
            if str(problem) not in self._reported:  # once each, not every feed
                self._reported.add(str(problem))
                self.reporter.class3d_error("feed", problem)
        if added or actor.pool.n_retired_last:
            self._dirty = actor.state is not None
            self._step_failed = False
            self._report_progress(actor, None)

    def _can_step(self) -> bool:
        return self.actor is not None and not self._step_failed and self.actor.ready()

    async def _step(self) -> None:
        assert self.actor is not None
        started = time.perf_counter()
        ran = await self._guarded("step", self.actor.step)
        if not ran:
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
        await self._guarded(
            "snapshot",
            lambda: write_text_atomic(self.folder / SUMMARY_NAME, json.dumps(payload)),
        )
        self.reporter.class3d_snapshot(payload)
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
            self.reporter.class3d_error(operation, error)
            return None

    def _report_progress(self, actor: Class3dActor, seconds: float | None) -> None:
        state = actor.state
        self.reporter.class3d_progress(
            0 if state is None else state.minibatch_index,
            actor.particles_seen,
            actor.pool_size,
            seconds,
        )
