"""The service's Dask settings reach the workers, and a Dask worker runs a stage with
the same threads as a local pool worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from livestream.scheduling.allocator import KEEP_FREED_MEMORY_ENV
from livestream.scheduling.dask_settings import (
    DASK_SETTINGS,
    dask_environment,
    local_cluster,
    service_settings,
)
from livestream.scheduling.executors import DaskExecutor, LocalExecutor
from tests.livestream.scheduling.heartbeats import settled_heartbeats

distributed = pytest.importorskip("distributed")


def thread_settings(_: object = None) -> dict[str, Any]:
    """What decides a stage's threads in this process."""
    import numba
    import scipy.fft
    import threadpoolctl

    return {
        "numba": numba.get_num_threads(),
        "blas": sorted(
            (info["internal_api"], info["num_threads"])
            for info in threadpoolctl.threadpool_info()
        ),
        "fft": scipy.fft.get_workers(),
        "env": {
            name: os.environ.get(name)
            for name in (
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "NUMBA_NUM_THREADS",
                "OMP_WAIT_POLICY",
            )
        },
        "malloc_env": {name: os.environ.get(name) for name in KEEP_FREED_MEMORY_ENV},
    }


def background_of(dask_worker: Any) -> dict[str, Any]:
    """The worker's periodic callbacks that the settings change, as it runs them."""
    import dask

    callbacks = dask_worker.periodic_callbacks
    return {
        "profile": "profile" in callbacks or "profile-cycle" in callbacks,
        "tick_ms": callbacks["tick"].callback_time,
        "monitor_ms": callbacks["monitor"].callback_time,
        # no spill and no pause: the worker runs no memory monitor
        "memory_monitor": "memory_monitor" in callbacks,
        "pause": dask_worker.memory_manager.memory_pause_fraction,
        "config": {key: dask.config.get(key) for key in DASK_SETTINGS},
    }


def nanny_memory_guard(dask_worker: Any) -> tuple[float, float]:
    """The nanny's (``dask_worker`` is the nanny) terminate threshold and how often
    it checks it, in ms."""
    memory = dask_worker.memory_manager
    interval = dask_worker.periodic_callbacks["memory_monitor"].callback_time
    return memory.memory_terminate_fraction, interval


@pytest.mark.slow  # two kinds of worker process import numba and scipy
async def test_the_workers_run_under_the_service_settings_with_the_pools_threads() -> (
    None
):
    local = LocalExecutor(1, "forkserver")
    try:
        pool_threads = await local.run(thread_settings, None)
    finally:
        await local.close(cancel=False)

    async with local_cluster(1) as cluster:
        executor = await DaskExecutor.connect(cluster.scheduler_address)
        try:
            dask_threads = await executor.run(thread_settings, None)
            client = executor._client
            (background,) = (await client.run(background_of)).values()
            (guard,) = (await client.run(nanny_memory_guard, nanny=True)).values()
        finally:
            await executor.close(cancel=False)

    # the pool worker keeps freed memory by mallopt, the Dask worker by glibc's
    # variables (test_allocator.py checks both by behaviour)
    assert dask_threads.pop("malloc_env") == KEEP_FREED_MEMORY_ENV
    assert set(pool_threads.pop("malloc_env").values()) == {None}
    assert dask_threads == pool_threads
    assert pool_threads["env"]["OPENBLAS_NUM_THREADS"] is None  # Dask's cap is gone
    assert pool_threads["env"]["OMP_WAIT_POLICY"] == "PASSIVE"  # idle threads sleep
    assert background == {
        "profile": False,  # no profiler sampling the stage's threads
        "tick_ms": 1000,
        "monitor_ms": 5000,
        "memory_monitor": False,
        "pause": False,  # a kept heap (test_allocator.py) would never unpause
        "config": service_settings(),
    }
    assert guard == (0.95, 1000)  # the nanny still restarts a runaway worker


async def test_the_workers_heartbeat_at_the_services_interval() -> None:
    """The worker takes its heartbeat interval from the scheduler's replies: Dask's
    scheduler says 0.5 s for up to 10 workers, the service's says 5 s.  The
    scheduler checks its timeouts every second, not every 250 ms."""
    from distributed.scheduler import heartbeat_interval

    from livestream.scheduling.dask_scheduler import (
        TIMEOUT_CHECK_S,
        WORKER_HEARTBEAT_S,
        ServiceScheduler,
    )

    assert heartbeat_interval(1) == 0.5  # Dask's, which the check below would see
    async with local_cluster(1) as cluster:
        assert type(cluster.scheduler) is ServiceScheduler
        callbacks = cluster.scheduler.periodic_callbacks
        assert TIMEOUT_CHECK_S == 1.0
        assert callbacks["idle-timeout"].callback_time == 1000
        assert callbacks["no-workers-timeout"].callback_time == 1000
        assert cluster.scheduler.worker_ttl == 300  # Dask's default, above 10 x 5 s
        client = await distributed.Client(cluster, asynchronous=True)
        try:
            intervals = await settled_heartbeats(client)
        finally:
            await client.close()
    assert list(intervals.values()) == [WORKER_HEARTBEAT_S * 1000]
    assert WORKER_HEARTBEAT_S == 5.0


async def test_a_short_worker_ttl_is_ten_heartbeats_at_least() -> None:
    """Dask removes a worker silent for ``worker-ttl`` but keeps ten of its own
    heartbeat intervals at least; the service's scheduler keeps ten of its own."""
    from livestream.scheduling.dask_scheduler import (
        WORKER_HEARTBEAT_S,
        ServiceScheduler,
    )

    async with ServiceScheduler(worker_ttl="10s", dashboard=False) as scheduler:
        assert scheduler.worker_ttl == 10 * WORKER_HEARTBEAT_S
    async with ServiceScheduler(worker_ttl="2h", dashboard=False) as scheduler:
        assert scheduler.worker_ttl == 7200


def test_the_environment_gives_a_worker_started_elsewhere_the_same_settings() -> None:
    """What a Slurm job exports is read back by Dask as the same configuration."""
    code = (
        "import json, dask, distributed\n"
        "from livestream.scheduling.dask_settings import DASK_SETTINGS\n"
        "print(json.dumps({k: dask.config.get(k) for k in DASK_SETTINGS}))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    for keep_freed in (True, False):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**environ, **dask_environment(keep_freed_memory=keep_freed)},
            capture_output=True,
            text=True,
            check=True,
        )
        settings = service_settings(keep_freed_memory=keep_freed)
        assert json.loads(out.stdout) == settings
    # the nannies start their workers with glibc's variables only with the setting
    pre_spawn = "distributed.nanny.pre-spawn-environ"
    assert service_settings()[pre_spawn] == {
        **DASK_SETTINGS[pre_spawn],  # type: ignore[dict-item]
        **KEEP_FREED_MEMORY_ENV,
    }
    assert service_settings(keep_freed_memory=False) == dict(DASK_SETTINGS)
    # Dask's defaults differ from every setting: the check above could fail
    import dask.config

    (defaults,) = (d["distributed"] for d in dask.config.defaults if "distributed" in d)
    assert defaults["worker"]["profile"]["enabled"] is True
    assert defaults["admin"]["tick"]["interval"] == "20ms"
    assert defaults["nanny"]["pre-spawn-environ"]["OMP_NUM_THREADS"] == 1
    assert defaults["worker"]["memory"]["pause"] == 0.8
