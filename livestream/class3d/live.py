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

The loop is :class:`livestream.actors.ActorTask`'s.  An error (a bad STAR, a
missing stack, a checkpoint that is not one) is logged with
its file, field and value and counted in ``livestream_class3d_errors_total``; the
service goes on and a failed step is tried again when the selection changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livestream.actors.checkpoint import CHECKPOINT_NAME
from livestream.actors.task import ActorTask, drain_actor
from livestream.config import Class3dSection, ServiceConfig
from livestream.project.job_index import JobIndex
from livestream.telemetry.reporting import EventType, Reporter, ServiceEvent

if TYPE_CHECKING:
    from livestream.class3d.actor import Class3dActor, Class3dSettings

__all__ = [
    "SELECTED_NAME",
    "SUMMARY_NAME",
    "Class3dLive",
    "class3d_for",
    "class3d_settings",
    "drain_class3d",
]


SUMMARY_NAME = "run_class3d.json"  # the latest snapshot's event body
SELECTED_NAME = "run_selected.star"  # the 2D snapshot's selected particles


def class3d_settings(section: Class3dSection) -> Class3dSettings:
    """The actor's parameters from the ``[class3d]`` config section."""
    # the actor's modules load pipelines.class3d/class2d (numba, scipy, ~2 s) when
    # the task first resumes (in a thread), not when the service imports this module
    from livestream.class3d.actor import Class3dSettings  # deferred: numerics

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
    await drain_actor(task, deadline, "class3d")


class Class3dLive(ActorTask["Class3dActor"]):
    """The initial-model task of one service (see the module docstring)."""

    name = "class3d"
    checkpoint_name = CHECKPOINT_NAME
    summary_name = SUMMARY_NAME

    def __init__(
        self,
        section: Class3dSection,
        project: Path,
        selected_star: Path,
        reporter: Reporter,
        *,
        on_snapshot: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(
            project / section.job,
            project,
            selected_star,
            snapshot_every=section.snapshot_every,
            on_snapshot=on_snapshot,
        )
        self.section = section
        self.selected_star = selected_star
        self.reporter = reporter

    def on_event(self, event: ServiceEvent) -> None:
        """A listener: each ``class2d`` snapshot may have a new selection."""
        if event.type is EventType.CLASS2D_SNAPSHOT:
            self.wake()

    # -- the domain's part ---------------------------------------------------------
    def _resume(self) -> Class3dActor | None:
        # deferred: see class3d_settings (this runs in a thread, first)
        from livestream.class3d.actor import Class3dActor

        return Class3dActor.resume(self.folder, project=self.project)

    def _new(self) -> Class3dActor:
        # deferred: see class3d_settings (loaded by _resume already)
        from livestream.class3d.actor import Class3dActor

        return Class3dActor(
            self.folder, self._settings(), seed=self.section.seed, project=self.project
        )

    def _settings(self) -> Class3dSettings:
        return class3d_settings(self.section)

    def _report_error(self, operation: str, error: Exception) -> None:
        self.reporter.class3d_error(operation, error)

    def _report_progress(self, actor: Class3dActor, seconds: float | None) -> None:
        state = actor.state
        self.reporter.class3d_progress(
            0 if state is None else state.minibatch_index,
            actor.particles_seen,
            actor.pool_size,
            seconds,
        )

    def _publish(self, payload: dict[str, Any]) -> None:
        self.reporter.class3d_snapshot(payload)

    def _feed_changes_state(self, actor: Class3dActor) -> bool:
        """Before the model starts, a checkpoint would hold only the pool."""
        return actor.state is not None
