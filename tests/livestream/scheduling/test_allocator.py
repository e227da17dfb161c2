"""The local pool's and the Dask workers' glibc malloc keeps freed memory
(docs/throughput.md, docs/scaling.md)."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import pytest

from livestream.config import WorkersConfig
from livestream.scheduling.allocator import KEEP_FREED_MEMORY_ENV, heap_probe, mallinfo
from livestream.scheduling.dask_settings import local_cluster
from livestream.scheduling.executors import DaskExecutor, LocalExecutor, WorkerCrashed

BLOCK = 64 << 20  # above glibc's largest mmap threshold (32 MB on 64-bit)

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt/mallinfo2 are glibc's",
)


def probe(_: object) -> dict[str, int] | None:
    probed = heap_probe(BLOCK)
    return None if probed is None else dict(probed)


async def probe_in_worker(keep_freed: bool) -> dict[str, int] | None:
    executor = LocalExecutor(1, "forkserver", keep_freed_memory=keep_freed)
    try:
        return await executor.run(probe, None)
    finally:
        await executor.close(cancel=False)


@glibc_only
async def test_the_pool_worker_takes_large_blocks_from_the_heap_and_keeps_them() -> (
    None
):
    kept = await probe_in_worker(True)
    default = await probe_in_worker(False)
    assert kept is not None
    assert default is not None
    # the setting: 64 MB from the heap, not a mapping, and still held once freed
    # (the heap grows by the block less the free space it already had: on a
    # fresh worker some kilobytes, which the top of the heap lends the block)
    assert kept["mapped_grew"] == 0
    assert kept["heap_used_grew"] >= BLOCK
    assert kept["heap_grew"] >= BLOCK - kept["heap_free_before"]
    assert kept["heap_grew"] >= BLOCK // 2
    assert kept["heap_kept"] >= kept["heap_grew"]
    # without it (keep_freed_memory = false) glibc maps the block on its own
    assert default["mapped_grew"] >= BLOCK
    assert default["heap_used_grew"] < BLOCK
    assert default["heap_grew"] < BLOCK // 2


def assert_kept(probed: dict[str, int] | None) -> None:
    """64 MB from the heap, not a mapping, and still held once freed."""
    assert probed is not None
    assert probed["mapped_grew"] == 0
    assert probed["heap_used_grew"] >= BLOCK
    assert probed["heap_grew"] >= BLOCK - probed["heap_free_before"]
    assert probed["heap_kept"] >= probed["heap_grew"]


def assert_mapped(probed: dict[str, int] | None) -> None:
    """glibc's default: the block is a mapping of its own."""
    assert probed is not None
    assert probed["mapped_grew"] >= BLOCK
    assert probed["heap_used_grew"] < BLOCK


async def probe_in_dask_worker(keep_freed: bool) -> list[dict[str, int] | None]:
    """The probe in a task (the worker's task thread), before and after the nanny
    restarts the worker process."""
    probed = []
    async with local_cluster(1, keep_freed_memory=keep_freed) as cluster:
        executor = await DaskExecutor.connect(cluster.scheduler_address)
        try:
            client = executor._client
            (pid,) = (await client.run(os.getpid)).values()
            probed.append(await executor.run(probe, None))
            await client.restart()
            (new_pid,) = (await client.run(os.getpid)).values()
            assert new_pid != pid
            probed.append(await executor.run(probe, None))
        finally:
            await executor.close(cancel=False)
    return probed


@glibc_only
@pytest.mark.slow  # Dask worker processes, each started twice
async def test_every_dask_worker_process_keeps_freed_memory_restarted_ones_too() -> (
    None
):
    """The nanny starts each worker process, a restarted one too, with glibc's
    variables for the setting, and one arena, so that the task thread's large
    blocks come from the kept heap; with ``keep_freed_memory = false`` they are
    mappings of their own, as before."""
    pytest.importorskip("distributed")
    environ = {name: os.environ.get(name) for name in KEEP_FREED_MEMORY_ENV}
    for kept in await probe_in_dask_worker(True):
        assert_kept(kept)
    for default in await probe_in_dask_worker(False):
        assert_mapped(default)
    # the nanny ran in this process: its environment is as it was
    assert {name: os.environ.get(name) for name in KEEP_FREED_MEMORY_ENV} == environ


def test_the_setting_is_on_by_default_and_can_be_turned_off() -> None:
    assert WorkersConfig().keep_freed_memory is True
    assert WorkersConfig(keep_freed_memory=False).keep_freed_memory is False


def rss_after_holding(nbytes: int) -> tuple[int, int, int]:
    """In the worker: its resident set before, and after a block of ``nbytes`` was
    touched and freed (kept: the heap stays resident), and its pid."""
    import psutil

    me = psutil.Process()
    before = me.memory_info().rss
    block = np.ones(nbytes, np.uint8)
    del block
    return before, me.memory_info().rss, os.getpid()


def run_away(nbytes: int) -> None:
    """A task whose memory grows past the worker's limit and stays there."""
    block = np.ones(nbytes, np.uint8)
    time.sleep(10)  # the nanny checks each second
    del block


def status_of(dask_worker: Any) -> tuple[str, int]:
    return dask_worker.status.name, os.getpid()


@glibc_only
@pytest.mark.slow  # a Dask worker process, restarted once
async def test_a_kept_heap_neither_pauses_nor_restarts_a_worker_a_runaway_restarts() -> (
    None
):
    """A worker whose kept heap sits between Dask's pause (80 %) and terminate
    (95 %) fractions of its memory limit keeps running tasks, in the same process;
    a task that grows past 95 % is stopped by the nanny (WorkerCrashed)."""
    pytest.importorskip("distributed")
    import dask.config

    limit = 1 << 30
    # one attempt: Dask gives up on the runaway after the first restart
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        async with local_cluster(1, memory_limit=limit) as cluster:
            executor = await DaskExecutor.connect(cluster.scheduler_address)
            client = executor._client
            try:
                baseline, _, pid = await executor.run(rss_after_holding, 0)
                hold = int(0.875 * limit) - baseline
                _, kept_rss, _ = await executor.run(rss_after_holding, hold)
                assert 0.8 * limit < kept_rss < 0.95 * limit  # Dask would pause
                await asyncio.sleep(3.0)  # three of the nanny's checks
                (status,) = (await client.run(status_of)).values()
                assert status == ("running", pid)
                _, _, same_pid = await executor.run(rss_after_holding, 0)
                assert same_pid == pid
                with pytest.raises(WorkerCrashed):
                    await executor.run(run_away, limit)
                await client.wait_for_workers(1)
                (status,) = (await client.run(status_of)).values()
                assert status[1] != pid  # a fresh process, the heap given back
            finally:
                await executor.close(cancel=False)


@glibc_only
def test_mallinfo_sees_a_live_block_in_use_and_not_after() -> None:
    """The fields are read at the right offsets: a touched 64 MB block shows in
    use (from the heap or mapped on its own, whichever this process's malloc
    does), and no longer once freed."""
    before = mallinfo()
    assert set(before) == {"arena", "hblkhd", "uordblks", "fordblks", "keepcost"}
    block = np.ones(BLOCK, np.uint8)
    during = mallinfo()
    del block
    after = mallinfo()
    in_use = (
        during["uordblks"] + during["hblkhd"] - before["uordblks"] - before["hblkhd"]
    )
    assert BLOCK <= in_use < 2 * BLOCK
    assert during["arena"] + during["hblkhd"] >= before["arena"] + BLOCK
    freed = during["uordblks"] + during["hblkhd"] - after["uordblks"] - after["hblkhd"]
    assert freed >= BLOCK
