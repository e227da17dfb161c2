"""Where stages run: a local process pool (default) or a Dask distributed cluster.

Both offer the same small async interface to the scheduler.  A crashed worker
process (:class:`~concurrent.futures.process.BrokenProcessPool`) is survived: the
pool is rebuilt and the failure goes back to the scheduler as a transient error.
Workers die with the daemon (:func:`exit_with_parent`), even when it is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

import numpy as np

from livestream.config import SlurmConfig
from livestream.scheduling.allocator import keep_freed_memory
from livestream.scheduling.clusters import start_slurm_cluster
from livestream.scheduling.dask_settings import dask_settings, require_distributed
from livestream.scheduling.openmp import passive_openmp

__all__ = [
    "DAEMON_PID_ENV",
    "PARENT_WATCH_THREAD",
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "WorkerCrashed",
    "check_payload",
    "create_executor",
    "exit_with_parent",
]

log = logging.getLogger(__name__)

EXIT_ORPHANED = 71  # a worker whose daemon died

T = TypeVar("T")
A = TypeVar("A")


class WorkerCrashed(RuntimeError):
    """The worker process died while running a stage (a transient failure)."""


class Executor(Protocol):
    async def run(self, fn: Callable[[A], T], arg: A) -> T: ...
    def n_workers(self) -> int: ...
    async def close(self, *, cancel: bool) -> None: ...


PARENT_WATCH_INTERVAL_S = 1.0
# set by the service for the commands it runs as child processes (the refinement
# of the live map, livestream.cli.console.run_alone): they die with the daemon
DAEMON_PID_ENV = "LIVESTREAM_DAEMON_PID"
PARENT_WATCH_THREAD = "parent-watch"  # also its name in ps -L / top -H (Linux)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PR_SET_NAME = 15


def _ignore_signals() -> None:
    # Ctrl-C reaches the whole process group and systemd may signal the whole
    # cgroup: the daemon decides when workers stop, not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prctl(option: int, value: int | bytes) -> None:
    """``prctl(option, value)`` on Linux (a no-op elsewhere); failures are logged."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        log.warning("prctl(%d) failed: %s", option, os.strerror(ctypes.get_errno()))


def _watch_parent(parent_pid: int, daemon_pid: int, interval_s: float) -> None:
    """Exit when the parent or the daemon is gone (the portable fallback)."""
    _prctl(_PR_SET_NAME, PARENT_WATCH_THREAD.encode())
    while os.getppid() == parent_pid and _pid_alive(daemon_pid):
        time.sleep(interval_s)
    os._exit(EXIT_ORPHANED)


def exit_with_parent(daemon_pid: int) -> None:
    """Make this worker process die with its parent and with the daemon.

    A SIGKILLed daemon cannot shut its pool down: without this its workers (and
    through them the pool's helper processes) would live on under PID 1.  On
    Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill the worker when
    its parent (the daemon, or the forkserver) exits; everywhere a daemon thread
    checks once per :data:`PARENT_WATCH_INTERVAL_S` that the parent and the
    daemon still exist, and exits the worker when not.
    """
    parent_pid = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid or not _pid_alive(daemon_pid):
        os._exit(EXIT_ORPHANED)  # the parent died before the death signal was set
    threading.Thread(
        target=_watch_parent,
        args=(parent_pid, daemon_pid, PARENT_WATCH_INTERVAL_S),
        name=PARENT_WATCH_THREAD,
        daemon=True,
    ).start()


def _init_worker(daemon_pid: int, keep_freed: bool = True) -> None:
    _ignore_signals()
    exit_with_parent(daemon_pid)
    # OpenMP's idle threads sleep (livestream.scheduling.openmp): before any
    # task's first numba kernel loads libgomp
    passive_openmp()
    # glibc keeps freed memory for the next task: the one place this is set
    # (livestream.scheduling.allocator; [workers] keep_freed_memory)
    if keep_freed and not keep_freed_memory():
        log.info("keep_freed_memory: not glibc, the platform's malloc as it is")


class LocalExecutor:
    """A :class:`ProcessPoolExecutor` on the ``spawn`` or ``forkserver`` context.

    With ``keep_freed_memory`` (the default) each worker's glibc ``malloc`` keeps
    freed memory for the next task (:mod:`livestream.scheduling.allocator`)."""

    def __init__(
        self,
        n_processes: int,
        start_method: str = "forkserver",
        *,
        keep_freed_memory: bool = True,
    ) -> None:
        self._n = n_processes
        self._keep_freed = keep_freed_memory
        self._context = multiprocessing.get_context(start_method)
        self._pool = self._new_pool()
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._n,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(os.getpid(), self._keep_freed),
        )

    async def run(self, fn: Callable[[A], T], arg: A) -> T:
        pool = self._pool
        try:
            return await asyncio.wrap_future(pool.submit(fn, arg))
        except BrokenProcessPool as exc:
            if pool is self._pool:  # the first to notice rebuilds it
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            raise WorkerCrashed(f"a worker process died: {exc}") from exc

    def n_workers(self) -> int:
        return self._n

    async def close(self, *, cancel: bool) -> None:
        if self._closed:
            return
        self._closed = True
        pool = self._pool
        if cancel:
            pool.shutdown(wait=False, cancel_futures=True)
            for child in self._context.active_children():
                child.kill()
        await asyncio.to_thread(pool.shutdown, wait=True)


class DaskExecutor:
    """Stages on a Dask distributed scheduler: one given by address, or a Slurm
    cluster the service starts and stops (:mod:`livestream.scheduling.clusters`).

    A worker that dies while running a stage is replaced by the scheduler, which runs
    the stage again on another worker (``distributed.scheduler.allowed-failures``
    times); the ledger sees one attempt.  When Dask gives up (``KilledWorker``) the
    failure goes back to the scheduler as :class:`WorkerCrashed`, a transient error.
    """

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self._client = client
        self._cluster = cluster  # owned: closed with the executor
        self._closed = False

    @classmethod
    async def connect(cls, address: str) -> DaskExecutor:
        client = await _dask_client(address)
        return cls(client)

    @classmethod
    async def on_slurm(
        cls, config: SlurmConfig, *, keep_freed_memory: bool = True
    ) -> DaskExecutor:
        """A Slurm cluster the executor owns; with ``keep_freed_memory`` its workers'
        glibc keeps freed memory (:mod:`livestream.scheduling.dask_settings`)."""
        cluster = await start_slurm_cluster(config, keep_freed_memory=keep_freed_memory)
        try:
            client = await _dask_client(cluster)
        except BaseException:
            await cluster.close()
            raise
        return cls(client, cluster)

    async def run(self, fn: Callable[[A], T], arg: A) -> T:
        check_payload(arg, "stage task")
        future = self._client.submit(fn, arg, pure=False)
        try:
            result: T = await future
        except Exception as exc:
            if type(exc).__name__ == "KilledWorker":  # distributed.KilledWorker
                raise WorkerCrashed(f"Dask gave up on the stage: {exc}") from exc
            raise
        check_payload(result, "stage result")
        return result

    def n_workers(self) -> int:
        info = self._client.scheduler_info()
        return len(info.get("workers", {}))

    async def close(self, *, cancel: bool) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()
            if self._cluster is not None:
                await self._cluster.close()


# what a task or a result may carry through the scheduler: paths, parameters and
# figures (a real task is 2-4 kB, a result under 1 kB); an array would mean images
# travelling through the scheduler instead of the shared file system
MAX_PAYLOAD_BYTES = 64 * 1024


class _PayloadPickler(pickle.Pickler):
    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, np.ndarray) and obj.nbytes > 1024:
            raise TypeError(f"an array of {obj.nbytes} bytes {obj.shape}")
        return NotImplemented


def check_payload(obj: object, what: str) -> int:
    """The pickled size of ``obj``; raises if it carries an array or is too big.

    Stages read and write images on the shared file system: what goes to a worker
    and back is paths and numbers.  A programming error that put images in a task
    or a result would ship them through the Dask scheduler on every call.
    """
    buffer = io.BytesIO()
    try:
        _PayloadPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except TypeError as exc:
        raise TypeError(f"{what} {type(obj).__name__} carries {exc}") from None
    size = buffer.tell()
    if size > MAX_PAYLOAD_BYTES:
        raise TypeError(
            f"{what} {type(obj).__name__} is {size} bytes pickled (at most "
            f"{MAX_PAYLOAD_BYTES}): stages exchange paths, not data"
        )
    return size


async def _dask_client(address_or_cluster: Any) -> Any:
    client = require_distributed().Client
    with dask_settings():
        return await client(address_or_cluster, asynchronous=True)


async def create_executor(
    n_processes: int,
    start_method: str,
    dask_address: str,
    slurm: SlurmConfig | None = None,
    *,
    keep_freed_memory: bool = True,
) -> LocalExecutor | DaskExecutor:
    if slurm is not None:
        return await DaskExecutor.on_slurm(slurm, keep_freed_memory=keep_freed_memory)
    if dask_address:
        return await DaskExecutor.connect(dask_address)
    return LocalExecutor(n_processes, start_method, keep_freed_memory=keep_freed_memory)
