"""Events of the service for in-process listeners and MQTT subscribers.

Listeners (the job index, curation, the demo's progress line, tests, the benchmark)
get a :class:`ServiceEvent` at once, in the event loop.  MQTT publishing is async,
so payloads are queued here and handed to the
:class:`~livestream.telemetry.mqtt.EventPublisher` by :meth:`Broadcaster.run` (whose
own outbox is bounded and counts drops).  Payload schemas: :mod:`livestream.telemetry.events`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from livestream.config import MqttConfig
from livestream.ledger.schema import Curation, curation_of, rejections_of
from livestream.ledger.store import StageResult
from livestream.telemetry.events import ServiceState, exposure_payload, status_payload
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.mqtt import EventPublisher, MqttSettings
from livestream.telemetry.outbox import MessageStore
from mdcatch.records import Exposure

__all__ = [
    "Broadcaster",
    "EventType",
    "Listener",
    "ServiceEvent",
    "curation_field",
    "open_publisher",
]


# the ``stage`` of a refine3d event for listeners, by the payload's ``step``
_REFINE3D_STAGES = {
    "refine": "refine3d",
    "rebalance": "rebalance",
    "classify": "classify",
}


class EventType(enum.Enum):
    DISCOVERED = "discovered"
    READY = "ready"
    IMPORT_QUARANTINED = "import_quarantined"
    STAGE_FINISHED = "stage_finished"
    EXPOSURE_DONE = "exposure_done"
    CLASS2D_SNAPSHOT = "class2d_snapshot"
    CLASS3D_SNAPSHOT = "class3d_snapshot"
    REFINE3D = "refine3d"


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


def open_publisher(
    config: MqttConfig,
    session_name: str,
    *,
    metrics: ServiceMetrics | None,
    store: MessageStore | None = None,
) -> EventPublisher:
    """The MQTT publisher of a session (an async context manager; inert when MQTT
    is off); ``metrics`` counts its outbox and drops; ``store`` (the ledger) keeps
    its events until the broker has them."""
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
    return EventPublisher(
        settings, _topic_safe(session_name), metrics=metrics, store=store
    )


class Broadcaster:
    """Tells listeners and (through ``publisher``, if any) MQTT what happened."""

    def __init__(
        self,
        publisher: EventPublisher | None = None,
        *,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self._publisher = publisher
        self._listeners: list[Listener] = list(listeners)
        self._outgoing: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()

    def add_listener(self, listener: Listener) -> None:
        """Also call ``listener`` (after the ones already there) with every event."""
        self._listeners.append(listener)

    def _emit(self, event: ServiceEvent) -> None:
        for listener in self._listeners:
            listener(event)

    @property
    def _publishing(self) -> bool:
        return self._publisher is not None and self._publisher.enabled

    # -- exposures and stages ------------------------------------------------------
    def exposure_discovered(self, exposure_id: str) -> None:
        self._emit(ServiceEvent(type=EventType.DISCOVERED, exposure_id=exposure_id))

    def exposure_ready(self, exposure: Exposure) -> None:
        self._emit(ServiceEvent(type=EventType.READY, exposure_id=exposure.exposure_id))

    def import_quarantined(self, exposure_id: str, reason: str) -> None:
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
        figures: Mapping[str, float],
        error: str = "",
    ) -> None:
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
        now: datetime,
    ) -> None:
        """Every stage of ``exposure`` ended (done or quarantined) at ``now``."""
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
        if self._publisher is None or not self._publisher.enabled:
            return

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

    # -- online 2D classification ------------------------------------------------
    def class2d_snapshot(self, payload: Mapping[str, Any]) -> None:
        """The MQTT ``class2d`` event and, for listeners, ``detail`` = the montage
        PNG, ``figures`` = the payload's numbers."""
        if self._publishing:
            self._outgoing.put_nowait(("class2d", "", dict(payload)))
        figures = {
            name: float(payload[name])
            for name in ("iteration", "particles_seen", "active_classes")
        }
        figures["selected_classes"] = float(len(payload["selected_classes"]))
        if payload.get("resolution_a") is not None:
            figures["resolution_a"] = float(payload["resolution_a"])
        templates = payload.get("templates")
        if isinstance(templates, Mapping):  # livestream.templates.live
            figures["templates_version"] = float(templates["version"])
            figures["templates_published"] = float(bool(templates["published"]))
            guard = templates.get("guard")
            if isinstance(guard, Mapping):  # livestream.templates.guard
                figures["templates_rejected"] = float(not guard["accepted"])
                figures["templates_guard_ratio"] = float(guard["ratio"])
                if "blob_recovered" in guard:
                    figures["templates_guard_recovered"] = float(
                        guard["blob_recovered"]
                    )
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

    # -- online 3D initial model ----------------------------------------------------
    def class3d_snapshot(self, payload: Mapping[str, Any]) -> None:
        """The MQTT ``class3d`` event and, for listeners, ``detail`` = the central
        slices PNG of the largest class, ``figures`` = the payload's numbers."""
        if self._publishing:
            self._outgoing.put_nowait(("class3d", "", dict(payload)))
        figures = {
            name: float(payload[name])
            for name in (
                "iteration",
                "particles_seen",
                "pool_particles",
                "resolution_a",
                "orientation_coverage",
            )
        }
        slices = payload.get("slices_png") or [""]
        largest = int(payload.get("largest_class", 1))
        self._emit(
            ServiceEvent(
                type=EventType.CLASS3D_SNAPSHOT,
                exposure_id="",
                stage="class3d",
                state="snapshot",
                detail=str(slices[min(largest, len(slices)) - 1]),
                figures=MappingProxyType(figures),
            )
        )

    def refine3d(self, payload: Mapping[str, Any]) -> None:
        """The MQTT ``refine3d`` event and, for listeners, ``stage`` = ``refine3d``,
        ``rebalance`` or ``classify`` (the payload's ``step``), ``state`` = its status (done,
        abandoned, failed), ``detail`` = the refined map, ``figures`` = the
        payload's numbers."""
        if self._publishing:
            self._outgoing.put_nowait(("refine3d", "", dict(payload)))
        figures = {
            name: float(value)
            for name, value in payload.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._emit(
            ServiceEvent(
                type=EventType.REFINE3D,
                exposure_id="",
                stage=_REFINE3D_STAGES.get(str(payload.get("step")), "refine3d"),
                state=str(payload.get("status", "")),
                detail=str(payload.get("map_path") or ""),
                figures=MappingProxyType(figures),
            )
        )

    # -- service state -------------------------------------------------------------
    def status(
        self,
        state: str,
        text: str,
        *,
        counts: Mapping[str, Mapping[str, int]],
        exposures_per_hour: float,
    ) -> None:
        """The retained MQTT status (a periodic summary)."""
        if self._publishing:
            payload = status_payload(
                ServiceState(state),
                summary=text,
                exposures=counts,
                exposures_per_hour=exposures_per_hour,
            )
            self._outgoing.put_nowait(("status", "", payload))

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
        if self._publisher is None:
            return
        if kind == "status":
            await self._publisher.publish_status(payload)
        elif kind == "class2d":
            await self._publisher.publish_class2d(payload)
        elif kind == "class3d":
            await self._publisher.publish_class3d(payload)
        elif kind == "refine3d":
            await self._publisher.publish_refine3d(payload)
        else:
            await self._publisher.publish_exposure(_topic_safe(exposure_id), payload)


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
