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

The loop is :class:`livestream.actors.ActorTask`'s.  A classifier error (a bad
particle STAR, a missing stack, a checkpoint that is not one) is logged with its file, field and value and counted in
``livestream_class2d_errors_total``; the service goes on, and a failed step is
tried again when the pool changes.  A valid checkpoint whose particle stacks
cannot be read is left alone and the classifier stays off until the next start.
An unexpected exception stops the classifier (logged with its traceback and
counted), never the service.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livestream.actors.checkpoint import CHECKPOINT_NAME
from livestream.actors.task import EXPECTED_ERRORS, ActorTask, drain_actor
from livestream.config import Class2dSection, ServiceConfig
from livestream.project.job_index import JobIndex
from livestream.telemetry.reporting import Reporter

if TYPE_CHECKING:
    from livestream.class2d.actor import ActorSettings, Class2dActor

__all__ = [
    "SUMMARY_NAME",
    "Class2dLive",
    "actor_settings",
    "class2d_for",
    "drain_class2d",
]


SUMMARY_NAME = "run_class2d.json"  # the latest snapshot's event body
# called with each snapshot's event body before it is published; what it returns
# goes in the body under "templates" (livestream.templates.live.TemplateFeed)
AfterSnapshot = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any] | None]]


def actor_settings(section: Class2dSection) -> ActorSettings:
    """The actor's parameters from the ``[class2d]`` config section."""
    # the actor's modules load pipelines.class2d (numba, scipy, ~2 s) when the task
    # first resumes (in a thread), not when the service imports this module
    from livestream.class2d.actor import ActorSettings  # deferred: numerics
    from pipelines.class2d.schedule import Schedule  # deferred: numerics

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
    await drain_actor(task, deadline, "class2d")


class Class2dLive(ActorTask["Class2dActor"]):
    """The classifier task of one service (see the module docstring)."""

    name = "class2d"
    checkpoint_name = CHECKPOINT_NAME
    summary_name = SUMMARY_NAME

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
        super().__init__(
            project / section.job,
            project,
            particles_star,
            snapshot_every=section.snapshot_every,
            on_snapshot=on_snapshot,
        )
        self.section = section
        self.after_snapshot = after_snapshot
        self.particles_star = particles_star
        self.reporter = reporter

    def notify(self) -> None:
        """The job index rewrote its files: feed the pool STAR if it changed."""
        self.wake()

    # -- the domain's part ---------------------------------------------------------
    def _resume(self) -> Class2dActor | None:
        # deferred: see actor_settings (this runs in a thread, first)
        from livestream.class2d.actor import Class2dActor

        return Class2dActor.resume(self.folder, project=self.project)

    def _new(self) -> Class2dActor:
        # deferred: see actor_settings (loaded by _resume already)
        from livestream.class2d.actor import Class2dActor

        return Class2dActor(
            self.folder, self._settings(), seed=self.section.seed, project=self.project
        )

    def _settings(self) -> ActorSettings:
        return actor_settings(self.section)

    def _report_error(self, operation: str, error: Exception) -> None:
        self.reporter.class2d_error(operation, error)

    def _report_progress(self, actor: Class2dActor, seconds: float | None) -> None:
        state = actor.state
        self.reporter.class2d_progress(
            0 if state is None else state.minibatch_index,
            0 if state is None else state.particles_seen,
            actor.pool_size,
            seconds,
        )

    def _publish(self, payload: dict[str, Any]) -> None:
        self.reporter.class2d_snapshot(payload)

    async def _complete(self, payload: dict[str, Any]) -> None:
        """The template loop adds ``templates`` (an error waits for the next)."""
        if self.after_snapshot is None:
            return
        try:
            payload["templates"] = await self.after_snapshot(payload)
        except (*EXPECTED_ERRORS, sqlite3.Error) as error:
            self.reporter.class2d_error("snapshot", error)
