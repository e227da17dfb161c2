"""One front for everything the daemon tells the world: metrics, MQTT, systemd,
and in-process listeners (the demo's progress line, tests, the benchmark).

The service core calls plain, non-blocking methods; MQTT publishing is async, so
events are queued here and handed to the :class:`~livestream.telemetry.mqtt.EventPublisher`
by :meth:`Reporter.run` (whose own outbox is bounded and counts drops).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from livestream.config import MetricsConfig, MqttConfig
from livestream.ledger.schema import Curation, curation_of, rejections_of
from livestream.ledger.store import StageResult
from mdcatch.records import Exposure

__all__ = ["EventType", "Reporter", "ServiceEvent", "curation_field"]

log = logging.getLogger(__name__)


class EventType(enum.Enum):
    DISCOVERED = "discovered"
    READY = "ready"
    IMPORT_QUARANTINED = "import_quarantined"
    STAGE_FINISHED = "stage_finished"
    EXPOSURE_DONE = "exposure_done"
    CLASS2D_SNAPSHOT = "class2d_snapshot"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEvent:
    type: EventType
    exposure_id: str
    stage: str = ""
    state: str = ""
    seconds: float = 0.0
    detail: str = ""
    figures: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    time_unix_s: float = field(default_factory=time.time)


Listener = Callable[[ServiceEvent], None]


class Reporter:
    """Adapts the daemon's events to metrics, MQTT, sd_notify and listeners."""

    def __init__(
        self, session_name: str, *, metrics: Any = None, notifier: Any = None
    ) -> None:
        self.session_name = session_name
        self.metrics = metrics
        self.notifier = notifier
        self.publisher: Any = None
        self.metrics_address: tuple[str, int] | None = None
        self._listeners: list[Listener] = []
        self._outgoing: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        self._curation: Any = None
        if metrics is not None and getattr(metrics, "registry", None) is not None:
            from livestream.curation.metrics import CurationMetrics

            self._curation = CurationMetrics(metrics.registry)

    @classmethod
    def create(
        cls,
        session_name: str,
        metrics_config: MetricsConfig,
        *,
        any_port_if_busy: bool = False,
    ) -> Reporter:
        from livestream.telemetry.metrics import ServiceMetrics
        from livestream.telemetry.systemd_notify import Notifier

        metrics = ServiceMetrics() if metrics_config.enabled else None
        reporter = cls(session_name, metrics=metrics, notifier=Notifier.from_env())
        if metrics is not None:
            host, port = metrics_config.host, metrics_config.port
            try:
                reporter.metrics_address = metrics.start_http_server(host, port)
            except OSError as exc:
                if not any_port_if_busy:
                    raise OSError(
                        f"key 'metrics.port': cannot serve on {host}:{port}: {exc}"
                    ) from exc
                log.warning(
                    "metrics port %d is busy (%s): using any free port", port, exc
                )
                reporter.metrics_address = metrics.start_http_server(host, 0)
        return reporter

    def open_publisher(self, config: MqttConfig) -> Any:
        """The MQTT publisher (an async context manager; inert when MQTT is off)."""
        from livestream.telemetry.mqtt import EventPublisher, MqttSettings

        password = None
        if config.password_file is not None:
            password = config.password_file.read_text().strip()
        settings = MqttSettings(
            host=config.host,
            port=config.port,
            tls=config.tls,
            ca_file=None if config.ca_file is None else str(config.ca_file),
            username=config.username or None,
            password=password,
            outbox_size=config.outbox_size,
            keepalive_s=config.keepalive_s,
        )
        self.publisher = EventPublisher(
            settings, _topic_safe(self.session_name), metrics=self.metrics
        )
        return self.publisher

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.stop_http_server()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: ServiceEvent) -> None:
        for listener in self._listeners:
            listener(event)

    # -- exposures and stages ------------------------------------------------------
    def exposure_discovered(self, exposure_id: str) -> None:
        if self.metrics is not None:
            self.metrics.exposure_discovered()
            self.metrics.newest_exposure_seen(datetime.now(UTC))
        self._emit(ServiceEvent(type=EventType.DISCOVERED, exposure_id=exposure_id))

    def exposure_ready(self, exposure: Exposure) -> None:
        if self.metrics is not None:
            self.metrics.exposure_ready()
        self._emit(ServiceEvent(type=EventType.READY, exposure_id=exposure.exposure_id))

    def import_quarantined(self, exposure_id: str, reason: str) -> None:
        log.warning("quarantined %s: %s", exposure_id, reason)
        if self.metrics is not None:
            self.metrics.stage_finished("import", "quarantined", 0.0)
        self._emit(
            ServiceEvent(
                type=EventType.IMPORT_QUARANTINED,
                exposure_id=exposure_id,
                stage="import",
                state="quarantined",
                detail=reason,
            )
        )

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
        if self.metrics is not None:
            self.metrics.stage_finished(stage, state, seconds)
            if "total_motion_a" in figures:
                self.metrics.observe_motion(figures["total_motion_a"])
            if {"defocus_a", "fit_resolution_a"} <= figures.keys():
                self.metrics.observe_ctf(
                    figures["defocus_a"], figures["fit_resolution_a"]
                )
            if "n_particles" in figures:
                self.metrics.particles_extracted(int(figures["n_particles"]))
        if self._curation is not None and result is not None:
            self._curation.observe(result)
        self._emit(
            ServiceEvent(
                type=EventType.STAGE_FINISHED,
                exposure_id=exposure_id,
                stage=stage,
                state=state,
                seconds=seconds,
                detail=error,
                figures=figures,
            )
        )

    def exposure_done(
        self,
        exposure: Exposure,
        results: Mapping[str, StageResult],
        states: Mapping[str, str],
    ) -> None:
        """Every stage of ``exposure`` ended (done or quarantined)."""
        now = datetime.now(UTC)
        if self.metrics is not None:
            # a quarantined exposure was processed too: processing is not stalled
            self.metrics.exposure_done(now)
        figures: dict[str, float] = {}
        for result in results.values():
            figures.update(result.stored_figures())
        self._queue_exposure_event(exposure, results, states, now)
        self._emit(
            ServiceEvent(
                type=EventType.EXPOSURE_DONE,
                exposure_id=exposure.exposure_id,
                state="done"
                if all(s == "done" for s in states.values())
                else "quarantined",
                figures=figures,
            )
        )

    def _queue_exposure_event(
        self,
        exposure: Exposure,
        results: Mapping[str, StageResult],
        states: Mapping[str, str],
        now: datetime,
    ) -> None:
        if self.publisher is None or not self.publisher.enabled:
            return
        from livestream.telemetry.events import exposure_payload

        def pick(names: tuple[str, ...]) -> dict[str, float] | None:
            found = {
                n: r.figures[n]
                for r in results.values()
                for n in names
                if n in r.figures
            }
            return found or None

        particles = pick(("n_particles",))
        thumbnail = next(
            (
                r.outputs["thumbnail"]
                for r in results.values()
                if "thumbnail" in r.outputs
            ),
            None,
        )
        payload = exposure_payload(
            exposure.exposure_id,
            acquired_utc=exposure.acquired_utc,
            processed_utc=now,
            movie_path=exposure.movie_path,
            motion=pick(("total_motion_a", "early_motion_a", "late_motion_a")),
            ctf=pick(
                (
                    "defocus_u_a",
                    "defocus_v_a",
                    "astigmatism_angle_deg",
                    "fit_resolution_a",
                )
            ),
            particle_count=None if particles is None else int(particles["n_particles"]),
            thumbnail_path=thumbnail,
            stages=states,
            curation=curation_field(results),
        )
        self._outgoing.put_nowait(("exposure", exposure.exposure_id, payload))

    # -- curation --------------------------------------------------------------------
    def curation_state(
        self, accepted: int, rejected: int, reasons: Mapping[str, int]
    ) -> None:
        """The current decision set (after a decision or a re-evaluation)."""
        if self._curation is not None:
            self._curation.set_current(accepted, rejected, reasons)

    def curation_reevaluated(
        self, version: int, newly_accepted: int, newly_rejected: int
    ) -> None:
        log.info(
            "curation thresholds version %d: %d newly accepted, %d newly rejected",
            version,
            newly_accepted,
            newly_rejected,
        )
        if self._curation is not None:
            self._curation.observe_reevaluation(version, newly_accepted, newly_rejected)

    # -- online 2D classification ------------------------------------------------
    def class2d_progress(
        self, iteration: int, particles_seen: int, pool: int, seconds: float | None
    ) -> None:
        """After a mini-batch (``seconds`` its wall time) or a feed (``None``)."""
        if self.metrics is not None:
            self.metrics.class2d.progress(
                iteration=iteration, particles_seen=particles_seen, pool_particles=pool
            )
            if seconds is not None:
                self.metrics.class2d.minibatch(seconds)

    def class2d_snapshot(self, payload: Mapping[str, Any]) -> None:
        """A snapshot was written: metrics, the MQTT ``class2d`` event, listeners
        (``detail`` = the montage PNG, ``figures`` = the payload's numbers)."""
        if self.metrics is not None:
            self.metrics.class2d.snapshot(payload)
        if self.publisher is not None and self.publisher.enabled:
            self._outgoing.put_nowait(("class2d", "", dict(payload)))
        figures = {
            name: float(payload[name])
            for name in ("iteration", "particles_seen", "active_classes")
        }
        figures["selected_classes"] = float(len(payload["selected_classes"]))
        if payload.get("resolution_a") is not None:
            figures["resolution_a"] = float(payload["resolution_a"])
        self._emit(
            ServiceEvent(
                type=EventType.CLASS2D_SNAPSHOT,
                exposure_id="",
                stage="class2d",
                state="snapshot",
                detail=str(payload.get("montage_png", "")),
                figures=MappingProxyType(figures),
            )
        )

    def class2d_error(self, operation: str, error: Exception) -> None:
        """A classifier failure; the service goes on (the message names the file,
        field and value for a :class:`pipelines.StageInputError`)."""
        log.error("class2d %s failed: %s", operation, error)
        if self.metrics is not None:
            self.metrics.class2d.error(operation)

    # -- service state -------------------------------------------------------------
    def set_queue(self, depth: int, in_flight: int) -> None:
        if self.metrics is not None:
            self.metrics.set_queue(depth, in_flight)

    def set_workers(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.set_workers(n)

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
        if self.metrics is not None:
            self.metrics.set_exposures_per_hour(exposures_per_hour)
            import shutil

            usage = shutil.disk_usage(project)
            self.metrics.set_project_disk(usage.free, usage.total)
        if self.notifier is not None:
            self.notifier.status(text)
        if self.publisher is not None and self.publisher.enabled:
            from livestream.telemetry.events import ServiceState, status_payload

            payload = status_payload(
                ServiceState(state),
                summary=text,
                exposures=counts,
                exposures_per_hour=exposures_per_hour,
            )
            self._outgoing.put_nowait(("status", "", payload))

    def ready(self) -> None:
        if self.notifier is not None:
            self.notifier.ready()

    def stopping(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()

    def watchdog_period_s(self) -> float | None:
        if self.notifier is None:
            return None
        period: float | None = self.notifier.watchdog_ping_period_s()
        return period

    def watchdog(self) -> None:
        if self.notifier is not None:
            self.notifier.watchdog()

    async def run(self) -> None:
        """Hand queued events to the MQTT publisher until cancelled."""
        while True:
            await self._hand_over(*await self._outgoing.get())

    async def flush(self) -> None:
        """Hand over whatever is still queued (at shutdown)."""
        while not self._outgoing.empty():
            await self._hand_over(*self._outgoing.get_nowait())

    async def _hand_over(
        self, kind: str, exposure_id: str, payload: dict[str, Any]
    ) -> None:
        if self.publisher is None:
            return
        if kind == "status":
            await self.publisher.publish_status(payload)
        elif kind == "class2d":
            await self.publisher.publish_class2d(payload)
        else:
            await self.publisher.publish_exposure(_topic_safe(exposure_id), payload)


def curation_field(results: Mapping[str, StageResult]) -> dict[str, Any] | None:
    """``{"accepted": bool, "reasons": [figure, ...], "rejected": {figure: value}}``
    from the curation decision (``None`` without one)."""
    for result in results.values():
        decision = curation_of(result)
        if decision is not Curation.UNDECIDED:
            rejected = rejections_of(result)
            return {
                "accepted": decision is Curation.ACCEPTED,
                "reasons": sorted(rejected),
                "rejected": rejected,
            }
    return None


def _topic_safe(name: str) -> str:
    cleaned = "".join("_" if c in "/+#\0" else c for c in name)
    return cleaned or "session"
