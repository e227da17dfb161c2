"""The online 3D initial model inside a real service: fed the 2D selection, class3d
events over a real mosquitto broker, files under InitialModel/job008, metrics
scraped over HTTP, and a drain checkpoint that a restarted service resumes from.

Particles come from the test stage of the 2D live tests (40 simulated particles
per exposure at box 24); every 2D class is selected (``score_threshold = 0``) so
the 3D pool is the 2D pool.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import urllib.request
from pathlib import Path
from typing import Any

import mrcfile
import pytest
from pipeliner.project_graph import ProjectGraph
from prometheus_client.parser import text_string_to_metric_families

from livestream.class3d.actor import Class3dActor
from livestream.class3d.live import SUMMARY_NAME
from livestream.class3d.refinement import REBALANCE_SUMMARY_NAME
from livestream.class3d.refinement import SUMMARY_NAME as REFINED_NAME
from livestream.cli.main import main as cli_main
from livestream.config import ServiceConfig
from livestream.daemon import ServiceHandle, run_service
from livestream.telemetry.reporting import EventType, ServiceEvent
from tests.livestream.class2d.test_class2d_live import (
    PER_EXPOSURE,
    _config,
    _Service,
)
from tests.livestream.conftest import MosquittoBroker
from tests.livestream.service_fixtures import write_session
from tests.livestream.telemetry.test_mqtt import Received, stop, subscribe, wait_for

pytestmark = pytest.mark.slow  # two services each, 30-50 s on a shared 2-core box

JOB = "InitialModel/job008"
CLASS3D = {
    "start_particles": 60,
    "mini_batch": 40,
    "n_minibatches": 6,
    "snapshot_every": 2,
    "box_px": 24,
    "angular_step_deg": 30.0,
    "max_passes": 2.0,
    "seed": 4,
}


def _config3d(
    root: Path, session: Path, movies: Path, **sections: Any
) -> ServiceConfig:
    # every 2D class selected; the 2D classes snapshot again after a restart
    class2d = {"score_threshold": 0.0, "particle_outlier_mad": None, "max_passes": 6.0}
    return _config(
        root,
        session,
        movies,
        class2d=class2d,
        class3d={**CLASS3D, **sections.pop("class3d", {})},
        **sections,
    )


def _models(service: _Service) -> list[ServiceEvent]:
    return [e for e in service.events if e.type is EventType.CLASS3D_SNAPSHOT]


def _scrape(service: _Service) -> dict[str, float]:
    """The ``livestream_class3d_*`` samples of the service's ``/metrics``."""
    address = service.handles[0].metrics_address
    assert address is not None
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name + "".join(f"{{{v}}}" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("livestream_class3d")
    }


async def test_live_initial_model_publishes_snapshots_files_and_metrics(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    broker = mosquitto_broker
    session, movies, _ = write_session(tmp_path, 2)
    config = _config3d(
        tmp_path,
        session,
        movies,
        mqtt={"host": broker.host, "port": broker.port},
        metrics={"enabled": True, "port": 0},
    )
    sink: Received = []
    ready = asyncio.Event()
    subscriber = asyncio.create_task(
        subscribe(broker, f"livestream/{session.name}/class3d", sink, ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    service = _Service(config)
    try:
        await wait_for(lambda: len(sink) >= 1, 90)
        metrics: dict[str, float] = {}

        def consistent() -> bool:
            metrics.update(_scrape(service))
            return metrics["livestream_class3d_snapshots_total"] == len(sink)

        await wait_for(consistent, 20)
    finally:
        await service.finish()
        await stop(subscriber)

    topic, payload, retained = sink[-1]
    assert topic == f"livestream/{session.name}/class3d"
    assert not retained
    assert payload["schema"] == "livestream.class3d/1"
    assert payload["session"] == session.name
    assert payload["iteration"] % CLASS3D["snapshot_every"] == 0
    assert payload["pool_particles"] >= CLASS3D["start_particles"]
    assert 0 < payload["particles_seen"] <= payload["pool_particles"]
    assert 0 < payload["orientation_coverage"] <= 1
    job = tmp_path / "project" / JOB
    with mrcfile.open(job / "initial_model.mrc") as mrc:
        assert mrc.data.shape == (24, 24, 24)
    assert Path(payload["slices_png"][0]).read_bytes()[:4] == b"\x89PNG"
    assert Path(payload["fsc_png"]).is_file()
    assert Path(payload["directions_png"]).is_file()
    assert metrics["livestream_class3d_iteration"] >= payload["iteration"]
    assert metrics["livestream_class3d_start_particles"] == CLASS3D["start_particles"]
    assert metrics["livestream_class3d_resolution_angstrom"] == pytest.approx(
        payload["resolution_a"]
    )
    assert metrics["livestream_class3d_class_fraction{1}"] == pytest.approx(1.0)
    assert metrics["livestream_class3d_orientation_coverage_ratio"] == pytest.approx(
        payload["orientation_coverage"]
    )
    assert metrics["livestream_class3d_minibatch_duration_seconds_count"] >= 1
    assert metrics["livestream_class3d_last_minibatch_timestamp_seconds"] > 0
    assert metrics["livestream_class3d_errors_total{step}"] == 0
    assert metrics["livestream_class3d_errors_total{feed}"] == 0
    events = _models(service)
    assert events
    assert events[-1].detail == payload["slices_png"][0]
    assert not math.isnan(events[-1].figures["resolution_a"])


async def test_drain_checkpoints_and_a_restart_continues_the_model(
    tmp_path: Path,
) -> None:
    session, movies, microscope = write_session(tmp_path, 2)
    config = _config3d(tmp_path, session, movies, class3d={"max_passes": 50.0})
    first = _Service(config)
    try:
        await wait_for(lambda: len(_models(first)) >= 1, 90)
    finally:
        await first.finish()  # finish the mini-batch, checkpoint
    folder = tmp_path / "project" / JOB
    saved = Class3dActor.resume(folder)
    assert saved is not None
    assert saved.state is not None
    checkpointed = saved.state.minibatch_index
    assert checkpointed >= _models(first)[0].figures["iteration"]

    microscope.acquire(2)  # more particles while the service is down
    second = _Service(config)
    try:
        await wait_for(lambda: len(_models(second)) >= 1, 90)
        live = second.handles[0].class3d
        assert live is not None
        # the selection grows snapshot by snapshot: wait for all of it
        await wait_for(
            lambda: live.actor is not None and live.actor.pool_size == 3 * PER_EXPOSURE,
            90,
        )
    finally:
        await second.finish()
    resumed = [e.figures["iteration"] for e in _models(second)]
    assert resumed[0] > checkpointed  # continued, not restarted from 0
    final = Class3dActor.resume(folder)
    assert final is not None
    assert final.state is not None
    assert final.state.minibatch_index > checkpointed
    keys = final.pool.table["rlnImageName"]
    assert len(set(keys)) == len(keys)  # none fed twice
    assert final.pool_size == 3 * PER_EXPOSURE


class _SignalledService:
    """``run_service`` with its signal handlers (SIGUSR1 from ``refine-now``
    reaches it: the test process is the daemon's)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.events: list[ServiceEvent] = []
        self.handles: list[ServiceHandle] = []
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            run_service(
                config,
                stop=self.stop,
                listeners=(self.events.append,),
                on_started=self.handles.append,
            )
        )

    async def finish(self, timeout_s: float) -> None:
        self.stop.set()
        assert await asyncio.wait_for(self.task, timeout_s) == 0


def _refine3d(service: _SignalledService) -> list[tuple[str, str]]:
    """(step, status) of each refine3d event."""
    return [(e.stage, e.state) for e in service.events if e.type is EventType.REFINE3D]


async def test_two_live_classes_a_refinement_at_drain_once_and_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 2: two class maps and fractions in the event; at drain the map is
    refined and rebalanced once; after a restart, `livestream refine-now` (its
    SIGUSR1) refines on request and the drain does not refine the same map again."""
    session, movies, _ = write_session(tmp_path, 2)
    config = _config3d(
        tmp_path,
        session,
        movies,
        class3d={
            "classes": 2,
            "max_passes": 4.0,  # past n_minibatches: the classification runs
            "classify_iterations": 1,  # the wiring is tested here, not convergence
            "refine_at_drain": True,
            "rebalance_at_drain": True,
            "refine_max_iterations": 2,  # the least the config allows
        },
        workers={"drain_timeout_s": 240.0},
    )
    project = tmp_path / "project"
    first = _SignalledService(config)
    try:
        await wait_for(lambda: len(_models(first)) >= 1, 90)
        live = first.handles[0].class3d
        assert live is not None
        # the whole selection, processed max_passes times: the model pauses
        await wait_for(
            lambda: (
                live.actor is not None
                and live.actor.pool_size == 2 * PER_EXPOSURE
                and not live.actor.ready()
            ),
            120,
        )
        # the live classification of the whole selection against the K maps
        await wait_for(lambda: ("classify", "done") in _refine3d(first), 120)
    finally:
        await first.finish(240)
    model = json.loads((project / JOB / SUMMARY_NAME).read_text())  # the event body
    assert model["classes"] == 2
    assert len(model["maps"]) == 2
    assert all(Path(p).is_file() for p in model["maps"])
    assert len(model["class_fractions"]) == 2
    assert sum(model["class_fractions"]) == pytest.approx(1.0, abs=1e-3)
    assert _refine3d(first)[-2:] == [("refine3d", "done"), ("rebalance", "done")]
    classes = json.loads((project / "Class3D/job011/run_classes.json").read_text())
    assert classes["n_particles"] <= 2 * PER_EXPOSURE
    assert classes["model_iteration"] >= CLASS3D["n_minibatches"]
    assert len(classes["class_fractions"]) == 2
    assert sum(classes["class_fractions"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(classes["class_counts"]) == classes["n_particles"]
    assert all(Path(p).is_file() for p in classes["maps"])
    refined = json.loads((project / "Refine3D/job009" / REFINED_NAME).read_text())
    assert refined["trigger"] == "drain"
    assert refined["n_particles"] == 2 * PER_EXPOSURE
    assert refined["model_iteration"] == model["iteration"]
    rebalanced = project / "External/job010" / REBALANCE_SUMMARY_NAME
    assert (
        json.loads(rebalanced.read_text())["refinement_utc"]
        == (refined["finished_utc"])
    )

    second = _SignalledService(config)  # restart: nothing is redone at start
    try:
        await wait_for(lambda: len(second.handles) == 1, 30)
        refinement = second.handles[0].refinement
        assert refinement is not None
        assert os.path.exists(project / "livestream.pid")
        assert cli_main(["refine-now", str(project)]) == 0  # signals this process
        await wait_for(
            lambda: any(e.type is EventType.REFINE3D for e in second.events), 120
        )
    finally:
        await second.finish(240)
    # the request's refinement, then (drain) its rebalance, and no other
    assert _refine3d(second) == [("refine3d", "done"), ("rebalance", "done")]
    on_request = json.loads((project / "Refine3D/job009" / REFINED_NAME).read_text())
    assert on_request["trigger"] == "request"  # the drain did not refine it again
    assert on_request["key"] == refined["key"]
    assert refinement.n_runs == 2
    assert not (project / "livestream.pid").exists()
    monkeypatch.chdir(project)  # the pipeliner reads the project's jobs
    with ProjectGraph(pipeline_dir=".", read_only=True) as graph:
        procs = {p.name: (p.type, p.status) for p in graph.process_list}
        assert procs["Class3D/job011/"] == ("relion.class3d", "Succeeded")
        assert procs["Refine3D/job009/"] == ("relion.refine3d", "Succeeded")
        nodes = {n.name: n.type for n in graph.node_list}
        stem = Path(classes["data_star"]).name.removesuffix("_data.star")
        assert nodes[f"Class3D/job011/{stem}_class002.mrc"] == (
            "DensityMap.mrc.relion.class3d"
        )
