"""Dask clusters the service can own: Slurm batch jobs through dask-jobqueue.

The stages go to the workers as a :class:`~livestream.stages.task.StageTask` (paths
and parameters, a few kB) and come back as a ``StageResult`` (paths and figures):
movies, micrographs and particle stacks are read and written by the workers on the
shared file system and never travel through the scheduler.

``slurm_job_kwargs`` is the one translation from ``[workers.slurm]`` to
dask-jobqueue's arguments; the service (:func:`start_slurm_cluster`) and
``livestream slurm-script`` (:func:`slurm_job_script`) both use it, so the script a
facility reviews is the one the service submits.  The job script exports Dask's
settings for the service (:mod:`livestream.scheduling.dask_settings`) before it
starts the nanny and its workers; the scheduler in the service's process is made
under the same settings, of the service's class (a slower worker heartbeat,
:mod:`livestream.scheduling.dask_scheduler`).
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from livestream.config import SlurmConfig
from livestream.scheduling.dask_settings import dask_environment, dask_settings

__all__ = [
    "slurm_cluster_kwargs",
    "slurm_job_kwargs",
    "slurm_job_script",
    "start_slurm_cluster",
]

# dask-jobqueue starts each worker with this many threads; the stages run one at a
# time per worker process and parallelise inside (FFT workers, numba).
THREADS_PER_WORKER = 1


def _jobqueue() -> Any:
    try:
        import dask_jobqueue
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "a [workers.slurm] table is set but dask-jobqueue is not installed: "
            "pip install 'livestream[dask]'"
        ) from exc
    return dask_jobqueue


def slurm_job_kwargs(
    config: SlurmConfig, *, keep_freed_memory: bool = True
) -> dict[str, Any]:
    """dask-jobqueue's ``SLURMCluster``/``SLURMJob`` arguments for ``config``; with
    ``keep_freed_memory`` (``[workers] keep_freed_memory``) the nannies start their
    workers with glibc keeping freed memory."""
    kwargs: dict[str, Any] = {
        # dask-jobqueue gives each worker cores // processes threads (concurrent
        # stages); one stage at a time per worker process, which parallelises
        # inside with the job's other cores: cores = processes, --cpus-per-task
        # from job_cpu
        "cores": config.processes * THREADS_PER_WORKER,
        "job_cpu": config.cores,
        "processes": config.processes,
        "memory": config.memory,
        "walltime": config.walltime,
        "python": config.python or sys.executable,
        "job_extra_directives": list(config.job_extra_directives),
        # Dask's settings first, so that a facility's own prologue may override them
        "job_script_prologue": [
            f"export {name}={shlex.quote(value)}"
            for name, value in dask_environment(
                keep_freed_memory=keep_freed_memory
            ).items()
        ]
        + list(config.job_script_prologue),
        "job_name": "livestream-worker",
    }
    if config.queue:
        kwargs["queue"] = config.queue
    if config.account:
        kwargs["account"] = config.account
    if config.local_directory:
        kwargs["local_directory"] = config.local_directory
    if config.interface:
        kwargs["interface"] = config.interface
    return kwargs


def slurm_job_script(
    config: SlurmConfig, scheduler_address: str, *, keep_freed_memory: bool = True
) -> str:
    """The batch script one worker job runs (what ``sbatch`` is given)."""
    job = _jobqueue().slurm.SLURMJob(
        scheduler=scheduler_address,
        name="livestream-worker",
        **slurm_job_kwargs(config, keep_freed_memory=keep_freed_memory),
    )
    script: str = job.job_script()
    return script


def slurm_cluster_kwargs(
    config: SlurmConfig, *, keep_freed_memory: bool = True
) -> dict[str, Any]:
    """dask-jobqueue's ``SLURMCluster`` arguments for ``config``: the job's
    (:func:`slurm_job_kwargs`) and the scheduler's class, the service's
    (:class:`~livestream.scheduling.dask_scheduler.ServiceScheduler`: the workers
    heartbeat every few seconds, not twice a second)."""
    _jobqueue()  # the install hint before distributed's ImportError
    # deferred: it subclasses distributed's Scheduler; distributed is optional
    from livestream.scheduling.dask_scheduler import ServiceScheduler

    job = slurm_job_kwargs(config, keep_freed_memory=keep_freed_memory)
    return {**job, "scheduler_cls": ServiceScheduler}


async def start_slurm_cluster(config: SlurmConfig, *, keep_freed_memory: bool) -> Any:
    """A running ``SLURMCluster`` (asynchronous) scaled to ``config.jobs`` jobs."""
    kwargs = slurm_cluster_kwargs(config, keep_freed_memory=keep_freed_memory)
    # the scheduler reads them when it starts
    with dask_settings(keep_freed_memory=keep_freed_memory):
        cluster = await _jobqueue().SLURMCluster(asynchronous=True, **kwargs)
    cluster.scale(jobs=config.jobs)
    return cluster
