"""ServiceMetrics through a real HTTP scrape of /metrics, parsed by prometheus_client."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from livestream import __version__
from livestream.telemetry.metrics import ServiceMetrics

T0 = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: list[Sample] = [
        s for family in text_string_to_metric_families(text) for s in family.samples
    ]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


@pytest.fixture
def served() -> Iterator[tuple[ServiceMetrics, FakeClock, str]]:
    clock = FakeClock(T0.timestamp())
    metrics = ServiceMetrics(clock=clock)
    host, port = metrics.start_http_server("127.0.0.1", 0)
    assert port > 0
    try:
        yield metrics, clock, f"http://{host}:{port}/metrics"
    finally:
        metrics.stop_http_server()


def test_scrape_reports_what_was_observed(
    served: tuple[ServiceMetrics, FakeClock, str],
) -> None:
    metrics, _clock, url = served
    for _ in range(3):
        metrics.exposure_discovered()
    metrics.exposure_ready()
    metrics.exposure_ready()
    durations = {"motion": [0.3, 2.0], "ctf": [45.0]}
    for stage, values in durations.items():
        for seconds in values:
            metrics.stage_finished(stage, "done", seconds)
    metrics.stage_finished("motion", "quarantined", 0.05)
    metrics.set_queue(depth=7, in_flight=2)
    metrics.set_workers(4)
    metrics.observe_motion(14.5)
    metrics.observe_ctf(defocus_a=18000.0, fit_resolution_a=3.2)
    metrics.particles_extracted(250)
    metrics.particles_extracted(50)
    metrics.set_exposures_per_hour(210.5)
    metrics.set_project_disk(free_bytes=10**12, total_bytes=4 * 10**12)
    metrics.mqtt_dropped()
    metrics.mqtt_dropped(4)
    metrics.mqtt_outbox(12)

    got = scrape(url)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("livestream_exposures_discovered_total") == 3
    assert value("livestream_exposures_ready_total") == 2
    assert value("livestream_stage_exposures_total", stage="motion", state="done") == 2
    assert (
        value("livestream_stage_exposures_total", stage="motion", state="quarantined")
        == 1
    )
    assert value("livestream_stage_exposures_total", stage="ctf", state="done") == 1
    assert value("livestream_stage_duration_seconds_count", stage="motion") == 3
    assert value(
        "livestream_stage_duration_seconds_sum", stage="motion"
    ) == pytest.approx(2.35)
    # Cumulative buckets: 0.05 and 0.3 are <= 0.5, all three <= 2.5.
    assert (
        value("livestream_stage_duration_seconds_bucket", stage="motion", le="0.1") == 1
    )
    assert (
        value("livestream_stage_duration_seconds_bucket", stage="motion", le="0.5") == 2
    )
    assert (
        value("livestream_stage_duration_seconds_bucket", stage="motion", le="2.5") == 3
    )
    assert (
        value("livestream_stage_duration_seconds_bucket", stage="ctf", le="30.0") == 0
    )
    assert (
        value("livestream_stage_duration_seconds_bucket", stage="ctf", le="60.0") == 1
    )
    assert value("livestream_queued_exposures") == 7
    assert value("livestream_in_flight_exposures") == 2
    assert value("livestream_workers") == 4
    assert value("livestream_motion_total_angstrom_sum") == 14.5
    assert value("livestream_latest_ctf_defocus_angstrom") == 18000.0
    assert value("livestream_ctf_fit_resolution_angstrom_bucket", le="3.5") == 1
    assert value("livestream_ctf_fit_resolution_angstrom_bucket", le="3.0") == 0
    assert value("livestream_particles_extracted_total") == 300
    assert value("livestream_exposures_per_hour") == 210.5
    assert value("livestream_project_disk_free_bytes") == 1e12
    assert value("livestream_project_disk_size_bytes") == 4e12
    assert value("livestream_mqtt_dropped_messages_total") == 5
    assert value("livestream_mqtt_outbox_messages") == 12
    build = [k for k in got if k[0] == "livestream_build_info"]
    assert len(build) == 1
    assert ("version", __version__) in build[0][1]
    assert got[build[0]] == 1
    assert all(name.startswith("livestream_") for name, _ in got)


def test_idle_gauges_are_computed_at_scrape_time(
    served: tuple[ServiceMetrics, FakeClock, str],
) -> None:
    metrics, clock, url = served
    # Nothing seen yet: both count from the start of the service.
    clock.now_s = T0.timestamp() + 30
    got = scrape(url)
    assert got[("livestream_acquisition_idle_seconds", ())] == 30
    assert got[("livestream_processing_idle_seconds", ())] == 30

    metrics.newest_exposure_seen(datetime.fromtimestamp(T0.timestamp() + 100, UTC))
    metrics.newest_exposure_seen(
        datetime.fromtimestamp(T0.timestamp() + 60, UTC)
    )  # late
    metrics.exposure_done(datetime.fromtimestamp(T0.timestamp() + 90, UTC))
    clock.now_s = T0.timestamp() + 400
    got = scrape(url)
    assert got[("livestream_acquisition_idle_seconds", ())] == 300  # newest, not last
    assert got[("livestream_processing_idle_seconds", ())] == 310
    clock.now_s += 25  # no new observation, the gauges still move
    got = scrape(url)
    assert got[("livestream_acquisition_idle_seconds", ())] == 325
    assert got[("livestream_exposures_done_total", ())] == 1


def test_instances_have_their_own_registry_and_server_stops() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()  # no duplicate-name clash
    first.particles_extracted(5)
    assert first.registry.get_sample_value("livestream_particles_extracted_total") == 5
    assert second.registry.get_sample_value("livestream_particles_extracted_total") == 0
    host, port = second.start_http_server()
    assert host == "127.0.0.1"
    with pytest.raises(RuntimeError, match="already running"):
        second.start_http_server()
    second.stop_http_server()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_bad_observations_are_refused_with_the_value() -> None:
    metrics = ServiceMetrics()
    with pytest.raises(ValueError, match="state 'running'"):
        metrics.stage_finished("motion", "running", 1.0)
    with pytest.raises(ValueError, match="negative duration -1"):
        metrics.stage_finished("motion", "done", -1.0)
    with pytest.raises(ValueError, match="naive datetime"):
        metrics.newest_exposure_seen(datetime(2026, 1, 1))


def test_declared_stages_exist_at_zero_before_anything_happens() -> None:
    metrics = ServiceMetrics()
    metrics.declare_stages(["motion", "ctf"])
    get = metrics.registry.get_sample_value
    for stage in ("motion", "ctf"):
        for state in ("done", "failed", "quarantined"):
            labels = {"stage": stage, "state": state}
            assert get("livestream_stage_exposures_total", labels) == 0
        assert get("livestream_stage_duration_seconds_count", {"stage": stage}) == 0
    assert (
        get("livestream_stage_exposures_total", {"stage": "pick", "state": "done"})
        is None
    )


def test_refinements_of_the_live_map_are_counted_by_how_they_ended() -> None:
    metrics = ServiceMetrics()
    get = metrics.registry.get_sample_value
    for status in ("done", "abandoned", "failed"):  # every series from the start
        assert get("livestream_class3d_refinements_total", {"status": status}) == 0
    assert math.isnan(get("livestream_class3d_refine_resolution_angstrom") or 0.0)
    done = {"step": "refine", "status": "done", "seconds": 12.4}
    metrics.class3d.refine({**done, "resolution_a": 11.4, "n_particles": 80})
    metrics.class3d.refine({"step": "refine", "status": "abandoned", "seconds": 3.0})
    metrics.class3d.refine({"step": "rebalance", "status": "done", "seconds": 1.0})
    assert get("livestream_class3d_refinements_total", {"status": "done"}) == 1
    assert get("livestream_class3d_refinements_total", {"status": "abandoned"}) == 1
    # an abandoned run leaves the finished one's figures, its own duration
    assert get("livestream_class3d_refine_resolution_angstrom") == 11.4
    assert get("livestream_class3d_refine_particles") == 80
    assert get("livestream_class3d_refine_duration_seconds") == 3.0
    with pytest.raises(ValueError, match="'stopped'"):
        metrics.class3d.refine({"step": "refine", "status": "stopped", "seconds": 0})
