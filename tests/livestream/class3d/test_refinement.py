"""The refinement of the live 3D map (:mod:`livestream.class3d.refinement`) on a
real project folder: a request served once by a real ``livestream refine3d``
child process, the Refine3D job read back by the CCP-EM pipeliner, rebalance at
drain, and a refinement that cannot finish by the drain deadline abandoned with
the previous result left whole.

Particles: 80 simulated projections (12 views, random psi and shifts, a CTF
each) of a phantom at box 24, 4 Å/px, written as the 2D selection; the initial
model is the phantom at box 16 (the actor's working box), resampled by the
refinement to the particles' box.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.class3d.classification import CLASSES_NAME
from livestream.class3d.refinement import (
    REBALANCE_SUMMARY_NAME,
    REQUEST_NAME,
    SUMMARY_NAME,
    LiveRefinement,
    read_request,
    write_request,
)
from livestream.cli.main import main as cli_main
from livestream.cli.status import read_status
from livestream.config import ServiceConfig, load_config
from livestream.ledger.store import Ledger
from livestream.project.pipeline import RelionPipeline
from livestream.project.pipeline_jobs import pipeline_jobs
from livestream.stages.registry import build_chain
from livestream.telemetry.broadcast import Broadcaster
from livestream.telemetry.reporting import EventType, Reporter, ServiceEvent
from pipelines.reconstruct.mask import resample_map
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume

pipeliner = pytest.importorskip("pipeliner")

from pipeliner.project_graph import ProjectGraph  # noqa: E402

PIXEL_A = 4.0
REFINE = "Refine3D/job009"
REBALANCE = "External/job010"


def _config(project: Path, **class3d: Any) -> ServiceConfig:
    return load_config(
        None,
        {
            "project": {"path": project},
            "stages": {"chain": ["motion", "ctf", "pick", "extract"]},
            "class3d": {
                "refine_max_iterations": 2,  # the least the config allows
                "start_particles": 60,
                **class3d,
            },
        },
    )


def _project(root: Path, *, model_iteration: int = 6) -> Path:
    """A project with the 2D selection and an initial-model snapshot."""
    project = root / "project"
    volume = phantom_volume(24, PIXEL_A, np.random.default_rng(8))
    data = simulate_views(
        volume,
        n_views=12,
        n_particles=80,
        pixel_size_a=PIXEL_A,
        snr=1.0,
        rng=np.random.default_rng(3),
    )
    optics, table = write_particle_set(project, "Particles/a.mrcs", data, PIXEL_A)
    selected = project / "Class2D/job007/run_selected.star"
    selected.parent.mkdir(parents=True)
    starfile.write({"optics": optics, "particles": table}, selected)
    _model(project, volume, model_iteration)
    Ledger(project / "livestream.sqlite").close()
    return project


def _model(project: Path, volume: np.ndarray, iteration: int) -> None:
    model = project / "InitialModel/job008"
    model.mkdir(parents=True, exist_ok=True)
    write_map(
        model / "initial_model.mrc",
        resample_map(volume, 16),
        pixel_size_a=PIXEL_A * 24 / 16,
    )
    summary = {  # the fields `livestream status` shows of a snapshot
        "iteration": iteration,
        "particles_seen": 80,
        "pool_particles": 80,
        "classes": 1,
        "symmetry": "C1",
        "resolution_a": 20.0,
        "orientation_coverage": 0.5,
        "slices_png": [],
    }
    (model / "run_class3d.json").write_text(json.dumps(summary))


def _refinement(
    config: ServiceConfig, events: list[ServiceEvent]
) -> tuple[LiveRefinement, RelionPipeline]:
    chain = build_chain(config.stages)
    pipeline = RelionPipeline(
        config.project.path, pipeline_jobs(config, chain, ["livestream", "run"])
    )
    reporter = Reporter(Broadcaster(listeners=(events.append,)))
    live = LiveRefinement(
        config.class3d,
        config.project.path,
        config.project.path / "Class2D/job007/run_selected.star",
        reporter,
        on_done=pipeline.write,
    )
    return live, pipeline


def _check_pipeline(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeliner lists the Refine3D and External jobs, their nodes and inputs."""
    monkeypatch.chdir(project)
    with ProjectGraph(pipeline_dir=".", read_only=True) as graph:
        procs = {p.name: (p.type, p.status) for p in graph.process_list}
        assert procs[f"{REFINE}/"] == ("relion.refine3d", "Succeeded")
        assert procs[f"{REBALANCE}/"] == ("relion.external", "Succeeded")
        nodes = {n.name: n.type for n in graph.node_list}
        assert (
            nodes[f"{REFINE}/run_data.star"]
            == "ParticleGroupMetadata.star.relion.refine3d"
        )
        assert nodes[f"{REFINE}/run_class001.mrc"] == "DensityMap.mrc.relion.refine3d"
        refine = graph.find_process(f"{REFINE}/")
        assert {n.name for n in refine.input_nodes} == {
            "InitialModel/job008/initial_model.mrc",
            "Class2D/job007/run_selected.star",
        }
        rebalanced = graph.find_process(f"{REBALANCE}/")
        assert [n.name for n in rebalanced.input_nodes] == [f"{REFINE}/run_data.star"]


async def _until(condition: Any, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not condition():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.slow  # two child processes (refine3d, rebalance): 15-30 s on 2 cores
async def test_a_request_is_refined_once_and_the_pipeliner_reads_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = _project(tmp_path)
    config = _config(project, rebalance_at_drain=True)
    events: list[ServiceEvent] = []
    live, pipeline = _refinement(config, events)
    # no service runs: the command writes the request and signals nobody
    assert cli_main(["refine-now", str(project), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["signalled_pid"] is None
    request = read_request(project)
    assert request is not None
    assert request["request_id"] == answer["request_id"]
    task = asyncio.create_task(live.run())  # serves the waiting request at start
    folder = project / REFINE
    # the marker first, then the request is dropped
    await _until(lambda: not (project / REQUEST_NAME).exists(), 120)
    marker = json.loads((folder / SUMMARY_NAME).read_text())
    assert marker["status"] == "done"
    assert marker["trigger"] == "request"
    assert marker["request_id"] == answer["request_id"]
    assert marker["n_particles"] == 80
    assert marker["model_iteration"] == 6
    assert 8.0 <= marker["resolution_a"] < 100.0
    assert not (project / "Refine3D/.job009.running").exists()
    for name in (
        "run_class001.mrc",
        "run_half1_class001_unfil.mrc",
        "run_half2_class001_unfil.mrc",
        "run_postprocess_masked.mrc",
        "run_reference.mrc",
    ):
        with mrcfile.open(folder / name) as mrc:
            assert mrc.data.shape == (24, 24, 24), name
            assert float(mrc.voxel_size.x) == pytest.approx(PIXEL_A)
    assert (folder / "run_fsc.png").read_bytes()[:4] == b"\x89PNG"
    data = starfile.read(folder / "run_data.star")
    assert len(data["particles"]) == 80
    assert set(data["particles"]["rlnRandomSubset"]) == {1, 2}
    assert data["particles"]["rlnAngleTilt"].std() > 1.0  # poses were searched
    model = starfile.read(folder / "run_model.star")
    assert "rlnGoldStandardFsc" in model["model_class_1"]
    done = [e for e in events if e.type is EventType.REFINE3D]
    assert [e.state for e in done] == ["done"]
    assert done[0].figures["resolution_a"] == pytest.approx(marker["resolution_a"])
    assert done[0].detail == str(folder / "run_class001.mrc")

    # the same request again (a restart before the request file was removed)
    (project / REQUEST_NAME).write_text(
        json.dumps({"request_id": answer["request_id"]})
    )
    live.wake()
    await _until(lambda: not (project / REQUEST_NAME).exists(), 10)
    assert live.n_runs == 1  # served already: not refined again

    # drain: same map and particles, so no refinement; the rebalance runs once
    deadline = asyncio.get_running_loop().time() + 120
    await live.drain(task, deadline)
    assert live.n_runs == 2
    rebalance = json.loads((project / REBALANCE / REBALANCE_SUMMARY_NAME).read_text())
    assert rebalance["refinement_utc"] == marker["finished_utc"]
    assert rebalance["n_rebalanced"] + rebalance["n_excluded"] == 80
    kept = starfile.read(project / rebalance["rebalanced_path"])
    assert len(kept["particles"]) == rebalance["n_rebalanced"]
    pipeline.write(finished=True)

    _check_pipeline(project, monkeypatch)

    status = read_status(project)
    assert status["refine3d"]["resolution_a"] == marker["resolution_a"]
    assert status["refine3d"]["rebalance"]["n_excluded"] == rebalance["n_excluded"]
    assert status["refine3d"]["requested"] is None
    assert cli_main(["status", "--project", str(project)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"refine3d: {REFINE} (request, ")
    assert f"{rebalance['n_excluded']} excluded" in line


async def test_a_refinement_past_the_drain_deadline_is_abandoned(
    tmp_path: Path,
) -> None:
    project = _project(tmp_path)
    config = _config(project, refine_at_drain=True)
    events: list[ServiceEvent] = []
    live, _ = _refinement(config, events)
    task = asyncio.create_task(live.run())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await live.drain(task, started + 1.5)  # far too short for the child
    assert loop.time() - started < 1.5 + 2.0  # the drain kept its deadline
    assert live.n_runs == 1
    ends = [e for e in events if e.type is EventType.REFINE3D]
    assert [e.state for e in ends] == ["abandoned"]
    assert not (project / REFINE).exists()  # nothing finished: no job listed
    assert not (project / "Refine3D/.job009.running").exists()
    # at the next drain (a restart) it is done, once
    events.clear()
    live, _ = _refinement(config, events)
    task = asyncio.create_task(live.run())
    await live.drain(task, loop.time() + 120)
    marker = json.loads((project / REFINE / SUMMARY_NAME).read_text())
    assert marker["trigger"] == "drain"
    assert [e.state for e in events if e.type is EventType.REFINE3D] == ["done"]
    live, _ = _refinement(config, events)
    task = asyncio.create_task(live.run())
    await live.drain(task, loop.time() + 120)
    assert live.n_runs == 0  # same map and particles: not refined again
    # a new model snapshot: the next drain refines it, and a refinement cut
    # short leaves the previous one whole
    volume = phantom_volume(24, PIXEL_A, np.random.default_rng(8))
    _model(project, volume, 8)
    live, _ = _refinement(config, events)
    task = asyncio.create_task(live.run())
    await live.drain(task, loop.time() + 1.0)
    assert live.n_runs == 1
    assert json.loads((project / REFINE / SUMMARY_NAME).read_text()) == marker
    assert (project / REFINE / "run_class001.mrc").is_file()
    assert not (project / "Refine3D/.job009.running").exists()


async def test_a_refinement_of_bad_input_fails_with_the_file_and_field(
    tmp_path: Path,
) -> None:
    project = _project(tmp_path)
    selected = project / "Class2D/job007/run_selected.star"
    blocks = starfile.read(selected)
    blocks["particles"]["rlnImageName"] = blocks["particles"][
        "rlnImageName"
    ].str.replace("Particles/a.mrcs", "Particles/gone.mrcs")
    starfile.write(blocks, selected)
    events: list[ServiceEvent] = []
    live, _ = _refinement(_config(project), events)
    write_request(project)
    task = asyncio.create_task(live.run())
    await _until(lambda: not (project / REQUEST_NAME).exists(), 60)
    [failed] = [e for e in events if e.type is EventType.REFINE3D]
    assert failed.state == "failed"
    reason = (project / "Refine3D/.job009.running/run.err").read_text()
    assert "field 'rlnImageName' has value 'Particles/gone.mrcs'" in reason
    assert not (project / REFINE).exists()  # no finished run: no job
    await live.drain(task, asyncio.get_running_loop().time() + 10)


def test_the_live_classification_is_due_after_the_schedule_and_on_growth(
    tmp_path: Path,
) -> None:
    project = _project(tmp_path, model_iteration=4)
    config = _config(project, classes=2, n_minibatches=6, reclassify_growth=0.5)
    events: list[ServiceEvent] = []
    live, _ = _refinement(config, events)
    classification = live.classification
    assert classification._due() is None  # the VDAM schedule has not run through
    volume = phantom_volume(24, PIXEL_A, np.random.default_rng(8))
    _model(project, volume, 6)
    due = classification._due()
    assert due is not None
    assert due[1] == 80  # the selection's particles
    marker = project / "Class3D/job011" / CLASSES_NAME
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"n_particles": 60}))  # grown by a third: not yet
    assert classification._due() is None
    marker.write_text(json.dumps({"n_particles": 50}))  # grown by 60 %
    assert classification._due() is not None
    one_class = _config(project, classes=1, n_minibatches=6)
    live, _ = _refinement(one_class, events)
    assert live.classification._due() is None  # K = 1: nothing to classify


async def test_a_classification_running_at_drain_is_stopped_at_once(
    tmp_path: Path,
) -> None:
    project = _project(tmp_path)  # model iteration 6: the schedule has run
    summary_path = project / "InitialModel/job008/run_class3d.json"
    summary = json.loads(summary_path.read_text())
    model_map = str(project / "InitialModel/job008/initial_model.mrc")
    summary["maps"] = [model_map, model_map]  # K = 2
    summary_path.write_text(json.dumps(summary))
    config = _config(project, classes=2, n_minibatches=6, refine_at_drain=True)
    events: list[ServiceEvent] = []
    live, _ = _refinement(config, events)
    task = asyncio.create_task(live.run())
    running = project / "Class3D/.job011.running/run.err"
    await _until(running.is_file, 30)  # the classification's child has started
    loop = asyncio.get_running_loop()
    started = loop.time()
    await live.drain(task, started + 600)
    ends = [(e.stage, e.state) for e in events if e.type is EventType.REFINE3D]
    assert ends[0] == ("classify", "abandoned")
    assert ends[1:] == [("refine3d", "done")]  # the drain's time went to this
    assert not (project / "Class3D/job011").exists()
    assert not running.parent.exists()
