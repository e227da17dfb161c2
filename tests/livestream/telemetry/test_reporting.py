"""The Reporter fans each fact out to its sinks: Prometheus, listeners, MQTT and
systemd STATUS (each sink built by the caller and passed in)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from livestream.demo.microscope import MicroscopeSettings, make_exposure
from livestream.ledger.store import StageResult
from livestream.telemetry.broadcast import Broadcaster
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.mqtt import EventPublisher, MqttSettings
from livestream.telemetry.recorder import MetricsRecorder
from livestream.telemetry.reporting import EventType, Reporter, ServiceEvent
from livestream.telemetry.systemd_notify import Notifier


@pytest.fixture
def manager_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2.0)
        yield sock, str(path)


def test_a_stage_result_reaches_the_metrics_and_the_listeners() -> None:
    metrics = ServiceMetrics()
    heard: list[ServiceEvent] = []
    reporter = Reporter(
        Broadcaster(listeners=[heard.append]), metrics=MetricsRecorder(metrics)
    )
    figures = {"total_motion_a": 12.0, "accepted": 0.0, "rejected_ctf_fit_a": 9.0}
    result = StageResult(stage="curate", figures=figures)
    reporter.stage_finished("e1", "curate", "done", 1.5, result=result)
    value = metrics.registry.get_sample_value
    done = {"stage": "curate", "state": "done"}
    assert value("livestream_stage_exposures_total", done) == 1
    assert value("livestream_latest_motion_total_angstrom") == 12.0
    assert value("livestream_curation_decisions_total", {"decision": "rejected"}) == 1
    assert value("livestream_curation_rejections_total", {"figure": "ctf_fit_a"}) == 1
    (event,) = heard
    assert event.type is EventType.STAGE_FINISHED
    assert (event.exposure_id, event.stage, event.state, event.seconds) == (
        "e1",
        "curate",
        "done",
        1.5,
    )
    assert event.figures == figures


def test_without_metrics_or_mqtt_listeners_still_hear_everything(
    tmp_path: Path,
) -> None:
    heard: list[ServiceEvent] = []
    reporter = Reporter(Broadcaster(listeners=[heard.append]))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    exposure = make_exposure(0, MicroscopeSettings(), start, tmp_path / "e.xml")
    reporter.exposure_discovered(exposure.exposure_id)
    reporter.import_quarantined("bad", "bad.xml: no movie")
    reporter.exposure_done(
        exposure,
        {"motion": StageResult(stage="motion", figures={"total_motion_a": 3.0})},
        {"motion": "done"},
    )
    reporter.summary(
        "running", "1/1", counts={}, exposures_per_hour=1.0, project=tmp_path
    )
    assert [e.type for e in heard] == [
        EventType.DISCOVERED,
        EventType.IMPORT_QUARANTINED,
        EventType.EXPOSURE_DONE,
    ]
    assert heard[1].detail == "bad.xml: no movie"
    assert (heard[2].state, dict(heard[2].figures)) == ("done", {"total_motion_a": 3.0})


async def test_a_summary_sets_gauges_sends_status_and_queues_the_mqtt_status(
    tmp_path: Path, manager_socket: tuple[socket.socket, str]
) -> None:
    sock, address = manager_socket
    metrics = ServiceMetrics()
    # enabled but never entered: what is handed over stays in its outbox
    publisher = EventPublisher(
        MqttSettings(host="broker.invalid"), "session", metrics=metrics
    )
    broadcaster = Broadcaster(publisher)
    reporter = Reporter(
        broadcaster, metrics=MetricsRecorder(metrics), notifier=Notifier(address)
    )
    reporter.summary(
        "running",
        "2/3 exposures done, 1 running, 0 queued, 12/h",
        counts={"motion": {"done": 2, "running": 1}},
        exposures_per_hour=12.0,
        project=tmp_path,
    )
    assert sock.recv(4096) == b"STATUS=2/3 exposures done, 1 running, 0 queued, 12/h"
    value = metrics.registry.get_sample_value
    assert value("livestream_exposures_per_hour") == 12.0
    assert (value("livestream_project_disk_size_bytes") or 0) > 0
    assert publisher.outbox_depth == 0  # queued for the feed task, not yet handed
    await broadcaster.flush()
    assert publisher.outbox_depth == 1
    assert value("livestream_mqtt_outbox_messages") == 1
