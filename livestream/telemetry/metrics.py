"""Prometheus metrics of the live service, served on ``/metrics``.

All names start with ``livestream_`` and carry their unit (``_seconds``, ``_total``,
``_bytes``, ``_angstrom``). Each :class:`ServiceMetrics` owns a registry of its own
(never the process-global one), so tests and several services in one process do not
clash. The full list with meanings is in ``docs/operations.md``.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

from livestream import __version__
from livestream.class2d.metrics import Class2dMetrics
from livestream.class3d.metrics import Class3dMetrics
from livestream.scheduling.pause import PauseReason

__all__ = ["PAUSE_REASONS", "STAGE_DURATION_BUCKETS_S", "ServiceMetrics"]

# 0.1 s to 10 min: a motion correction of a small movie up to a 4k CTF on a slow node.
STAGE_DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_MOTION_BUCKETS_A = (1, 2, 5, 10, 20, 50, 100, 200, 500)
_DEFOCUS_BUCKETS_A = (2500, 5000, 7500, 10000, 15000, 20000, 25000, 30000, 40000, 50000)
_RESOLUTION_BUCKETS_A = (2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 15, 20, 30)


_FINAL_STATES = frozenset({"done", "failed", "quarantined"})
# every livestream_paused{reason} series exists (at 0) from the start
PAUSE_REASONS = tuple(reason.value for reason in PauseReason)


class ServiceMetrics:
    """The service's counters, gauges and histograms (see the module doc).

    ``clock`` returns seconds since the epoch (``time.time``); the two idle gauges
    are computed from it at scrape time, so they keep growing while nothing happens.
    Before the first exposure they count from the creation of this object.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._lock = threading.Lock()
        self._started_s = clock()
        self._newest_seen_s = self._started_s
        self._last_done_s = self._started_s
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        r = self.registry
        ProcessCollector(namespace="livestream", registry=r)  # livestream_process_*

        Info("livestream_build", "Version of the running service.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self._discovered = Counter(
            "livestream_exposures_discovered",
            "Exposures seen in the session folder.",
            registry=r,
        )
        self._reexamined = Counter(
            "livestream_intake_reexamined",
            "Quarantined imports examined again because their file changed.",
            registry=r,
        )
        self._ready = Counter(
            "livestream_exposures_ready",
            "Exposures whose metadata and movie settled.",
            registry=r,
        )
        self._done = Counter(
            "livestream_exposures_done",
            "Exposures through every per-exposure stage.",
            registry=r,
        )
        self._stage = Counter(
            "livestream_stage_exposures",
            "Exposures that finished a stage, by final state.",
            ["stage", "state"],
            registry=r,
        )
        self._duration = Histogram(
            "livestream_stage_duration_seconds",
            "Wall time of one stage on one exposure.",
            ["stage"],
            buckets=STAGE_DURATION_BUCKETS_S,
            registry=r,
        )
        self._queued = Gauge(
            "livestream_queued_exposures",
            "Stage runs waiting for a worker.",
            registry=r,
        )
        self._in_flight = Gauge(
            "livestream_in_flight_exposures", "Stage runs on workers now.", registry=r
        )
        self._workers = Gauge("livestream_workers", "Worker processes.", registry=r)
        Gauge(
            "livestream_acquisition_idle_seconds",
            "Seconds since the newest exposure appeared (acquisition stalled).",
            registry=r,
        ).set_function(lambda: self._clock() - self._newest_seen_s)
        Gauge(
            "livestream_processing_idle_seconds",
            "Seconds since the last exposure finished processing.",
            registry=r,
        ).set_function(lambda: self._clock() - self._last_done_s)
        self._per_hour = Gauge(
            "livestream_exposures_per_hour",
            "Processed exposures per hour, recent.",
            registry=r,
        )
        self._motion = Histogram(
            "livestream_motion_total_angstrom",
            "Total beam-induced motion of an exposure.",
            buckets=_MOTION_BUCKETS_A,
            registry=r,
        )
        self._defocus = Histogram(
            "livestream_ctf_defocus_angstrom",
            "Mean defocus (positive = underfocus).",
            buckets=_DEFOCUS_BUCKETS_A,
            registry=r,
        )
        self._resolution = Histogram(
            "livestream_ctf_fit_resolution_angstrom",
            "Resolution to which the CTF fit holds.",
            buckets=_RESOLUTION_BUCKETS_A,
            registry=r,
        )
        self._last_motion = Gauge(
            "livestream_latest_motion_total_angstrom",
            "Motion of the newest exposure.",
            registry=r,
        )
        self._last_defocus = Gauge(
            "livestream_latest_ctf_defocus_angstrom",
            "Defocus of the newest exposure.",
            registry=r,
        )
        self._last_resolution = Gauge(
            "livestream_latest_ctf_fit_resolution_angstrom",
            "CTF fit resolution of the newest exposure.",
            registry=r,
        )
        self._particles = Counter(
            "livestream_particles_extracted", "Particles extracted.", registry=r
        )
        self._disk_free = Gauge(
            "livestream_project_disk_free_bytes",
            "Free space for the project.",
            registry=r,
        )
        self._disk_size = Gauge(
            "livestream_project_disk_size_bytes",
            "Size of the project's filesystem.",
            registry=r,
        )
        self._paused = Gauge(
            "livestream_paused",
            "1 while the service takes no new work, by reason (disk_full).",
            ["reason"],
            registry=r,
        )
        for reason in PAUSE_REASONS:
            self._paused.labels(reason=reason).set(0)
        self._mqtt_dropped = Counter(
            "livestream_mqtt_dropped_messages",
            "MQTT messages dropped (outbox overflow or undelivered at exit).",
            registry=r,
        )
        self._mqtt_outbox = Gauge(
            "livestream_mqtt_outbox_messages",
            "MQTT messages not yet acknowledged.",
            registry=r,
        )
        self.class2d = Class2dMetrics(r)  # livestream_class2d_*
        self.class3d = Class3dMetrics(r)  # livestream_class3d_*
        self._templates_version = Gauge(
            "livestream_templates_version",
            "Version of the template set the pick stage uses (0: blob picking, no "
            "set from the 2D classes yet).",
            registry=r,
        )
        self._templates_rejected = Counter(
            "livestream_templates_rejected",
            "Template sets the guard did not use: they picked fewer than "
            "[templates] min_pick_ratio times the blob picks on the last exposures.",
            registry=r,
        )

    # -- exposures and stages ------------------------------------------------------
    def exposure_discovered(self) -> None:
        self._discovered.inc()

    def exposure_ready(self) -> None:
        self._ready.inc()

    def intake_reexamined(self) -> None:
        """A quarantined import's file changed and is examined again."""
        self._reexamined.inc()

    def declare_stages(self, stages: Iterable[str]) -> None:
        """Create every stage's series at 0 so rates work from the first failure."""
        for stage in stages:
            for state in sorted(_FINAL_STATES):
                self._stage.labels(stage=stage, state=state)
            self._duration.labels(stage=stage)

    def stage_finished(self, stage: str, state: str, seconds: float) -> None:
        """One stage of one exposure ended in ``state`` after ``seconds``."""
        if state not in _FINAL_STATES:
            raise ValueError(
                f"stage_finished({stage!r}): state {state!r} not in {sorted(_FINAL_STATES)}"
            )
        if seconds < 0:
            raise ValueError(
                f"stage_finished({stage!r}): negative duration {seconds} s"
            )
        self._stage.labels(stage=stage, state=state).inc()
        self._duration.labels(stage=stage).observe(seconds)

    def set_templates_version(self, version: int) -> None:
        self._templates_version.set(version)

    def count_templates_rejected(self) -> None:
        self._templates_rejected.inc()

    def set_queue(self, depth: int, in_flight: int) -> None:
        self._queued.set(depth)
        self._in_flight.set(in_flight)

    def set_workers(self, n: int) -> None:
        self._workers.set(n)

    def newest_exposure_seen(self, ts_utc: datetime) -> None:
        """An exposure appeared at ``ts_utc``; older times than the newest are ignored."""
        with self._lock:
            self._newest_seen_s = max(self._newest_seen_s, _epoch_s(ts_utc))

    def exposure_done(self, ts_utc: datetime) -> None:
        """An exposure finished its last per-exposure stage at ``ts_utc`` (call once)."""
        self._done.inc()
        with self._lock:
            self._last_done_s = max(self._last_done_s, _epoch_s(ts_utc))

    def set_exposures_per_hour(self, x: float) -> None:
        self._per_hour.set(x)

    # -- results -------------------------------------------------------------------
    def observe_motion(self, total_motion_a: float) -> None:
        self._motion.observe(total_motion_a)
        self._last_motion.set(total_motion_a)

    def observe_ctf(self, defocus_a: float, fit_resolution_a: float) -> None:
        self._defocus.observe(defocus_a)
        self._resolution.observe(fit_resolution_a)
        self._last_defocus.set(defocus_a)
        self._last_resolution.set(fit_resolution_a)

    def particles_extracted(self, n: int) -> None:
        self._particles.inc(n)

    # -- resources and messaging ---------------------------------------------------
    def set_project_disk(self, free_bytes: int, total_bytes: int) -> None:
        self._disk_free.set(free_bytes)
        self._disk_size.set(total_bytes)

    def set_paused(self, reason: str, paused: bool) -> None:
        if reason not in PAUSE_REASONS:
            raise ValueError(f"set_paused: reason {reason!r} not in {PAUSE_REASONS}")
        self._paused.labels(reason=reason).set(1 if paused else 0)

    def mqtt_dropped(self, n: int = 1) -> None:
        self._mqtt_dropped.inc(n)

    def mqtt_outbox(self, depth: int) -> None:
        self._mqtt_outbox.set(depth)

    # -- HTTP ----------------------------------------------------------------------
    def start_http_server(
        self, host: str = "127.0.0.1", port: int = 0
    ) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` in a thread; port 0 picks a free one."""
        if self._server is not None:
            raise RuntimeError("metrics HTTP server already running")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return host, int(server.server_port)

    def stop_http_server(self) -> None:
        """Stop serving (no-op if not started)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def _epoch_s(ts_utc: datetime) -> float:
    if ts_utc.tzinfo is None:
        raise ValueError(f"naive datetime {ts_utc!r}: metrics need timezone-aware UTC")
    return ts_utc.timestamp()
