"""The Dask scheduler the service starts: Dask's, with a slower worker heartbeat.

Each worker sends the scheduler a heartbeat (its memory, CPU, bandwidth and the
durations of its running tasks, for the dashboard and for Dask's data placement)
and takes the interval of the next one from the scheduler's reply:
``Scheduler.heartbeat_worker`` returns ``"heartbeat-interval"``, 0.5 s for up to 10
workers, 1 s below 50, 2 s below 200 (``distributed.scheduler.heartbeat_interval``),
and ``Worker.heartbeat`` sets its periodic callback to it.  There is no
configuration key for it.  Two messages a second, with the worker's metrics
gathered and the scheduler's bookkeeping, are about half of what an idle worker,
nanny and scheduler still burn under :data:`~livestream.scheduling.dask_settings.
DASK_SETTINGS` (docs/scaling.md); the service's stages
take seconds to a minute, so its scheduler needs none of that resolution.

:class:`ServiceScheduler` replies with at least :data:`WORKER_HEARTBEAT_S` instead
(Dask's own value when that is longer, in clusters of hundreds of workers).  What
the heartbeat does not do is unaffected: a worker process that dies closes its
connection to the scheduler, which takes its tasks back at once (the nanny starts
a new one); a worker that hangs is removed after ``distributed.scheduler.
worker-ttl`` (5 minutes by default; Dask takes at least ten of its own heartbeat
intervals, this class ten of its own, 50 s); a paused or closing worker tells the
scheduler on its stream at once.  What becomes coarser is what the scheduler knows
between heartbeats: a worker's memory and CPU figures (dashboard, Prometheus) are
up to :data:`WORKER_HEARTBEAT_S` old.

It also checks ``distributed.scheduler.idle-timeout`` and ``no-workers-timeout``
(both unset by default; minutes when set) every :data:`TIMEOUT_CHECK_S`, not every
250 ms: with the heartbeat, that halves the wake-ups of an idle scheduler.

The class is given to Dask where it takes a scheduler class: a ``SpecCluster``'s
scheduler spec (:func:`~livestream.scheduling.dask_settings.local_cluster`) and
dask-jobqueue's ``scheduler_cls`` (:func:`~livestream.scheduling.clusters.
start_slurm_cluster`).  A scheduler an operator starts (``dask scheduler``, a
cluster given by address) is Dask's own and keeps Dask's interval.
"""

from __future__ import annotations

from typing import Any

import distributed

__all__ = ["TIMEOUT_CHECK_S", "WORKER_HEARTBEAT_S", "ServiceScheduler"]

WORKER_HEARTBEAT_S = 5.0
TIMEOUT_CHECK_S = 1.0
# the scheduler's checks of distributed.scheduler.idle-timeout (it also records
# since when the cluster is idle) and no-workers-timeout, both unset by default;
# Dask runs each every 250 ms (Scheduler.__init__, no configuration key)
_TIMEOUT_CHECKS = ("idle-timeout", "no-workers-timeout")


class ServiceScheduler(distributed.Scheduler):
    """Dask's scheduler whose workers heartbeat every :data:`WORKER_HEARTBEAT_S`
    seconds at least, and whose idle and no-worker checks run every
    :data:`TIMEOUT_CHECK_S` seconds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in _TIMEOUT_CHECKS:
            self.periodic_callbacks[name].callback_time = TIMEOUT_CHECK_S * 1000
        if self.worker_ttl:
            # Dask removes a worker silent for worker-ttl, but at least ten of its
            # own heartbeat intervals: ten of the service's
            self.worker_ttl = max(self.worker_ttl, 10 * WORKER_HEARTBEAT_S)

    def heartbeat_worker(self, **kwargs: Any) -> dict[str, Any]:
        # the scheduler's handler table holds this bound method, so the reply to
        # every worker's heartbeat (and to its registration) passes here
        reply: dict[str, Any] = super().heartbeat_worker(**kwargs)
        if "heartbeat-interval" in reply:  # not in {"status": "missing"}
            reply["heartbeat-interval"] = max(
                reply["heartbeat-interval"], WORKER_HEARTBEAT_S
            )
        return reply
