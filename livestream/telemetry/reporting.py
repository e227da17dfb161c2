"""The one front through which the service core (intake, scheduler, curation, the
online classifier) reports what happened.

Each fact goes to every sink that wants it: the :class:`Broadcaster` (in-process
listeners and MQTT), the :class:`MetricsRecorder` (Prometheus) and the systemd
:class:`Notifier` (STATUS).  The daemon builds the sinks and holds them for what is
theirs alone (the metrics server, READY/WATCHDOG/STOPPING, the MQTT feed); the core
sees only this narrow, non-blocking interface.  The event records
(:class:`ServiceEvent`, :class:`EventType`) are defined in
:mod:`livestream.telemetry.broadcast` and exported here for the listeners.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from livestream.ledger.store import StageResult
from livestream.telemetry.broadcast import (
    Broadcaster,
    EventType,
    Listener,
    ServiceEvent,
    curation_field,
)
from livestream.telemetry.recorder import MetricsRecorder
from livestream.telemetry.systemd_notify import Notifier
from mdcatch.records import Exposure

__all__ = [
    "EventType",
    "Listener",
    "Reporter",
    "ServiceEvent",
    "curation_field",
]

log = logging.getLogger(__name__)


class Reporter:
    """Fans the service's facts out to ``events``, ``metrics`` (None: off) and
    ``notifier`` (None: no systemd STATUS)."""

    def __init__(
        self,
        events: Broadcaster,
        *,
        metrics: MetricsRecorder | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._events = events
        self._metrics = metrics
        self._notifier = notifier

    # -- exposures and stages ------------------------------------------------------
    def exposure_discovered(self, exposure_id: str) -> None:
        if self._metrics is not None:
            self._metrics.exposure_discovered()
        self._events.exposure_discovered(exposure_id)

    def exposure_ready(self, exposure: Exposure) -> None:
        if self._metrics is not None:
            self._metrics.exposure_ready()
        self._events.exposure_ready(exposure)

    def import_quarantined(self, exposure_id: str, reason: str) -> None:
        log.warning("quarantined %s: %s", exposure_id, reason)
        if self._metrics is not None:
            self._metrics.stage_finished("import", "quarantined", 0.0, None)
        self._events.import_quarantined(exposure_id, reason)

    def intake_reexamined(self) -> None:
        """A quarantined import's file changed and is examined again."""
        if self._metrics is not None:
            self._metrics.intake_reexamined()

    def stage_finished(
        self,
        exposure_id: str,
        stage: str,
        state: str,
        seconds: float,
        *,
        result: StageResult | None = None,
        error: str = "",
    ) -> None:
        # events carry the figures as the ledger stores them (with the decision)
        figures = result.stored_figures() if result is not None else {}
        if self._metrics is not None:
            self._metrics.stage_finished(stage, state, seconds, result)
        self._events.stage_finished(
            exposure_id, stage, state, seconds, figures=figures, error=error
        )

    def exposure_done(
        self,
        exposure: Exposure,
        results: Mapping[str, StageResult],
        states: Mapping[str, str],
    ) -> None:
        """Every stage of ``exposure`` ended (done or quarantined)."""
        now = datetime.now(UTC)
        if self._metrics is not None:
            self._metrics.exposure_done(now)
        self._events.exposure_done(exposure, results, states, now)

    # -- curation --------------------------------------------------------------------
    def curation_state(
        self, accepted: int, rejected: int, reasons: Mapping[str, int]
    ) -> None:
        """The current decision set (after a decision or a re-evaluation)."""
        if self._metrics is not None:
            self._metrics.curation_state(accepted, rejected, reasons)

    def curation_reevaluated(
        self, version: int, newly_accepted: int, newly_rejected: int
    ) -> None:
        log.info(
            "curation thresholds version %d: %d newly accepted, %d newly rejected",
            version,
            newly_accepted,
            newly_rejected,
        )
        if self._metrics is not None:
            self._metrics.curation_reevaluated(version, newly_accepted, newly_rejected)

    # -- online 2D classification ------------------------------------------------
    def class2d_progress(
        self, iteration: int, particles_seen: int, pool: int, seconds: float | None
    ) -> None:
        """After a mini-batch (``seconds`` its wall time) or a feed (``None``)."""
        if self._metrics is not None:
            self._metrics.class2d_progress(iteration, particles_seen, pool, seconds)

    def class2d_snapshot(self, payload: Mapping[str, Any]) -> None:
        """A snapshot was written: metrics, the MQTT ``class2d`` event, listeners."""
        if self._metrics is not None:
            self._metrics.class2d_snapshot(payload)
        self._events.class2d_snapshot(payload)

    def class2d_error(self, operation: str, error: Exception) -> None:
        """A classifier failure; the service goes on (the message names the file,
        field and value for a :class:`pipelines.StageInputError`)."""
        log.error("class2d %s failed: %s", operation, error)
        if self._metrics is not None:
            self._metrics.class2d_error(operation)

    # -- online 3D initial model ---------------------------------------------------
    def class3d_progress(
        self, iteration: int, particles_seen: int, pool: int, seconds: float | None
    ) -> None:
        """After a mini-batch (``seconds`` its wall time) or a feed (``None``)."""
        if self._metrics is not None:
            self._metrics.class3d_progress(iteration, particles_seen, pool, seconds)

    def class3d_snapshot(self, payload: Mapping[str, Any]) -> None:
        """A snapshot was written: metrics, the MQTT ``class3d`` event, listeners."""
        if self._metrics is not None:
            self._metrics.class3d_snapshot(payload)
        self._events.class3d_snapshot(payload)

    def refine3d(self, payload: Mapping[str, Any]) -> None:
        """A refinement of the 3D map ended (done, abandoned or failed): metrics,
        the MQTT ``refine3d`` event, listeners."""
        if self._metrics is not None:
            self._metrics.refine3d(payload)
        self._events.refine3d(payload)

    def class3d_error(self, operation: str, error: Exception) -> None:
        """An initial-model failure; the service goes on."""
        log.error("class3d %s failed: %s", operation, error)
        if self._metrics is not None:
            self._metrics.class3d_error(operation)

    # -- templates from the 2D classes -------------------------------------------
    def templates_version(self, version: int) -> None:
        """The pick stage uses template set ``version`` from now on."""
        if self._metrics is not None:
            self._metrics.templates_version(version)

    def templates_rejected(self) -> None:
        """The guard kept the pick stage's picker: a new set picked too little."""
        if self._metrics is not None:
            self._metrics.templates_rejected()

    # -- service state -------------------------------------------------------------
    def set_queue(self, depth: int, in_flight: int) -> None:
        if self._metrics is not None:
            self._metrics.set_queue(depth, in_flight)

    def set_workers(self, n: int) -> None:
        if self._metrics is not None:
            self._metrics.set_workers(n)

    def summary(
        self,
        state: str,
        text: str,
        *,
        counts: Mapping[str, Mapping[str, int]],
        exposures_per_hour: float,
        project: Path,
    ) -> None:
        """A periodic summary: gauges, systemd STATUS, the retained MQTT status."""
        if self._metrics is not None:
            self._metrics.summary(exposures_per_hour, project)
        if self._notifier is not None:
            self._notifier.status(text)
        self._events.status(
            state, text, counts=counts, exposures_per_hour=exposures_per_hour
        )
