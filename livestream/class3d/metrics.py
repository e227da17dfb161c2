"""Prometheus metrics of the online 3D initial model and of the refinements of its
map (``livestream_class3d_*``).

Created by :class:`livestream.telemetry.metrics.ServiceMetrics` on its own
registry, so every series exists (gauges at 0, the resolution at NaN, every error
label at 0) in the first scrape, before the model has started.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CLASS3D_OPERATIONS", "REFINE_STATUSES", "Class3dMetrics"]

# the step that failed, the label of livestream_class3d_errors_total
CLASS3D_OPERATIONS = ("resume", "feed", "step", "snapshot", "checkpoint")
# how a refinement ended, the label of livestream_class3d_refinements_total
REFINE_STATUSES = ("done", "abandoned", "failed")
# one mini-batch: a fraction of a second at box 32, minutes at box 128
_MINIBATCH_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Class3dMetrics:
    """Gauges and counters of one service's initial model (docs/operations.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._iteration = Gauge(
            "livestream_class3d_iteration",
            "Mini-batches the online 3D initial model has run (survives restarts).",
            registry=r,
        )
        self._seen = Gauge(
            "livestream_class3d_particles_seen",
            "Distinct selected particles used in at least one 3D mini-batch.",
            registry=r,
        )
        self._pool = Gauge(
            "livestream_class3d_pool_particles",
            "Particles of the selected 2D classes in the 3D pool.",
            registry=r,
        )
        self._start = Gauge(
            "livestream_class3d_start_particles",
            "Pool size at which the initial model starts ([class3d] start_particles).",
            registry=r,
        )
        self._resolution = Gauge(
            "livestream_class3d_resolution_angstrom",
            "Best class's half-set FSC = 0.143 resolution in the latest snapshot "
            "(an optimistic progress figure; NaN: none yet).",
            registry=r,
        )
        self._resolution.set(math.nan)
        self._fractions = Gauge(
            "livestream_class3d_class_fraction",
            "Share of the particles in each 3D class (latest snapshot).",
            ["class_number"],
            registry=r,
        )
        self._fractions.labels(class_number="1")  # 0 until the first snapshot
        self._coverage = Gauge(
            "livestream_class3d_orientation_coverage_ratio",
            "Fraction of 100 evenly spread viewing directions with an assigned "
            "particle (latest snapshot).",
            registry=r,
        )
        self._last_minibatch = Gauge(
            "livestream_class3d_last_minibatch_timestamp_seconds",
            "Unix time of the latest 3D mini-batch (0: none yet).",
            registry=r,
        )
        self._last_snapshot = Gauge(
            "livestream_class3d_last_snapshot_timestamp_seconds",
            "Unix time of the latest 3D snapshot (0: none yet).",
            registry=r,
        )
        self._duration = Histogram(
            "livestream_class3d_minibatch_duration_seconds",
            "Wall time of one 3D mini-batch.",
            buckets=_MINIBATCH_BUCKETS_S,
            registry=r,
        )
        self._snapshots = Counter(
            "livestream_class3d_snapshots",
            "3D snapshots written (maps, slices, class3d event).",
            registry=r,
        )
        self._errors = Counter(
            "livestream_class3d_errors",
            "Initial-model errors (logged with file, field and value), by operation.",
            ["operation"],
            registry=r,
        )
        for operation in CLASS3D_OPERATIONS:
            self._errors.labels(operation=operation)
        self._refine_resolution = Gauge(
            "livestream_class3d_refine_resolution_angstrom",
            "Half-map FSC = 0.143 resolution of the newest finished refinement of "
            "the 3D map (NaN: none yet).",
            registry=r,
        )
        self._refine_resolution.set(math.nan)
        self._refine_particles = Gauge(
            "livestream_class3d_refine_particles",
            "Particles in the newest finished refinement of the 3D map.",
            registry=r,
        )
        self._refine_seconds = Gauge(
            "livestream_class3d_refine_duration_seconds",
            "Wall time of the newest refinement of the 3D map (finished or not).",
            registry=r,
        )
        self._refinements = Counter(
            "livestream_class3d_refinements",
            "Refinements of the 3D map, by how they ended (done; abandoned at the "
            "drain time limit; failed).",
            ["status"],
            registry=r,
        )
        for status in REFINE_STATUSES:
            self._refinements.labels(status=status)

    def start_particles(self, count: int) -> None:
        self._start.set(count)

    def progress(
        self, *, iteration: int, particles_seen: int, pool_particles: int
    ) -> None:
        self._iteration.set(iteration)
        self._seen.set(particles_seen)
        self._pool.set(pool_particles)

    def minibatch(self, seconds: float) -> None:
        self._duration.observe(seconds)
        self._last_minibatch.set(time.time())

    def snapshot(self, payload: Mapping[str, Any]) -> None:
        """A snapshot's ``class3d`` event body (docs/live3d.md)."""
        self._iteration.set(int(payload["iteration"]))
        self._seen.set(int(payload["particles_seen"]))
        self._pool.set(int(payload["pool_particles"]))
        self._resolution.set(float(payload["resolution_a"]))
        for k, fraction in enumerate(payload["class_fractions"], start=1):
            self._fractions.labels(class_number=str(k)).set(float(fraction))
        self._coverage.set(float(payload["orientation_coverage"]))
        self._last_snapshot.set(time.time())
        self._snapshots.inc()

    def refine(self, payload: Mapping[str, Any]) -> None:
        """A ``refine3d`` event body (docs/live3d.md); a rebalance's is not
        counted here."""
        if payload.get("step") != "refine":
            return
        status = str(payload["status"])
        if status not in REFINE_STATUSES:
            raise ValueError(f"refine3d status {status!r} not in {REFINE_STATUSES}")
        self._refinements.labels(status=status).inc()
        self._refine_seconds.set(float(payload["seconds"]))
        if status == "done":
            self._refine_resolution.set(float(payload["resolution_a"]))
            self._refine_particles.set(int(payload["n_particles"]))

    def error(self, operation: str) -> None:
        if operation not in CLASS3D_OPERATIONS:
            raise ValueError(
                f"class3d error operation {operation!r} not in {CLASS3D_OPERATIONS}"
            )
        self._errors.labels(operation=operation).inc()
