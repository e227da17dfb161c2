"""The asyncio task that runs one online actor (the 2D classifier, the 3D initial
model) inside the service.

:meth:`ActorTask.run` resumes the actor from its checkpoint (or starts one), feeds
it its particle STAR whenever :meth:`ActorTask.wake` is called and the file's
mtime changed, and runs one mini-batch per :func:`asyncio.to_thread` call, so the
event loop never blocks and a stop request is honoured within one mini-batch.
Every ``snapshot_every`` mini-batches it writes a snapshot (``SUMMARY_NAME`` holds
the event body for ``livestream status``), publishes it, calls ``on_snapshot``
(the job index rewrites ``default_pipeline.star``) and checkpoints.

An expected error (a bad STAR, a missing stack, a full disk, a checkpoint that is
not one) is logged with its file, field and value and counted; the service goes
on, and a failed step is tried again when the input changes.  A valid checkpoint
whose particle stacks cannot be read is left alone and the actor stays off until
the next start.  An unexpected exception stops the actor (logged with its
traceback and counted), never the service.

A domain subclasses :class:`ActorTask` with what differs: how its actor is made
and resumed, and how its errors, progress and snapshots are reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pipelines.errors import StageInputError
from pipelines.io.outputs import write_text_atomic

if TYPE_CHECKING:
    from livestream.class2d.pool import ParticlePool

__all__ = ["EXPECTED_ERRORS", "ActorTask", "OnlineActor", "drain_actor"]

log = logging.getLogger(__name__)

# what a bad input, a full disk or a malformed table raises (StageInputError is
# a ValueError); anything else is a bug and stops the actor
EXPECTED_ERRORS = (OSError, ValueError, KeyError, IndexError)

T = TypeVar("T")


class _State(Protocol):
    @property
    def minibatch_index(self) -> int: ...


class _Snapshot(Protocol):
    @property
    def payload(self) -> dict[str, Any]: ...


class OnlineActor(Protocol):
    """What :class:`ActorTask` needs of an actor (``Class2dActor``,
    ``Class3dActor``)."""

    minibatches_since_snapshot: int

    @property
    def pool(self) -> ParticlePool: ...

    @property
    def pool_size(self) -> int: ...

    @property
    def settings(self) -> object: ...

    @property
    def state(self) -> _State | None: ...

    def feed(self, particles_star: str | Path) -> int: ...

    def ready(self) -> bool: ...

    def step(self) -> bool: ...

    def snapshot(self) -> _Snapshot: ...

    def checkpoint(self) -> Path: ...


A = TypeVar("A", bound=OnlineActor)


async def drain_actor(task: asyncio.Task[None], deadline: float, name: str) -> None:
    """Wait for the actor's last mini-batch and checkpoint until ``deadline``
    (event-loop time), then cancel it (its previous checkpoint stands)."""
    timeout = max(deadline - asyncio.get_running_loop().time(), 1.0)
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        log.warning("%s: no checkpoint within the drain time limit; cancelled", name)
        task.cancel()


class ActorTask(ABC, Generic[A]):
    """Feeds, steps, snapshots and checkpoints one actor (module docstring)."""

    name = "actor"  # in log lines: class2d, class3d
    checkpoint_name = "actor_checkpoint.npz"
    summary_name = "run_actor.json"

    def __init__(
        self,
        folder: Path,
        project: Path,
        source_star: Path,
        *,
        snapshot_every: int,
        on_snapshot: Callable[[], object] | None = None,
    ) -> None:
        self.folder = folder
        self.project = project
        self.source_star = source_star  # the particles fed to the actor
        self.snapshot_every = snapshot_every
        # after each snapshot (the RELION pipeline names the newest iteration)
        self.on_snapshot = on_snapshot
        self.actor: A | None = None
        self.n_snapshots = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._star_mtime_ns: int | None = None
        self._dirty = False  # changed since the last checkpoint
        self._step_failed = False  # wait for new input before trying again
        self._reported: set[str] = set()  # pool problems already logged

    # -- what a domain says ------------------------------------------------------
    @abstractmethod
    def _resume(self) -> A | None:
        """The actor from its checkpoint in ``folder`` (``None``: there is none)."""

    @abstractmethod
    def _new(self) -> A:
        """A new actor with the config's settings."""

    @abstractmethod
    def _settings(self) -> object:
        """The config's settings, compared with a resumed actor's."""

    @abstractmethod
    def _report_error(self, operation: str, error: Exception) -> None:
        """Log and count an error of ``operation`` (resume, feed, step, ...)."""

    @abstractmethod
    def _report_progress(self, actor: A, seconds: float | None) -> None:
        """Metrics after a feed or a mini-batch (``seconds``: its duration)."""

    @abstractmethod
    def _publish(self, payload: dict[str, Any]) -> None:
        """Publish a snapshot's event body."""

    async def _complete(self, payload: dict[str, Any]) -> None:
        """Add to a snapshot's event body before it is written and published."""

    def _feed_changes_state(self, actor: A) -> bool:
        """Whether a feed that changed the pool leaves a checkpoint to write."""
        return True

    # -- called by the daemon (in the event loop) -------------------------------
    def wake(self) -> None:
        """The input may have changed: feed it if its mtime did."""
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
                    due = self.actor.minibatches_since_snapshot >= self.snapshot_every
                    if due and not self._stopping:  # else: next start, resumed
                        await self._snapshot()
                    if self._wake.is_set():
                        break  # new particles first
                if not self._stopping and not self._wake.is_set():
                    await self._wake.wait()
            if self._dirty:
                await self._guarded("checkpoint", self._checkpoint)
        except Exception:
            log.exception("%s: the online actor stopped", self.name)
            self._report_error("step", RuntimeError(f"{self.name} stopped"))

    # -- the steps ---------------------------------------------------------------
    async def _start(self) -> A | None:
        """The resumed actor, a new one (no checkpoint, or a file that is not
        one: kept as ``.unreadable``), or ``None`` when a valid checkpoint cannot
        be resumed now (its stacks are not readable): the actor stays off for
        this run and the checkpoint is left for the next start."""
        path = self.folder / self.checkpoint_name
        try:
            actor = await asyncio.to_thread(self._resume)
        except EXPECTED_ERRORS as error:
            self._report_error("resume", error)
            if not (isinstance(error, StageInputError) and error.path == path):
                log.error("%s: off until the next start; %s is kept", self.name, path)
                return None
            path.replace(path.with_name(f"{self.checkpoint_name}.unreadable"))
            actor = None
        if actor is None:
            return self._new()
        if actor.settings != self._settings():
            log.warning(
                "%s: %s keeps the settings it was started with (%s); move it "
                "away to start over with the config's",
                self.name,
                path,
                actor.settings,
            )
        state = actor.state
        log.info(
            "%s: resumed at mini-batch %d with %d particles",
            self.name,
            0 if state is None else state.minibatch_index,
            actor.pool_size,
        )
        self._report_progress(actor, None)
        return actor

    async def _feed(self) -> None:
        assert self.actor is not None
        try:
            mtime_ns = self.source_star.stat().st_mtime_ns
        except FileNotFoundError:
            return  # no particles yet
        if mtime_ns == self._star_mtime_ns:
            return
        actor = self.actor
        added = await self._guarded("feed", lambda: actor.feed(self.source_star))
        self._star_mtime_ns = mtime_ns
        for problem in actor.pool.problems:
            if str(problem) not in self._reported:  # once each, not every feed
                self._reported.add(str(problem))
                self._report_error("feed", problem)
        if added or actor.pool.n_retired_last:
            self._dirty = self._feed_changes_state(actor)
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
        await self._complete(payload)
        await self._guarded(
            "snapshot",
            lambda: write_text_atomic(
                self.folder / self.summary_name, json.dumps(payload)
            ),
        )
        self._publish(payload)
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
        except EXPECTED_ERRORS as error:
            self._report_error(operation, error)
            return None
