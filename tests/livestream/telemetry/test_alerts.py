"""Alert rules, their promtool unit tests, the scrape config and the Grafana dashboard.

The dashboard and the rules may only use metric names that ServiceMetrics really
exports: the last test scrapes a ServiceMetrics that has seen one of everything.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from livestream.telemetry.metrics import ServiceMetrics
from tests.livestream.conftest import require_tool

MONITORING = Path(__file__).resolve().parents[3] / "monitoring"
NAME = re.compile(r"\blivestream_[a-z0-9_]+")


def promtool(*args: str) -> str:
    tool = require_tool("promtool", "/usr/bin/promtool")
    result = subprocess.run(
        [tool, *args], capture_output=True, text=True, check=False, cwd=MONITORING
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_alert_rules_pass_promtool_check() -> None:
    assert "SUCCESS: 13 rules found" in promtool("check", "rules", "alerts.yml")


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_example_prometheus_config_is_valid_and_loads_the_rules() -> None:
    assert "1 rule files found" in promtool("check", "config", "prometheus.yml")


def test_every_alert_has_a_unit_test_that_fires_and_one_that_does_not() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert {
        "LivestreamDown",
        "LivestreamAcquisitionStalled",
        "LivestreamProcessingBehind",
        "LivestreamHighFailureRate",
        "LivestreamProjectDiskNearlyFull",
        "LivestreamMqttMessagesDropped",
        "LivestreamPausedDiskFull",
    } <= alerts
    assert alerts == firing, f"alerts never tested firing: {alerts - firing}"
    assert alerts == quiet, f"alerts never tested quiet: {alerts - quiet}"


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 12
    for panel in graphs:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert NAME.search(target["expr"]) or "up{" in target["expr"], target
            assert target["datasource"]["uid"] == "${datasource}"


def scraped_names() -> set[str]:
    """Sample names of a served ServiceMetrics that has seen one of everything."""
    metrics = ServiceMetrics()
    now = datetime.now(UTC)
    metrics.exposure_discovered()
    metrics.exposure_ready()
    for state in ("done", "failed", "quarantined"):
        metrics.stage_finished("motion", state, 1.0)
    metrics.set_queue(1, 1)
    metrics.set_workers(2)
    metrics.newest_exposure_seen(now)
    metrics.exposure_done(now)
    metrics.observe_motion(10.0)
    metrics.observe_ctf(15000.0, 3.5)
    metrics.particles_extracted(10)
    metrics.set_exposures_per_hour(100.0)
    metrics.set_project_disk(1, 2)
    metrics.set_paused("disk_full", True)
    metrics.mqtt_dropped()
    metrics.mqtt_outbox(1)
    host, port = metrics.start_http_server()
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        metrics.stop_http_server()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_dashboard_and_rules_use_only_exported_metric_names() -> None:
    exported = scraped_names()
    for name in ("grafana-dashboard.json", "alerts.yml", "alerts_test.yml"):
        used = set(NAME.findall((MONITORING / name).read_text()))
        assert used, name
        assert used <= exported, (
            f"{name} uses unknown metrics {sorted(used - exported)}"
        )
