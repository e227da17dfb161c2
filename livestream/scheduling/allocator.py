"""glibc's ``malloc`` in the local pool workers: freed memory kept for the next task.

A stage's large arrays (above glibc's mmap threshold, at most 32 MB) are each a
fresh mapping, unmapped when freed, so every movie faults its bands, stacks, sums
and per-frame spectra in again: 4-10 CPU s of system time per 4096² × 40 movie
(``docs/motion_speed.md``, *seventh revision*).  :func:`keep_freed_memory` makes every
allocation come from the heap (``M_MMAP_MAX`` 0) and never trims it
(``M_TRIM_THRESHOLD`` -1), so a worker's next movie reuses the pages the previous
one faulted in.  Measured in ``docs/motion_speed.md`` (*eighth revision*): a warm
worker's CPU per movie 16.7-25.0 → 11.1-11.9 s (global only), 22.1-29.8 →
16.6-18.1 s (local), peak RSS ≤ 2.93 GB; the cost is that a worker stays at its
high-water mark between tasks (~2.8 GB after a 4096² movie instead of ~1.1 GB).

The pool worker's initializer (:mod:`livestream.scheduling.executors`) calls it
unless ``[workers] keep_freed_memory = false``.  glibc only (``mallopt`` of
``<malloc.h>``); elsewhere (musl, macOS) it does nothing and returns False.
:func:`heap_probe` reads the setting back by behaviour, for tests and checks.

A Dask worker runs its tasks in a thread of its own, not in the main thread, and
glibc gives such a thread an arena of its own: a chain of 64 MB heaps, from which a
larger block cannot come, so ``sysmalloc`` maps it on its own even under
``M_MMAP_MAX`` 0.  Which arena a new thread gets is glibc's choice (an arena a
finished thread left is reused first), so ``mallopt(M_ARENA_MAX, 1)`` in a running
worker does not reliably reach the task thread.  :data:`KEEP_FREED_MEMORY_ENV` is
the same setting as glibc's environment variables, read when a process starts,
with one arena (``MALLOC_ARENA_MAX`` 1) for all its threads; the nannies set it
for the worker processes they start (:mod:`livestream.scheduling.dask_settings`).
A pool worker needs no such variable: its tasks run in its main thread, and the
arenas of numba's OpenMP threads hold well under 1 MB after a 4096² chain; one
arena there (``MALLOC_ARENA_MAX=1``) was measured and saved nothing
(``docs/throughput.md``).
"""

from __future__ import annotations

import ctypes
import platform
import sys

import numpy as np

__all__ = [
    "KEEP_FREED_MEMORY_ENV",
    "HeapProbe",
    "heap_probe",
    "keep_freed_memory",
    "mallinfo",
]

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

# glibc's tunables (glibc.malloc.*) by their environment names, for a process yet
# to start: what keep_freed_memory sets (a trim threshold of -1 is SIZE_MAX), and
# one arena, so that threads other than the main one allocate as it does
KEEP_FREED_MEMORY_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(ctypes.c_size_t(-1).value),
    "MALLOC_ARENA_MAX": "1",
}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the heap (sbrk)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped blocks
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Every ``malloc`` from the heap (``M_MMAP_MAX`` 0) and the heap never
    trimmed (``M_TRIM_THRESHOLD`` -1), for this whole process; True when glibc
    took both, False (and nothing changed) elsewhere."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    )


MALLINFO_FIELDS = ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")


def mallinfo() -> dict[str, int]:
    """glibc's ``mallinfo2()`` summed over all arenas, in bytes: ``arena`` (the
    heaps' size), ``hblkhd`` (blocks mapped on their own), ``uordblks`` (in use),
    ``fordblks`` (free inside the heaps), ``keepcost`` (the main heap's trimmable
    top); empty without glibc ≥ 2.33 (musl, macOS)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {name: int(getattr(info, name)) for name in MALLINFO_FIELDS}


class HeapProbe(dict[str, int]):
    """What :func:`heap_probe` saw (bytes): ``mapped_grew`` while a large block
    was alive, ``heap_grew`` (the heap's size) and ``heap_used_grew`` (the bytes
    in use in it) by then, ``heap_kept`` after it was freed, and
    ``heap_free_before``, the free bytes the heap already held (a block served
    from the heap grows it by at least its size less these)."""


def heap_probe(nbytes: int = 64 << 20) -> HeapProbe | None:
    """Allocate ``nbytes`` (a NumPy array, more than glibc's largest mmap
    threshold), free it, and report from ``mallinfo2`` where it came from: with
    :func:`keep_freed_memory` the heap grows and keeps it, with glibc's default it
    is a mapping (``hblkhd``) and the heap does not grow.  None without glibc
    ≥ 2.33 (``mallinfo2``)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _Mallinfo2
    before = libc.mallinfo2()
    block = np.ones(nbytes, np.uint8)  # touched: a real allocation
    during = libc.mallinfo2()
    del block
    after = libc.mallinfo2()
    return HeapProbe(
        mapped_grew=during.hblkhd - before.hblkhd,
        heap_grew=during.arena - before.arena,
        heap_used_grew=during.uordblks - before.uordblks,
        heap_kept=after.arena - before.arena,
        heap_free_before=before.fordblks,
    )
