"""The scheduler: order, backpressure, retries, quarantine, crashed workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from livestream.config import StagesConfig
from livestream.demo.microscope import MicroscopeSettings, make_exposure
from livestream.ledger.store import Ledger, StageResult, StageState
from livestream.scheduling.executors import LocalExecutor
from livestream.scheduling.scheduler import Scheduler, SchedulerSettings
from livestream.stages.registry import StageTask, build_chain
from livestream.telemetry.broadcast import Broadcaster
from livestream.telemetry.reporting import EventType, Reporter, ServiceEvent
from mdcatch.records import Exposure

A = TypeVar("A")
T = TypeVar("T")


class InlineExecutor:
    """Runs stages in the event loop's thread; records the order and concurrency."""

    def __init__(self) -> None:
        self.order: list[tuple[str, str]] = []
        self.running = 0
        self.max_running = 0

    async def run(self, fn: Callable[[A], T], arg: A) -> T:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(0.01)
            task: Any = arg
            self.order.append((task.exposure.exposure_id, task.stage))
            return fn(arg)
        finally:
            self.running -= 1

    def n_workers(self) -> int:
        return 1

    async def close(self, *, cancel: bool) -> None:
        return None


def _exposures(
    tmp_path: Path, ledger: Ledger, n: int, chain: tuple[str, ...]
) -> list[Exposure]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    exposures = []
    for i in range(n):
        e = make_exposure(i, MicroscopeSettings(), start, tmp_path / f"e{i}.xml")
        movie = tmp_path / f"e{i}.mrc"
        movie.write_bytes(b"m" * 10)
        e = replace(e, exposure_id=f"e{i}", movie_path=movie)
        ledger.record_discovered(e.exposure_id)
        ledger.mark_ready(
            e.exposure_id,
            chain=chain,
            acquired_unix_s=e.acquired_utc.timestamp(),
            metadata_path=e.metadata_path,
            movie_path=movie,
            movie_size_bytes=10,
            movie_mtime_ns=1,
        )
        exposures.append(e)
    return exposures


async def _run(
    tmp_path: Path,
    stages: dict[str, Any],
    n: int,
    *,
    executor: Any = None,
    max_in_flight: int = 1,
    newest_share: float = 0.0,
    max_attempts: int = 3,
) -> tuple[Ledger, Any, list[ServiceEvent]]:
    chain = build_chain(StagesConfig.model_validate(stages))
    ledger = Ledger(tmp_path / "project" / "livestream.sqlite")
    exposures = _exposures(tmp_path, ledger, n, chain.names)
    broadcaster = Broadcaster()
    reporter = Reporter(broadcaster)
    events: list[ServiceEvent] = []
    finished = asyncio.Event()

    def listen(event: ServiceEvent) -> None:
        events.append(event)
        if sum(e.type is EventType.EXPOSURE_DONE for e in events) == n:
            finished.set()

    broadcaster.add_listener(listen)
    executor = executor or InlineExecutor()
    scheduler = Scheduler(
        ledger,
        chain,
        executor,
        reporter,
        SchedulerSettings(
            project_path=tmp_path / "project",
            max_in_flight=max_in_flight,
            max_attempts=max_attempts,
            retry_backoff_s=0.01,
            newest_share=newest_share,
        ),
    )
    for exposure in exposures:
        scheduler.offer(exposure)
        scheduler.offer(exposure)  # offered twice: queued once
    task = asyncio.create_task(scheduler.run())
    async with asyncio.timeout(
        90
    ):  # a guard against a hang; pool restarts are slow on a loaded machine
        await finished.wait()
    scheduler.stop_taking_work()
    await task
    return ledger, executor, events


NOOP2 = {"chain": ["a", "b"], "a": {"kind": "noop"}, "b": {"kind": "noop"}}


async def test_oldest_first_and_bounded(tmp_path: Path) -> None:
    ledger, executor, _ = await _run(tmp_path, NOOP2, 4, max_in_flight=2)
    assert executor.max_running <= 2
    firsts = [eid for eid, stage in executor.order if stage == "a"]
    assert firsts == ["e0", "e1", "e2", "e3"]
    assert all(r.attempts == 1 for e in range(4) for r in ledger.rows_of(f"e{e}")[1:])


async def test_a_share_of_slots_goes_to_the_newest(tmp_path: Path) -> None:
    _, executor, _ = await _run(tmp_path, NOOP2, 6, max_in_flight=2, newest_share=0.5)
    firsts = [eid for eid, stage in executor.order if stage == "a"]
    assert firsts[:2] == ["e5", "e0"] or firsts[:2] == ["e0", "e5"]


async def test_transient_failures_are_retried(tmp_path: Path) -> None:
    stages = {"chain": ["a"], "a": {"kind": "noop", "fail_attempts": 2}}
    ledger, _, events = await _run(tmp_path, stages, 2, max_attempts=3)
    for eid in ("e0", "e1"):
        row = ledger.rows_of(eid)[1]
        assert (row.state, row.attempts) == (StageState.DONE, 3)
    failed = [
        e for e in events if e.type is EventType.STAGE_FINISHED and e.state == "failed"
    ]
    assert len(failed) == 4
    assert "transient failure" in failed[0].detail


async def test_persistent_failures_are_quarantined_after_max_attempts(
    tmp_path: Path,
) -> None:
    stages = {
        "chain": ["a", "b"],
        "a": {"kind": "noop", "fail_attempts": 9},
        "b": {"kind": "noop"},
    }
    ledger, _, _ = await _run(tmp_path, stages, 1, max_attempts=2)
    a, b = ledger.rows_of("e0")[1:]
    assert (a.state, a.attempts) == (StageState.QUARANTINED, 2)
    assert "gave up after 2 attempts" in (a.error or "")
    assert b.state is StageState.QUARANTINED
    assert "'a' was quarantined" in (b.error or "")


async def test_bad_input_is_quarantined_at_once(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    chain = {"chain": ["a"], "a": {"kind": "noop"}}
    ledger = Ledger(tmp_path / "project" / "livestream.sqlite")
    (exposure,) = _exposures(tmp_path, ledger, 1, ("a",))
    assert exposure.movie_path is not None
    exposure.movie_path.unlink()  # the stage raises StageInputError
    ledger.close()
    ledger, _, _ = await _run_existing(tmp_path, chain, exposure)
    row = ledger.rows_of("e0")[1]
    assert (row.state, row.attempts) == (StageState.QUARANTINED, 1)
    assert "movie file is missing" in (row.error or "")


async def _run_existing(
    tmp_path: Path, stages: dict[str, Any], exposure: Exposure
) -> tuple[Ledger, Any, None]:
    chain = build_chain(StagesConfig.model_validate(stages))
    ledger = Ledger(tmp_path / "project" / "livestream.sqlite")
    broadcaster = Broadcaster()
    reporter = Reporter(broadcaster)
    finished = asyncio.Event()
    broadcaster.add_listener(
        lambda e: finished.set() if e.type is EventType.EXPOSURE_DONE else None
    )
    executor = InlineExecutor()
    scheduler = Scheduler(
        ledger,
        chain,
        executor,
        reporter,
        SchedulerSettings(project_path=tmp_path / "project"),
    )
    scheduler.offer(exposure)
    task = asyncio.create_task(scheduler.run())
    async with asyncio.timeout(10):
        await finished.wait()
    scheduler.stop_taking_work()
    await task
    return ledger, executor, None


@pytest.mark.slow
async def test_a_crashed_worker_process_does_not_stop_the_service(
    tmp_path: Path,
) -> None:
    stages = {"chain": ["a"], "a": {"kind": "noop", "crash_attempts": 1}}
    executor = LocalExecutor(1, "forkserver")
    try:
        ledger, _, events = await _run(
            tmp_path, stages, 2, executor=executor, max_attempts=3
        )
    finally:
        await executor.close(cancel=True)
    for eid in ("e0", "e1"):
        row = ledger.rows_of(eid)[1]
        assert row.state is StageState.DONE
        assert row.attempts >= 2
    crashes = [e.detail for e in events if e.state == "failed"]
    assert crashes
    assert all("WorkerCrashed" in c for c in crashes)


async def test_a_curate_result_is_decided_again_when_thresholds_change_while_it_runs(
    tmp_path: Path,
) -> None:
    chain = build_chain(
        StagesConfig.model_validate({"chain": ["c"], "c": {"kind": "curate"}})
    )
    ledger = Ledger(tmp_path / "project" / "livestream.sqlite")
    (exposure,) = _exposures(tmp_path, ledger, 1, chain.names)
    decided_again = StageResult(stage="c", accepted=False)
    recurated: list[tuple[str, str]] = []

    def recurate(exposure_id: str, stage: str) -> StageResult:
        recurated.append((exposure_id, stage))
        return decided_again

    def run_curate(task: StageTask) -> StageResult:
        # a reload changes the thresholds while the stage runs
        scheduler.update_params(
            "c", task.params.model_copy(update={"max_ctf_resolution_a": 3.0})
        )
        return StageResult(stage="c", accepted=True)

    broadcaster = Broadcaster()
    finished: list[ServiceEvent] = []
    broadcaster.add_listener(
        lambda e: finished.append(e) if e.type is EventType.STAGE_FINISHED else None
    )
    scheduler = Scheduler(
        ledger,
        chain,
        InlineExecutor(),
        Reporter(broadcaster),
        SchedulerSettings(project_path=tmp_path / "project"),
        stage_runner=run_curate,
        recurate=recurate,
    )
    scheduler.offer(exposure)
    task = asyncio.create_task(scheduler.run())
    async with asyncio.timeout(10):
        while not finished:
            await asyncio.sleep(0.01)
    scheduler.stop_taking_work()
    await task
    ledger.close()
    assert recurated == [("e0", "c")]
    assert finished[0].figures == {"accepted": 0.0}  # the new decision is reported
