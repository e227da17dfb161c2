"""Prometheus metrics of the online 2D classifier (``livestream_class2d_*``).

Created by :class:`livestream.telemetry.metrics.ServiceMetrics` on its own registry, so every
series exists (gauges at 0, the resolution at NaN, every error label at 0) in the
first scrape, before the classifier has run, and dashboards and alerts work from
the start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CLASS2D_OPERATIONS", "Class2dMetrics"]

# the step that failed, the label of livestream_class2d_errors_total
CLASS2D_OPERATIONS = ("resume", "feed", "step", "snapshot", "checkpoint")
# one mini-batch: a few ms for a test box, minutes for 10 000 particles at box 256
_MINIBATCH_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Class2dMetrics:
    """Gauges and counters of one service's classifier (see docs/operations.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._iteration = Gauge(
            "livestream_class2d_iteration",
            "Mini-batches the online 2D classifier has run (survives restarts).",
            registry=r,
        )
        self._seen = Gauge(
            "livestream_class2d_particles_seen",
            "Distinct particles used in at least one mini-batch.",
            registry=r,
        )
        self._pool = Gauge(
            "livestream_class2d_pool_particles",
            "Particles in the classifier's pool.",
            registry=r,
        )
        self._active = Gauge(
            "livestream_class2d_active_classes",
            "Classes with particles in the latest snapshot.",
            registry=r,
        )
        self._selected = Gauge(
            "livestream_class2d_selected_classes",
            "Classes the ranker selected in the latest snapshot.",
            registry=r,
        )
        self._resolution = Gauge(
            "livestream_class2d_resolution_angstrom",
            "Best half-set FSC resolution of a class in the latest snapshot "
            "(NaN: none yet).",
            registry=r,
        )
        self._resolution.set(math.nan)
        self._last_snapshot = Gauge(
            "livestream_class2d_last_snapshot_timestamp_seconds",
            "Unix time of the latest snapshot (0: none yet).",
            registry=r,
        )
        self._duration = Histogram(
            "livestream_class2d_minibatch_duration_seconds",
            "Wall time of one mini-batch.",
            buckets=_MINIBATCH_BUCKETS_S,
            registry=r,
        )
        self._snapshots = Counter(
            "livestream_class2d_snapshots",
            "Snapshots written (class averages, montage, class2d event).",
            registry=r,
        )
        self._errors = Counter(
            "livestream_class2d_errors",
            "Classifier errors (logged with file, field and value), by operation.",
            ["operation"],
            registry=r,
        )
        for operation in CLASS2D_OPERATIONS:
            self._errors.labels(operation=operation)

    def progress(
        self, *, iteration: int, particles_seen: int, pool_particles: int
    ) -> None:
        self._iteration.set(iteration)
        self._seen.set(particles_seen)
        self._pool.set(pool_particles)

    def minibatch(self, seconds: float) -> None:
        self._duration.observe(seconds)

    def snapshot(self, payload: Mapping[str, Any]) -> None:
        """A snapshot's ``class2d`` event body (docs/class2d.md)."""
        self._iteration.set(int(payload["iteration"]))
        self._seen.set(int(payload["particles_seen"]))
        self._active.set(int(payload["active_classes"]))
        self._selected.set(len(payload["selected_classes"]))
        resolution = payload.get("resolution_a")
        self._resolution.set(math.nan if resolution is None else float(resolution))
        self._last_snapshot.set(time.time())
        self._snapshots.inc()

    def error(self, operation: str) -> None:
        if operation not in CLASS2D_OPERATIONS:
            raise ValueError(
                f"class2d error operation {operation!r} not in {CLASS2D_OPERATIONS}"
            )
        self._errors.labels(operation=operation).inc()
