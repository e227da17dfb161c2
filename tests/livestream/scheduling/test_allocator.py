"""The local pool's and the Dask workers' glibc malloc keeps freed memory
(docs/operations.md)."""

from __future__ import annotations

import os
import platform
import sys

import pytest

from livestream.config import WorkersConfig
from livestream.scheduling.allocator import KEEP_FREED_MEMORY_ENV, heap_probe
from livestream.scheduling.dask_settings import local_cluster
from livestream.scheduling.executors import DaskExecutor, LocalExecutor

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
