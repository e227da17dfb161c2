"""The local pool worker's glibc malloc keeps freed memory (docs/operations.md)."""

from __future__ import annotations

import platform
import sys

import pytest

from livestream.config import WorkersConfig
from livestream.scheduling.allocator import heap_probe
from livestream.scheduling.executors import LocalExecutor

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


def test_the_setting_is_on_by_default_and_can_be_turned_off() -> None:
    assert WorkersConfig().keep_freed_memory is True
    assert WorkersConfig(keep_freed_memory=False).keep_freed_memory is False
