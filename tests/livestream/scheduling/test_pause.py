"""The pause gate, the disk watch and what counts as a full disk."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from livestream.config import ProjectConfig, StagesConfig
from livestream.ledger.store import Ledger, StageState
from livestream.scheduling.executors import WorkerCrashed
from livestream.scheduling.pause import (
    DiskSpace,
    PauseGate,
    PauseReason,
    is_disk_full,
    watch_project_disk,
)
from livestream.scheduling.scheduler import Scheduler, SchedulerSettings
from livestream.stages.registry import build_chain
from livestream.telemetry.broadcast import Broadcaster
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.reporting import EventType, Reporter
from pipelines.errors import StageInputError
from tests.livestream.scheduling.test_scheduler import (
    NOOP2,
    A,
    InlineExecutor,
    T,
    _exposures,
)

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/p/MotionCorr/a.mrc")


@pytest.mark.parametrize(
    "exc",
    [
        FULL,
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        sqlite3.OperationalError("database or disk is full"),
        StageInputError(Path("/p/a.mrc"), "data", None, f"cannot write: {FULL}"),
        WorkerCrashed("a worker process died"),
    ],
)
def test_what_counts_as_a_full_disk(exc: BaseException) -> None:
    expected = not isinstance(exc, WorkerCrashed)
    assert is_disk_full(exc) is expected


def test_a_full_disk_raised_from_is_found_in_the_chain() -> None:
    outer = RuntimeError("writing the micrograph")
    outer.__cause__ = FULL  # as `raise ... from` sets it
    assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EISDIR, "Is a directory"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def space(free_bytes: int) -> DiskSpace:
    return DiskSpace(free_bytes=free_bytes, total_bytes=10_000, free_inodes=100)


def test_watch_pauses_under_the_threshold_and_resumes_with_space(
    tmp_path: Path,
) -> None:
    clock = Clock()
    gate = PauseGate(clock)
    metrics = ServiceMetrics()
    project = ProjectConfig(
        path=tmp_path, min_free_bytes=1000, disk_check_interval_s=5.0
    )
    watch = watch_project_disk(gate, project, metrics)
    changes: list[bool] = []
    gate.add_listener(lambda: changes.append(gate.paused))

    def paused_metric() -> float | None:
        return metrics.registry.get_sample_value(
            "livestream_paused", {"reason": "disk_full"}
        )

    assert paused_metric() == 0.0
    watch.judge(space(5000))
    assert not gate.paused
    watch.judge(space(999))
    assert gate.paused
    assert paused_metric() == 1.0
    assert "999 bytes" in gate.reasons[PauseReason.DISK_FULL]
    assert gate.describe() == "paused: disk_full"
    watch.judge(space(998))  # still full: no second notice
    clock.now_s = 10.0
    watch.judge(space(1000))
    assert not gate.paused
    assert paused_metric() == 0.0
    assert changes == [True, False]
    assert watch.check() is not None  # the real statvfs of tmp_path


def test_a_write_error_pauses_for_at_least_one_check_interval() -> None:
    clock = Clock()
    gate = PauseGate(clock)
    watch = watch_project_disk(
        gate, ProjectConfig(min_free_bytes=1000, disk_check_interval_s=5.0), None
    )
    gate.pause(PauseReason.DISK_FULL, f"ledger: {FULL}")
    clock.now_s = 1.0
    watch.judge(space(5000))  # statvfs looks fine, but a write just failed
    assert gate.paused
    clock.now_s = 6.0
    watch.judge(space(5000))
    assert not gate.paused


def test_no_free_inode_is_a_full_disk() -> None:
    gate = PauseGate()
    watch = watch_project_disk(gate, ProjectConfig(min_free_bytes=0), None)
    watch.judge(DiskSpace(free_bytes=10**9, total_bytes=10**10, free_inodes=0))
    assert gate.paused


class FullOnceExecutor(InlineExecutor):
    """The first stage run finds the project disk full."""

    def __init__(self, gate: PauseGate) -> None:
        super().__init__()
        self.gate = gate
        self.paused_seen: list[bool] = []

    async def run(self, fn: Callable[[A], T], arg: A) -> T:
        self.paused_seen.append(self.gate.paused)
        if len(self.paused_seen) == 1:
            await asyncio.sleep(0.01)
            raise FULL
        return await super().run(fn, arg)


async def test_scheduler_holds_work_that_hit_the_full_disk_without_counting_it(
    tmp_path: Path,
) -> None:
    chain = build_chain(StagesConfig.model_validate(NOOP2))
    ledger = Ledger(tmp_path / "project" / "livestream.sqlite")
    exposures = _exposures(tmp_path, ledger, 2, chain.names)
    gate = PauseGate()
    executor = FullOnceExecutor(gate)
    broadcaster = Broadcaster()
    reporter = Reporter(broadcaster)
    done: list[str] = []
    broadcaster.add_listener(
        lambda e: (
            done.append(e.exposure_id) if e.type is EventType.EXPOSURE_DONE else None
        )
    )
    scheduler = Scheduler(
        ledger,
        chain,
        executor,
        reporter,
        SchedulerSettings(project_path=tmp_path / "project", max_in_flight=1),
        gate=gate,
    )
    for exposure in exposures:
        scheduler.offer(exposure)
    task = asyncio.create_task(scheduler.run())
    async with asyncio.timeout(10):
        while not gate.paused:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # paused: nothing else is dispatched
        assert executor.paused_seen == [False]
        assert scheduler.depth == 2  # one held, one queued
        row = ledger.rows_of("e0")[1]
        assert (row.state, row.attempts) == (StageState.RUNNING, 1)
        gate.resume(PauseReason.DISK_FULL)
        while len(done) < 2:
            await asyncio.sleep(0.01)
    scheduler.stop_taking_work()
    await task
    assert not any(executor.paused_seen[1:])
    rows = [r for e in ("e0", "e1") for r in ledger.rows_of(e)[1:]]
    assert {(r.state, r.attempts) for r in rows} == {(StageState.DONE, 1)}
    outcomes = [(e, s, o) for e, s, _, o in ledger.attempt_outcomes()]
    assert outcomes[0] == ("e0", "a", "interrupted")
    assert [o for *_, o in outcomes[1:]] == ["done"] * 4
