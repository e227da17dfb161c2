"""Run the stage chain of every ready exposure on the executor, with backpressure.

At most ``max_in_flight`` stages run at once.  The queue is served oldest first
(by acquisition time), except that a share of the slots (``newest_share``) takes
the newest exposure, so live feedback stays current while the service catches up.

This is the one place a stage failure is caught, recorded and counted:
:class:`pipelines.StageInputError` and :class:`mdcatch.MetadataError` quarantine
at once; anything else is retried with exponential backoff up to ``max_attempts``
and then quarantined.  A crashed worker process is such a transient failure.

After a stage whose kind decides curation rejects an exposure, the stages after
it are not dispatched: their rows are marked done and ``skipped`` (a later threshold
change that accepts the exposure puts them back to pending,
:mod:`livestream.curation.reload`).  Stage parameters can change while the service
runs (:meth:`Scheduler.update_params`); work starts with the current ones.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from livestream.ledger.store import (
    Curation,
    Ledger,
    StageResult,
    StageState,
    curation_of,
)
from livestream.scheduling.executors import Executor
from livestream.stages.params import StageParams
from livestream.stages.registry import Chain, ChainLink, StageTask, picklable, run_stage
from livestream.telemetry.reporting import Reporter
from mdcatch.errors import InputFieldError
from mdcatch.records import Exposure

__all__ = ["Scheduler", "SchedulerSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    project_path: Path
    max_in_flight: int = 4
    max_attempts: int = 3
    retry_backoff_s: float = 5.0
    newest_share: float = 0.25


@dataclass(slots=True)
class _Work:
    exposure: Exposure
    link: ChainLink
    results: dict[str, StageResult] = field(default_factory=dict)
    order: float = 0.0
    seq: int = 0
    newest: bool = False
    params_used: StageParams | None = None


class Scheduler:
    def __init__(
        self,
        ledger: Ledger,
        chain: Chain,
        executor: Executor,
        reporter: Reporter,
        settings: SchedulerSettings,
        *,
        stage_runner: Callable[[StageTask], StageResult] = run_stage,
        recurate: Callable[[str, str], StageResult | None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._chain = chain
        self._executor = executor
        self._reporter = reporter
        self._settings = settings
        self._runner = stage_runner
        self._queued: dict[str, _Work] = {}
        self._oldest: list[tuple[float, int, str]] = []
        self._newest: list[tuple[float, int, str]] = []
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._retrying: dict[str, asyncio.TimerHandle] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._n_newest = 0
        # decides a curate result again when its thresholds changed while it ran
        self.recurate = recurate

    # -- queue ---------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queued) + len(self._retrying)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def update_params(self, stage: str, params: StageParams) -> None:
        """Run ``stage`` with ``params`` from now on (a configuration reload)."""
        index = self._chain.names.index(stage)
        links = list(self._chain.links)
        links[index] = replace(links[index], params=params)
        self._chain = Chain(tuple(links))

    def _current(self, link: ChainLink) -> ChainLink:
        return self._chain.links[self._chain.names.index(link.name)]

    def offer(self, exposure: Exposure) -> None:
        """An exposure is ready: queue its first unfinished stage (if any)."""
        eid = exposure.exposure_id
        if eid in self._queued or eid in self._in_flight or eid in self._retrying:
            return
        results: dict[str, StageResult] = {}
        for row in self._ledger.rows_of(eid)[1:]:
            if row.state is StageState.DONE:
                results[row.stage] = row.result
                continue
            if row.state is StageState.QUARANTINED:
                return
            link = self._chain.links[self._chain.names.index(row.stage)]
            self._push(
                _Work(exposure, link, results, exposure.acquired_utc.timestamp())
            )
            return

    def _push(self, work: _Work) -> None:
        self._seq += 1
        work.seq = self._seq
        eid = work.exposure.exposure_id
        self._queued[eid] = work
        heapq.heappush(self._oldest, (work.order, work.seq, eid))
        heapq.heappush(self._newest, (-work.order, -work.seq, eid))
        if len(self._oldest) + len(self._newest) > 4 * len(self._queued) + 64:
            self._compact()
        self._wake.set()

    def _compact(self) -> None:
        self._oldest = [(w.order, w.seq, e) for e, w in self._queued.items()]
        self._newest = [(-w.order, -w.seq, e) for e, w in self._queued.items()]
        heapq.heapify(self._oldest)
        heapq.heapify(self._newest)

    def _pop(self) -> _Work:
        quota = round(self._settings.newest_share * self._settings.max_in_flight)
        take_newest = self._n_newest < quota
        heap = self._newest if take_newest else self._oldest
        while True:
            _, seq, eid = heapq.heappop(heap)
            work = self._queued.get(eid)
            if work is not None and abs(seq) == work.seq:
                del self._queued[eid]
                work.newest = take_newest
                return work

    # -- main loop -----------------------------------------------------------------
    async def run(self) -> None:
        """Submit work until :meth:`stop_taking_work`, then wait for in-flight work."""
        async with asyncio.TaskGroup() as group:
            while True:
                self._wake.clear()
                while (
                    not self._closing
                    and self._queued
                    and len(self._in_flight) < self._settings.max_in_flight
                ):
                    work = self._pop()
                    self._n_newest += work.newest
                    eid = work.exposure.exposure_id
                    self._in_flight[eid] = group.create_task(
                        self._execute(work), name=f"stage[{eid}:{work.link.name}]"
                    )
                self._reporter.set_queue(self.depth, self.in_flight)
                if self._closing and not self._in_flight:
                    return
                await self._wake.wait()

    def stop_taking_work(self) -> None:
        self._closing = True
        for handle in self._retrying.values():
            handle.cancel()
        self._retrying.clear()
        self._wake.set()

    def cancel_in_flight(self) -> None:
        for task in self._in_flight.values():
            task.cancel()

    async def _execute(self, work: _Work) -> None:
        eid, stage = work.exposure.exposure_id, work.link.name
        work.link = self._current(work.link)
        work.params_used = work.link.params
        attempt = self._ledger.mark_running(eid, stage)
        task = StageTask(
            stage=stage,
            kind=work.link.kind.name,
            params=work.link.params,
            exposure=picklable(work.exposure),
            project_path=self._settings.project_path,
            previous=dict(work.results),
            attempt=attempt,
        )
        started = time.monotonic()
        try:
            result = await self._executor.run(self._runner, task)
        except asyncio.CancelledError:
            self._ledger.mark_pending(eid, stage)  # checkpoint: redo after restart
            raise
        except InputFieldError as exc:  # StageInputError or MetadataError
            self._record_failure(
                work, str(exc), time.monotonic() - started, attempt, bad_input=True
            )
        except Exception as exc:  # noqa: BLE001 - the one place stage failures are caught
            message = f"{type(exc).__name__}: {exc}"
            self._record_failure(
                work, message, time.monotonic() - started, attempt, bad_input=False
            )
        else:
            self._record_success(work, result, time.monotonic() - started)
        finally:
            del self._in_flight[eid]
            self._n_newest -= work.newest
            self._wake.set()

    def _record_success(self, work: _Work, result: StageResult, seconds: float) -> None:
        eid = work.exposure.exposure_id
        following = self._chain.after(work.link.name)
        self._ledger.mark_done(eid, result, duration_s=seconds, last=following is None)
        decides = work.link.kind.decides_curation
        stale = (
            decides
            and self.recurate is not None
            and work.params_used != self._current(work.link).params
        )
        if stale and self.recurate is not None:  # thresholds changed while it ran
            result = self.recurate(eid, work.link.name) or result
        self._reporter.stage_finished(
            eid, work.link.name, "done", seconds, result=result
        )
        work.results[work.link.name] = result
        if (
            following is not None
            and decides
            and curation_of(result) is Curation.REJECTED
        ):
            self._skip_rest(work, following)
            following = None
        if following is None:
            states = dict.fromkeys(self._chain.names, "done")
            self._reporter.exposure_done(work.exposure, work.results, states)
        else:
            work.link = following
            self._push(work)

    def _skip_rest(self, work: _Work, following: ChainLink) -> None:
        """A rejected exposure: the stages after curation are done, skipped."""
        eid = work.exposure.exposure_id
        link: ChainLink | None = following
        while link is not None:
            after = self._chain.after(link.name)
            result = StageResult(stage=link.name, skipped=True)
            self._ledger.mark_done(eid, result, duration_s=0.0, last=after is None)
            self._reporter.stage_finished(eid, link.name, "done", 0.0, result=result)
            work.results[link.name] = result
            link = after

    def _record_failure(
        self,
        work: _Work,
        message: str,
        seconds: float,
        attempt: int,
        *,
        bad_input: bool,
    ) -> None:
        eid, stage = work.exposure.exposure_id, work.link.name
        quarantine = bad_input or attempt >= self._settings.max_attempts
        if quarantine and not bad_input:
            message = f"gave up after {attempt} attempts: {message}"
        self._ledger.mark_failed(
            eid, stage, message, duration_s=seconds, quarantine=quarantine
        )
        state = "quarantined" if quarantine else "failed"
        log.warning("%s %s attempt %d %s: %s", eid, stage, attempt, state, message)
        self._reporter.stage_finished(eid, stage, state, seconds, error=message)
        if quarantine:
            self._ledger.quarantine_following(eid, stage, self._chain.names)
            states = {
                name: ("done" if name in work.results else "quarantined")
                for name in self._chain.names
            }
            self._reporter.exposure_done(work.exposure, work.results, states)
            return
        delay = self._settings.retry_backoff_s * 2.0 ** (attempt - 1)
        loop = asyncio.get_running_loop()
        self._retrying[eid] = loop.call_later(delay, self._retry, work)

    def _retry(self, work: _Work) -> None:
        del self._retrying[work.exposure.exposure_id]
        if not self._closing:
            self._push(work)
