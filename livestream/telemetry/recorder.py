"""What the service did, as Prometheus metrics: the service's collectors
(:class:`~livestream.telemetry.metrics.ServiceMetrics`, with the classifier's) and
curation's (:class:`~livestream.curation.metrics.CurationMetrics`) on one registry,
served on ``/metrics``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from livestream.config import MetricsConfig
from livestream.curation.metrics import CurationMetrics
from livestream.ledger.schema import StageResult
from livestream.telemetry.metrics import ServiceMetrics

__all__ = ["MetricsRecorder"]

log = logging.getLogger(__name__)


class MetricsRecorder:
    """Turns the service's facts into metric updates; ``address`` is where
    ``/metrics`` is served (None: not served)."""

    def __init__(
        self, metrics: ServiceMetrics, *, address: tuple[str, int] | None = None
    ) -> None:
        self.metrics = metrics
        self.address = address
        self._curation = CurationMetrics(metrics.registry)

    @classmethod
    def serve(
        cls, config: MetricsConfig, *, any_port_if_busy: bool = False
    ) -> MetricsRecorder:
        """New metrics served on ``config``'s host and port (any free port if
        that one is busy and ``any_port_if_busy``)."""
        metrics = ServiceMetrics()
        host, port = config.host, config.port
        try:
            address = metrics.start_http_server(host, port)
        except OSError as exc:
            if not any_port_if_busy:
                raise OSError(
                    f"key 'metrics.port': cannot serve on {host}:{port}: {exc}"
                ) from exc
            log.warning("metrics port %d is busy (%s): using any free port", port, exc)
            address = metrics.start_http_server(host, 0)
        return cls(metrics, address=address)

    def close(self) -> None:
        """Stop serving ``/metrics``."""
        self.metrics.stop_http_server()

    def declare_stages(self, stages: Iterable[str]) -> None:
        """Every stage's series at 0, so failure-rate alerts work at once."""
        self.metrics.declare_stages(stages)

    # -- exposures and stages ------------------------------------------------------
    def exposure_discovered(self) -> None:
        self.metrics.exposure_discovered()
        self.metrics.newest_exposure_seen(datetime.now(UTC))

    def exposure_ready(self) -> None:
        self.metrics.exposure_ready()

    def intake_reexamined(self) -> None:
        self.metrics.intake_reexamined()

    def stage_finished(
        self, stage: str, state: str, seconds: float, result: StageResult | None
    ) -> None:
        self.metrics.stage_finished(stage, state, seconds)
        if result is None:
            return
        figures = result.figures
        if "total_motion_a" in figures:
            self.metrics.observe_motion(figures["total_motion_a"])
        if {"defocus_a", "fit_resolution_a"} <= figures.keys():
            self.metrics.observe_ctf(figures["defocus_a"], figures["fit_resolution_a"])
        if "n_particles" in figures:
            self.metrics.particles_extracted(int(figures["n_particles"]))
        self._curation.observe(result)

    def exposure_done(self, now: datetime) -> None:
        # a quarantined exposure was processed too: processing is not stalled
        self.metrics.exposure_done(now)

    # -- curation --------------------------------------------------------------------
    def curation_state(
        self, accepted: int, rejected: int, reasons: Mapping[str, int]
    ) -> None:
        self._curation.set_current(accepted, rejected, reasons)

    def curation_reevaluated(
        self, version: int, newly_accepted: int, newly_rejected: int
    ) -> None:
        self._curation.observe_reevaluation(version, newly_accepted, newly_rejected)

    # -- online 2D classification ------------------------------------------------
    def class2d_progress(
        self, iteration: int, particles_seen: int, pool: int, seconds: float | None
    ) -> None:
        self.metrics.class2d.progress(
            iteration=iteration, particles_seen=particles_seen, pool_particles=pool
        )
        if seconds is not None:
            self.metrics.class2d.minibatch(seconds)

    def class2d_snapshot(self, payload: Mapping[str, Any]) -> None:
        self.metrics.class2d.snapshot(payload)

    def class2d_error(self, operation: str) -> None:
        self.metrics.class2d.error(operation)

    # -- online 3D initial model ---------------------------------------------------
    def class3d_progress(
        self, iteration: int, particles_seen: int, pool: int, seconds: float | None
    ) -> None:
        self.metrics.class3d.progress(
            iteration=iteration, particles_seen=particles_seen, pool_particles=pool
        )
        if seconds is not None:
            self.metrics.class3d.minibatch(seconds)

    def class3d_snapshot(self, payload: Mapping[str, Any]) -> None:
        self.metrics.class3d.snapshot(payload)

    def class3d_error(self, operation: str) -> None:
        self.metrics.class3d.error(operation)

    def refine3d(self, payload: Mapping[str, Any]) -> None:
        self.metrics.class3d.refine(payload)

    def templates_version(self, version: int) -> None:
        self.metrics.set_templates_version(version)

    def templates_rejected(self) -> None:
        self.metrics.count_templates_rejected()

    # -- service state -------------------------------------------------------------
    def set_queue(self, depth: int, in_flight: int) -> None:
        self.metrics.set_queue(depth, in_flight)

    def set_workers(self, n: int) -> None:
        self.metrics.set_workers(n)

    def summary(self, exposures_per_hour: float, project: Path) -> None:
        """The periodic gauges: throughput and the project's disk."""
        self.metrics.set_exposures_per_hour(exposures_per_hour)
        usage = shutil.disk_usage(project)
        self.metrics.set_project_disk(usage.free, usage.total)
