"""The online 2D classifier inside a real service: class2d events over a real
mosquitto broker, files under Class2D/job007, metrics scraped over HTTP, a drain
checkpoint that a restarted service resumes from, errors that are counted while the
service goes on, and no classifier when ``[class2d]`` is off.

Particles come from a test stage (``run_particle_stage``, run in the worker
processes like any stage) that simulates 40 particles of a phantom at box 24 per
exposure and feeds the job index as an extraction stage (``index = "extract"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from livestream.class2d.actor import CHECKPOINT_NAME, ActorSettings, Class2dActor
from livestream.cli.status import read_status
from livestream.config import ConfigError, ServiceConfig, load_config
from livestream.daemon import ServiceHandle, run_service
from livestream.ledger.store import StageResult
from livestream.stages.registry import StageParams, StageTask
from livestream.telemetry.reporting import EventType, ServiceEvent
from tests.livestream.conftest import MosquittoBroker
from tests.livestream.service_fixtures import service_config, write_session
from tests.livestream.telemetry.test_mqtt import Received, stop, subscribe, wait_for

PER_EXPOSURE = 40
JOB = "Class2D/job007"


# -- the test stage (imported by the worker processes) ---------------------------
class ParticleStageParams(StageParams):
    index: str = "extract"
    n_particles: int = PER_EXPOSURE
    broken_prefix: str = ""  # exposures whose STAR names a stack that is not there


def run_particle_stage(task: StageTask, params: ParticleStageParams) -> StageResult:
    """Simulate ``n_particles`` of 2 views of a phantom (box 24, 4 Å/px) and write
    them as ``Particles/<id>.mrcs`` with ``Particles/<id>_particles.star``."""
    import starfile

    from pipelines.simulate.particle_sets import simulate_views, write_particle_set
    from pipelines.simulate.volumes import phantom_volume

    exposure_id = task.exposure.exposure_id
    volume = phantom_volume(24, 4.0, np.random.default_rng(8))
    rng = np.random.default_rng(zlib.crc32(exposure_id.encode()))
    data = simulate_views(
        volume,
        n_views=2,
        n_particles=params.n_particles,
        pixel_size_a=4.0,
        snr=0.5,
        rng=rng,
    )
    stack = f"Particles/{exposure_id}.mrcs"
    optics, table = write_particle_set(task.project_path, stack, data, 4.0)
    if params.broken_prefix and exposure_id.startswith(params.broken_prefix):
        table["rlnImageName"] = table["rlnImageName"].str.replace(
            stack, f"Particles/missing_{exposure_id}.mrcs"
        )
    star = f"Particles/{exposure_id}_particles.star"
    starfile.write({"optics": optics, "particles": table}, task.project_path / star)
    return StageResult(
        stage=task.stage,
        outputs={"particles_star": star},
        figures={"n_particles": float(params.n_particles)},
    )


run_particle_stage.params_model = ParticleStageParams  # type: ignore[attr-defined]


# -- helpers ---------------------------------------------------------------------
def _config(root: Path, session: Path, movies: Path, **sections: Any) -> ServiceConfig:
    stage = {"kind": f"{__name__}:run_particle_stage", "index": "extract"}
    class2d = {
        "n_classes": 3,
        "min_pool": 80,
        "snapshot_every": 2,
        "psi_step_deg": 20.0,
        "offset_range_px": 2.0,
        "n_minibatches": 8,
        "max_passes": 2.0,
        "seed": 3,
    }
    return service_config(
        session,
        movies,
        root / "project",
        stages={
            "chain": ["particles"],
            "particles": {**stage, **sections.pop("stage", {})},
        },
        class2d={**class2d, **sections.pop("class2d", {})},
        **sections,
    )


def _scrape(handle: ServiceHandle) -> dict[str, float]:
    address = handle.metrics_address
    assert address is not None
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name + "".join(f"{{{v}}}" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("livestream_class2d")
    }


class _Service:
    """``run_service`` in a task, with its handle and every event it reported."""

    def __init__(self, config: ServiceConfig) -> None:
        self.stop = asyncio.Event()
        self.events: list[ServiceEvent] = []
        self.handles: list[ServiceHandle] = []
        self.task = asyncio.create_task(
            run_service(
                config,
                stop=self.stop,
                listeners=(self.events.append,),
                on_started=self.handles.append,
                install_signal_handlers=False,
            )
        )

    def done(self) -> int:
        return sum(e.type is EventType.EXPOSURE_DONE for e in self.events)

    def snapshots(self) -> list[ServiceEvent]:
        return [e for e in self.events if e.type is EventType.CLASS2D_SNAPSHOT]

    async def finish(self) -> None:
        self.stop.set()
        assert await asyncio.wait_for(self.task, 30) == 0


# -- tests -----------------------------------------------------------------------
async def test_live_classifier_publishes_snapshots_files_and_metrics(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    broker = mosquitto_broker
    session, movies, _ = write_session(tmp_path, 3)
    config = _config(
        tmp_path,
        session,
        movies,
        mqtt={"host": broker.host, "port": broker.port},
        metrics={"enabled": True, "port": 0},
        class2d={"snapshot_every": 1},  # every mini-batch: the metrics match it
    )
    sink: Received = []
    ready = asyncio.Event()
    subscriber = asyncio.create_task(
        subscribe(broker, f"livestream/{session.name}/class2d", sink, ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    service = _Service(config)
    try:
        await wait_for(lambda: len(sink) >= 1, 40)
        await wait_for(lambda: service.done() == 3, 30)
        handle = service.handles[0]
        live = handle.class2d
        assert live is not None
        assert live.actor is not None
        # wait until the classifier idles (max_passes) with every particle
        await wait_for(
            lambda: (
                live.actor is not None
                and live.actor.pool_size == 3 * PER_EXPOSURE
                and not live.actor.ready()
            ),
            40,
        )
        metrics: dict[str, float] = {}

        def consistent() -> bool:
            metrics.update(_scrape(handle))
            return metrics["livestream_class2d_snapshots_total"] == len(sink) and (
                metrics["livestream_class2d_iteration"] == sink[-1][1]["iteration"]
            )

        await wait_for(consistent, 20)
    finally:
        await service.finish()
        await stop(subscriber)

    topic, payload, retained = sink[-1]
    assert topic == f"livestream/{session.name}/class2d"
    assert not retained
    assert payload["schema"] == "livestream.class2d/1"
    assert payload["session"] == session.name
    assert {"message_id", "published_utc", "class_counts", "class_scores"} <= set(
        payload
    )
    iterations = [p["iteration"] for _, p, _ in sink]
    assert iterations == sorted(iterations)
    assert iterations[0] >= 1
    assert len(payload["class_counts"]) == 3
    assert sum(payload["class_counts"]) == 3 * PER_EXPOSURE  # every pool particle
    assert 0 < payload["particles_seen"] <= 3 * PER_EXPOSURE
    job = tmp_path / "project" / JOB
    stem = f"run_it{payload['iteration']:03d}"  # RELION's name of the iteration
    assert Path(payload["classes_mrcs"]) == job / f"{stem}_classes.mrcs"
    assert (job / "run_classes.mrcs").readlink() == Path(f"{stem}_classes.mrcs")
    kept = sorted(job.glob("run_it*_optimiser.star"))  # the newest three
    assert 1 <= len(kept) <= 3
    assert kept[-1].name == f"{stem}_optimiser.star"
    assert Path(payload["montage_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (job / "run_classes.mrcs").stat().st_size > 3 * 24 * 24 * 4
    assert (
        json.loads((job / "run_class2d.json").read_text())["iteration"]
        == (payload["iteration"])
    )
    assert metrics["livestream_class2d_iteration"] > 0
    assert metrics["livestream_class2d_particles_seen"] == payload["particles_seen"]
    assert metrics["livestream_class2d_pool_particles"] == 3 * PER_EXPOSURE
    assert metrics["livestream_class2d_active_classes"] == payload["active_classes"]
    assert metrics["livestream_class2d_selected_classes"] == len(
        payload["selected_classes"]
    )
    resolution = metrics["livestream_class2d_resolution_angstrom"]
    if payload["resolution_a"] is None:
        assert math.isnan(resolution)
    else:
        assert resolution == pytest.approx(payload["resolution_a"])
    assert (
        metrics["livestream_class2d_minibatch_duration_seconds_count"]
        == (payload["iteration"])
    )
    assert metrics["livestream_class2d_errors_total{feed}"] == 0
    assert metrics["livestream_class2d_errors_total{step}"] == 0


async def test_drain_checkpoints_and_a_restart_resumes_without_refeeding(
    tmp_path: Path,
) -> None:
    session, movies, microscope = write_session(tmp_path, 2)
    config = _config(tmp_path, session, movies, class2d={"max_passes": 50.0})
    first = _Service(config)
    try:
        await wait_for(lambda: len(first.snapshots()) >= 1, 40)
    finally:
        await first.finish()  # the stop event: finish the mini-batch, checkpoint
    folder = tmp_path / "project" / JOB
    saved = Class2dActor.resume(folder)
    assert saved is not None
    assert saved.state is not None
    checkpointed = saved.state.minibatch_index
    assert checkpointed >= first.snapshots()[0].figures["iteration"] >= 2
    assert saved.pool_size == 2 * PER_EXPOSURE

    microscope.acquire(2)  # one more exposure while the service is down
    second = _Service(config)
    try:
        await wait_for(lambda: second.done() == 1 and second.snapshots() != [], 40)
        live = second.handles[0].class2d
        assert live is not None
        assert live.actor is not None
        await wait_for(lambda: live.actor.pool_size == 3 * PER_EXPOSURE, 20)
    finally:
        await second.finish()
    resumed = [e.figures["iteration"] for e in second.snapshots()]
    assert resumed[0] > checkpointed  # continued, not restarted from 0
    final = Class2dActor.resume(folder)
    assert final is not None
    assert final.state is not None
    keys = final.pool.table["rlnImageName"]
    assert final.pool_size == len(set(keys)) == 3 * PER_EXPOSURE  # none twice
    assert final.state.minibatch_index > checkpointed
    status = read_status(tmp_path / "project")["class2d"]  # `livestream status`
    assert status["iteration"] == resumed[-1]
    assert status["montage_png"] == str(folder / "run_montage.png")


async def test_missing_stack_and_bad_checkpoint_are_counted_and_service_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session, movies, microscope = write_session(tmp_path, 3)
    folder = tmp_path / "project" / JOB
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    config = _config(
        tmp_path,
        session,
        movies,
        metrics={"enabled": True, "port": 0},
        stage={"broken_prefix": "FoilHole_20001_"},
    )
    caplog.set_level(logging.ERROR, logger="livestream")
    service = _Service(config)
    try:
        await wait_for(lambda: service.done() == 3, 30)
        await wait_for(lambda: len(service.snapshots()) >= 1, 40)
        microscope.acquire(3)  # the service and the classifier keep going
        await wait_for(lambda: service.done() == 4, 30)
        live = service.handles[0].class2d
        assert live is not None
        await wait_for(
            lambda: live.actor is not None and live.actor.pool_size == 3 * PER_EXPOSURE,
            20,
        )
        metrics = _scrape(service.handles[0])
    finally:
        await service.finish()
    assert metrics["livestream_class2d_errors_total{resume}"] == 1
    assert metrics["livestream_class2d_errors_total{feed}"] == 1  # once, not per feed
    assert metrics["livestream_class2d_errors_total{step}"] == 0
    assert (folder / f"{CHECKPOINT_NAME}.unreadable").exists()
    messages = [r.getMessage() for r in caplog.records if "class2d" in r.getMessage()]
    missing = [m for m in messages if "stack not found" in m]
    assert len(missing) == 1
    assert "rlnImageName" in missing[0]
    assert "missing_FoilHole_20001_" in missing[0]
    assert any("not a class2d actor checkpoint" in m for m in messages)


async def test_disabled_classifier_runs_no_task_and_writes_nothing(
    tmp_path: Path,
) -> None:
    session, movies, _ = write_session(tmp_path, 2)
    config = _config(tmp_path, session, movies, class2d={"enabled": False})
    service = _Service(config)
    try:
        await wait_for(lambda: service.done() == 2, 30)
    finally:
        await service.finish()
    project = tmp_path / "project"
    assert service.handles[0].class2d is None
    assert (project / "Extract/job006/particles.star").exists()  # input was there
    assert not (project / "Class2D").exists()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "class2d"]


def test_class2d_config_errors_name_the_key(tmp_path: Path) -> None:
    assert load_config().class2d.enabled
    assert load_config().class2d.n_classes == 50
    with pytest.raises(ConfigError, match=r"key 'class2d\.n_classes'"):
        load_config(None, {"class2d": {"n_classes": 0}})
    with pytest.raises(ConfigError, match=r"key 'class2d\.new_fraction'"):
        load_config(None, {"class2d": {"new_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"key 'class2d\.classes'"):
        load_config(None, {"class2d": {"classes": 5}})


def test_pool_leaves_out_short_and_wrong_box_stacks_and_names_them(
    tmp_path: Path,
) -> None:
    import pandas as pd
    import starfile

    from livestream.class2d.pool import ParticlePool
    from pipelines.io.outputs import write_mrc

    rng = np.random.default_rng(2)
    for name, shape in (("good", (4, 24, 24)), ("short", (2, 24, 24))):
        write_mrc(
            tmp_path / f"{name}.mrcs", rng.standard_normal(shape), pixel_size_a=4.0
        )
    write_mrc(
        tmp_path / "small.mrcs", rng.standard_normal((4, 16, 16)), pixel_size_a=4.0
    )
    names = [f"{i}@good.mrcs" for i in (1, 2, 3, 4)]
    names += ["3@short.mrcs", "1@small.mrcs", "1@gone.mrcs"]
    optics = pd.DataFrame(
        {"rlnOpticsGroup": [1], "rlnImagePixelSize": [4.0], "rlnImageSize": [24]}
    )
    table = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1})
    star = tmp_path / "particles.star"
    starfile.write({"optics": optics, "particles": table}, star)
    pool = ParticlePool(tmp_path)
    assert pool.feed(star) == 4  # the good stack only
    problems = {(p.path.name, p.field): p for p in pool.problems}
    assert set(problems) == {
        ("short.mrcs", "rlnImageName"),
        ("small.mrcs", "box"),
        (tmp_path.name, "rlnImageName"),
    }
    assert problems[("short.mrcs", "rlnImageName")].value == 3
    assert "gone.mrcs" in str(problems[(tmp_path.name, "rlnImageName")])
    assert pool.feed(star) == 0  # the good rows are known; the bad ones reported
    assert len(pool.problems) == 3


async def test_checkpoint_with_unreadable_stacks_is_kept_and_classifier_stays_off(
    tmp_path: Path,
) -> None:
    import starfile

    from livestream.class2d.live import Class2dLive
    from livestream.config import Class2dSection
    from livestream.telemetry.broadcast import Broadcaster
    from livestream.telemetry.metrics import ServiceMetrics
    from livestream.telemetry.recorder import MetricsRecorder
    from livestream.telemetry.reporting import Reporter
    from pipelines.simulate.particle_sets import simulate_views, write_particle_set
    from pipelines.simulate.volumes import phantom_volume

    rng = np.random.default_rng(4)
    data = simulate_views(
        phantom_volume(24, 4.0, rng),
        n_views=2,
        n_particles=20,
        pixel_size_a=4.0,
        snr=0.5,
        rng=rng,
    )
    optics, table = write_particle_set(tmp_path, "Particles/a.mrcs", data, 4.0)
    star = tmp_path / "particles.star"
    starfile.write({"optics": optics, "particles": table}, star)
    section = Class2dSection(n_classes=2, min_pool=10)
    actor = Class2dActor(tmp_path / JOB, ActorSettings(), seed=0, project=tmp_path)
    assert actor.feed(star) == 20
    checkpoint = actor.checkpoint()
    (tmp_path / "Particles/a.mrcs").unlink()  # e.g. a share not mounted yet

    metrics = ServiceMetrics()
    reporter = Reporter(Broadcaster(), metrics=MetricsRecorder(metrics))
    live = Class2dLive(section, tmp_path, star, reporter)
    await asyncio.wait_for(live.run(), 10)  # returns: nothing to run on
    assert live.actor is None
    assert checkpoint.exists()  # left for the next start
    assert not checkpoint.with_name(f"{CHECKPOINT_NAME}.unreadable").exists()
    errors = metrics.registry.get_sample_value(
        "livestream_class2d_errors_total", {"operation": "resume"}
    )
    assert errors == 1
