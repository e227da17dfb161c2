"""Dask's own background work, set in one place for every cluster the service uses.

A Dask worker, its nanny, the scheduler and the client each run periodic callbacks
on their event loops.  At Dask's defaults they cost an idle one-worker
``LocalCluster`` about 7 % of a core, and the worker's statistical profiler lands
inside the stage's own process CPU (docs/scaling.md).
The service runs a few long tasks (seconds to a minute each), so it needs none of
that resolution.  :data:`DASK_SETTINGS` is what it sets instead, each key with
Dask's documented meaning (``distributed-schema.yaml``, rendered at
https://docs.dask.org/en/stable/configuration.html):

- ``distributed.worker.profile.enabled`` (default on): "Whether or not to enable
  profiling".  The profiler samples the stack of every worker thread each
  ``profile.interval`` (10 ms) for the dashboard's profile page, which the service
  does not serve.  Off.
- ``distributed.admin.tick.interval`` (20 ms): "The time between ticks"; each
  server's event loop measures how late its tick runs and warns when the loop was
  blocked longer than ``tick.limit`` (3 s).  1 s still sees a 3 s block.
- ``distributed.admin.system-monitor.interval`` (500 ms): "Polling time to query
  cpu/memory statistics" (psutil, for the dashboard and the heartbeats).  5 s.
- ``distributed.admin.system-monitor.gil.enabled`` (on): "Enable monitoring of GIL
  contention" (polls every 1 ms when ``gilknocker`` is installed).  Off.
- ``distributed.worker.memory.monitor-interval`` (100 ms): "Interval between checks
  for the spill, pause, and terminate thresholds" (worker and nanny): each second.
- ``distributed.worker.memory.target``, ``spill`` and ``pause`` (0.6, 0.7, 0.8 of
  the worker's memory limit): when to spill Dask's data to disk and when to stop
  starting tasks, by the worker process's resident set.  A stage's arrays are not
  Dask data (a result is a few kB), so there is nothing to spill, and a worker
  whose glibc keeps freed memory (below) stays at its high-water mark between
  tasks: paused there, it would never resume.  Off (``False``): the worker then
  runs no memory monitor at all.
- ``distributed.worker.memory.terminate`` (0.95, Dask's own, stated): the nanny
  restarts its worker process above 95 % of the memory limit, checked each
  second.  The kept heap is reused by the next task, so it stays at the tasks'
  peak, and reaches the threshold only where a task's peak does; a runaway task
  still is stopped there (the scheduler then runs it again, ``allowed-failures``
  times, and the service sees a crashed worker).
- ``distributed.nanny.pre-spawn-environ``: "Environment variables to set on all
  worker processes started by nannies ... before spawning".  Dask sets
  ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` to 1 and
  ``MALLOC_TRIM_THRESHOLD_`` to 64 kiB there; ``None`` unsets them, so that a Dask
  worker inherits its nanny's environment as a local pool worker inherits the
  daemon's: the same BLAS threads in both.  With ``[workers] keep_freed_memory``
  (the default; :func:`service_settings`) it sets glibc's variables instead
  (:data:`~livestream.scheduling.allocator.KEEP_FREED_MEMORY_ENV`): the worker's
  ``malloc`` keeps freed memory for the next task, as the pool worker's does.
  ``OMP_WAIT_POLICY`` is set to ``PASSIVE``, as in a local pool worker
  (:mod:`livestream.scheduling.openmp`): libgomp's idle threads sleep, not spin.

The worker's heartbeat (every 0.5 s with up to 10 workers) is set by the scheduler
in its reply to each heartbeat and has no configuration key: the schedulers the
service starts are of its own class,
:class:`~livestream.scheduling.dask_scheduler.ServiceScheduler`, whose reply says
5 s (:func:`local_cluster` here; the Slurm cluster in
:mod:`livestream.scheduling.clusters`).

:func:`dask_settings` applies the settings around the construction of a client, a
scheduler and its nannies (they read them when they start; a nanny hands its
configuration to the worker processes it starts and restarts).  Workers that start
elsewhere read them from the environment: :func:`dask_environment` gives the
``DASK_*`` variables, which the Slurm job script exports
(:mod:`livestream.scheduling.clusters`) and which an operator exports before
``dask worker`` for a cluster given by address.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from livestream.scheduling.allocator import KEEP_FREED_MEMORY_ENV

__all__ = [
    "DASK_SETTINGS",
    "dask_environment",
    "dask_settings",
    "local_cluster",
    "service_settings",
]

_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
_LOOPBACK = "127.0.0.1"
_QUIET = 40  # logging.ERROR: Dask's info and warnings about its own start and stop

DASK_SETTINGS: Mapping[str, object] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": 0.95,
    _PRE_SPAWN: {
        "MALLOC_TRIM_THRESHOLD_": None,
        "OMP_NUM_THREADS": None,
        "MKL_NUM_THREADS": None,
        "OPENBLAS_NUM_THREADS": None,
        "OMP_WAIT_POLICY": "PASSIVE",
    },
}


def service_settings(*, keep_freed_memory: bool = True) -> dict[str, object]:
    """:data:`DASK_SETTINGS`, and with ``keep_freed_memory`` (``[workers]
    keep_freed_memory``) glibc's variables that make each worker process keep
    freed memory, in the environment its nanny starts it with."""
    settings = dict(DASK_SETTINGS)
    if keep_freed_memory:
        environ = DASK_SETTINGS[_PRE_SPAWN]
        assert isinstance(environ, Mapping)
        settings[_PRE_SPAWN] = {**environ, **KEEP_FREED_MEMORY_ENV}
    return settings


def require_distributed() -> Any:
    """``dask.distributed``, or a RuntimeError saying how to install it."""
    try:
        import distributed
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "a Dask cluster is configured but dask.distributed is not installed: "
            "pip install 'livestream[dask]'"
        ) from exc
    return distributed


def _require_dask() -> Any:
    # distributed adds its defaults to Dask's configuration when first imported:
    # inside dask_settings, leaving the block would take them out again
    require_distributed()
    import dask.config

    return dask.config


@contextlib.contextmanager
def dask_settings(*, keep_freed_memory: bool = True) -> Iterator[None]:
    """:func:`service_settings` in Dask's configuration while the block runs."""
    settings = service_settings(keep_freed_memory=keep_freed_memory)
    with _require_dask().set(settings):
        yield


def dask_environment(*, keep_freed_memory: bool = True) -> dict[str, str]:
    """:func:`service_settings` as the ``DASK_*`` variables Dask reads when it
    starts.

    Dask lower-cases the name, reads ``__`` as a nesting level and each value with
    ``ast.literal_eval`` (a string that is no Python literal stays a string).
    """
    settings = service_settings(keep_freed_memory=keep_freed_memory)
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): _literal(value)
        for key, value in settings.items()
    }


def _literal(value: object) -> str:
    """``value`` as a Python literal, strings in double quotes (a shell's single
    quotes then need no escapes); a top-level string as itself."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))}: {_inner(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def _inner(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else _literal(value)


@contextlib.asynccontextmanager
async def local_cluster(
    n_workers: int,
    *,
    processes: bool = True,
    scheduler_cls: Any = None,
    keep_freed_memory: bool = True,
    memory_limit: int = 0,
) -> AsyncIterator[Any]:
    """A local cluster as the service would run one, for the benchmark and the tests:
    a :class:`~livestream.scheduling.dask_scheduler.ServiceScheduler` (or
    ``scheduler_cls``: the benchmark compares Dask's own) and ``n_workers`` workers
    of one thread each, under :data:`DASK_SETTINGS`, on the loopback interface, no
    dashboard.  Each worker is a process with its nanny (``processes``, as ``dask
    worker`` starts them) or a thread of this process; ``memory_limit`` (bytes,
    each) instead of the node's memory shared among them.

    It is Dask's ``SpecCluster`` (what ``LocalCluster`` builds, whose scheduler class
    is fixed), given the scheduler class and the worker options.  A nanny sets its
    worker's glibc variables in its own process's environment before it starts the
    worker (Dask's way); here that is this process, whose environment gets them
    back as they were when the cluster closes."""
    environ = {name: os.environ.get(name) for name in KEEP_FREED_MEMORY_ENV}
    try:
        async with _local_cluster(
            n_workers, processes, scheduler_cls, keep_freed_memory, memory_limit
        ) as cluster:
            yield cluster
    finally:
        for name, value in environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def _local_cluster(
    n_workers: int,
    processes: bool,
    scheduler_cls: Any,
    keep_freed_memory: bool,
    memory_limit: int,
) -> AsyncIterator[Any]:
    with dask_settings(keep_freed_memory=keep_freed_memory):
        import distributed  # optional: the [dask] extra, imported by dask_settings
        import distributed.system

        # deferred: it subclasses distributed's Scheduler; distributed is optional
        from livestream.scheduling.dask_scheduler import ServiceScheduler

        scheduler = {
            "cls": scheduler_cls or ServiceScheduler,
            "options": {
                "host": _LOOPBACK,
                "port": 0,
                # no dashboard; the scheduler's HTTP routes (/metrics, /health) on
                # a free port, not on 8787, which another cluster may hold
                "dashboard": False,
                "dashboard_address": ":0",
            },
        }
        worker = {
            "cls": distributed.Nanny if processes else distributed.Worker,
            "options": {
                "host": _LOOPBACK,
                "nthreads": 1,
                # the node's memory shared among the workers, as LocalCluster
                # does (or memory_limit bytes each)
                "memory_limit": memory_limit
                or distributed.system.MEMORY_LIMIT // n_workers,
                "dashboard": False,
                "silence_logs": _QUIET,
            },
        }
        cluster = distributed.SpecCluster(  # type: ignore[no-untyped-call]
            scheduler=scheduler,
            workers=dict.fromkeys(range(n_workers), worker),
            asynchronous=True,
            silence_logs=_QUIET,
        )
        async with cluster:
            yield cluster
