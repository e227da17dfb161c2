"""A live session makes a project that the CCP-EM pipeliner opens as a RELION
project: the real chain (motion -> ctf -> curate -> pick -> extract) and the online
2D classifier on a simulated session, then the pipeliner's own reader lists every
job with its type and status, every node exists on disk with its type, its STAR
validation accepts every STAR file we wrote, and its metadata report runs on the
Class2D job."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.cli.status import main as status_main
from livestream.cli.status import read_status
from livestream.config import ServiceConfig
from livestream.daemon import run_service
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.telemetry.reporting import EventType, ServiceEvent
from tests.livestream.service_fixtures import service_config

pipeliner = pytest.importorskip("pipeliner")

from pipeliner.api.api_utils import validate_starfile  # noqa: E402
from pipeliner.metadata_tools import get_metadata_chain  # noqa: E402
from pipeliner.project_graph import ProjectGraph  # noqa: E402

pytestmark = pytest.mark.slow

PROCESSES = {
    "Import/job001/": "relion.import.movies",
    "MotionCorr/job002/": "relion.motioncorr.own",
    "CtfFind/job003/": "relion.ctffind.ctffind4",
    "Select/job004/": "relion.select.onvalue",
    "AutoPick/job005/": "relion.autopick.log",
    "Extract/job006/": "relion.extract",
    "Class2D/job007/": "relion.class2d.vdam",
    "InitialModel/job008/": "relion.initialmodel",
}
NODES_SELECT = "Select/job004/micrographs.star"
NODES = {
    "Import/job001/movies.star": "MicrographMovieGroupMetadata.star.relion",
    "MotionCorr/job002/corrected_micrographs.star": (
        "MicrographGroupMetadata.star.relion.motioncorr"
    ),
    "CtfFind/job003/micrographs_ctf.star": "MicrographGroupMetadata.star.relion.ctf",
    "Select/job004/micrographs.star": "MicrographGroupMetadata.star.relion",
    "AutoPick/job005/autopick.star": "MicrographCoordsGroup.star.relion.autopick",
    "Extract/job006/particles.star": "ParticleGroupMetadata.star.relion",
}


def _config(root: Path) -> ServiceConfig:
    return service_config(
        root / "session",
        root / "session",  # the movies inside the session: reached via Movies/
        root / "project",
        workers={"n_processes": 1, "max_in_flight": 2, "max_attempts": 1},
        stages={
            "chain": ["motion", "ctf", "curate", "pick", "extract"],
            "motion": {"patches_x": 1},
            "curate": dict.fromkeys(
                ("max_ctf_resolution_a", "max_total_motion_a", "max_astigmatism_a")
            ),
            "pick": {"diameter_min_a": 50.0, "diameter_max_a": 90.0},
        },
        class2d={
            "n_classes": 2,
            "min_pool": 4,
            "snapshot_every": 1,
            "psi_step_deg": 30.0,
            "offset_range_px": 1.0,
            "n_minibatches": 3,
            "score_threshold": 0.0,  # every class selected: the 3D pool
            "particle_outlier_mad": None,
        },
        class3d={  # starts on the first selection, at a 16 px box
            "start_particles": 4,
            "mini_batch": 8,
            "snapshot_every": 1,
            "n_minibatches": 2,
            "box_px": 16,
            "angular_step_deg": 30.0,
        },
    )


async def _run(config: ServiceConfig, n: int, timeout_s: float) -> None:
    """Run the service until ``n`` exposures are done and Class2D and the
    initial model have a snapshot."""
    done: set[str] = set()
    stop = asyncio.Event()
    job = config.project.path / config.class2d.job
    initial_model = config.project.path / config.class3d.job

    def listen(event: ServiceEvent) -> None:
        if event.type is EventType.EXPOSURE_DONE:
            done.add(event.exposure_id)

    service = asyncio.create_task(
        run_service(
            config, stop=stop, listeners=(listen,), install_signal_handlers=False
        )
    )
    try:
        async with asyncio.timeout(timeout_s):
            while (
                len(done) < n
                or not list(job.glob("run_it*_optimiser.star"))
                or not list(initial_model.glob("run_it*_data.star"))
            ):
                await asyncio.sleep(0.2)
                if service.done():
                    break
    finally:
        stop.set()
        assert await service == 0


async def test_the_pipeliner_opens_the_live_project(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    microscope = SimulatedMicroscope(
        tmp_path / "session",
        tmp_path / "session",
        MicroscopeSettings(size_px=512, n_frames=12, n_particles=20, write_chunks=1),
        np.random.default_rng(11),
    )
    for index in range(2):
        microscope.acquire(index)
    config = _config(tmp_path)
    await _run(config, 2, timeout_s=240)
    project = config.project.path
    monkeypatch.chdir(project)  # the pipeliner reads paths relative to the project

    with ProjectGraph(pipeline_dir=".", read_only=True) as graph:
        procs = {p.name: (p.type, p.status) for p in graph.process_list}
        assert procs == {name: (t, "Succeeded") for name, t in PROCESSES.items()}
        assert graph.job_counter == 12  # job009-011: Refine3D, External, Class3D
        nodes = {n.name: n.type for n in graph.node_list}
        for name, label in NODES.items():
            assert nodes[name] == label
        class2d = [n for n in nodes if n.startswith("Class2D/")]
        assert sorted(nodes[n] for n in class2d) == [
            "OptimiserData.star.relion.class2d",
            "ParticleGroupMetadata.star.relion",  # run_selected.star
            "ParticleGroupMetadata.star.relion.class2d",
        ]
        initial = sorted(n for n in nodes if n.startswith("InitialModel/"))
        assert [nodes[n] for n in initial] == [
            "DensityMap.mrc.relion.initialmodel",  # initial_model.mrc
            "DensityMap.mrc.relion.initialmodel",  # run_itNNN_class001.mrc
            "ParticleGroupMetadata.star.relion.initialmodel",
        ]
        model = graph.find_process("InitialModel/job008/")
        assert [n.name for n in model.input_nodes] == [
            "Class2D/job007/run_selected.star"
        ]
        # drained at shutdown: the initial model's state is checkpointed
        assert Path("InitialModel/job008/actor_checkpoint.npz").is_file()
        assert all(Path(name).is_file() for name in nodes)
        extract = graph.find_process("Extract/job006/")
        assert sorted(n.name for n in extract.input_nodes) == [
            "AutoPick/job005/autopick.star",
            "Select/job004/micrographs.star",
        ]
        report, n_jobs = get_metadata_chain(
            graph, graph.find_process("Class2D/job007/")
        )
    assert n_jobs == len(PROCESSES) - 1  # Class2D and its ancestors
    jobs_md = report["Jobs metadata"]
    results = {job: md.get("results") for job, md in jobs_md.items()}
    assert results["Class2D/job007/"]["Classes"] == 2
    assert results["Class2D/job007/"]["ContributingMicrographs"] == 2
    assert results["Import/job001/"]["MovieCount"] == 2
    assert results["MotionCorr/job002/"]["MicrographCount"] == 2
    assert results["CtfFind/job003/"]["MicrographCount"] == 2
    # (the pipeliner 1.6 counts selected micrographs only for another input type)
    assert results["Select/job004/"]["OutputFiles"] == [NODES_SELECT]
    assert results["AutoPick/job005/"]["PickedMicrographs"] == 2
    # Extract: the pipeliner parses relion_preprocess's run.out, which we do not
    # write (docs/relion_project.md): its entry is that collection error
    assert "run.out" in jobs_md["Extract/job006/"]["metadata collection error"]
    for folder in PROCESSES:
        for name in ("job.star", "job_pipeline.star", "note.txt"):
            assert (Path(folder) / name).is_file()
        assert (Path(folder) / "RELION_JOB_EXIT_SUCCESS").is_file()

    stars = sorted(Path(".").rglob("*.star"))
    assert len(stars) > 20
    for star in stars:
        validate_starfile(str(star))
    assert not list(Path(".").rglob("*.orig"))  # nothing had to be re-quoted

    # RELION's names and project-relative paths inside the tables
    movies = starfile.read("Import/job001/movies.star", always_dict=True)["movies"]
    assert len(movies) == 2
    assert all(n.startswith("Movies/") for n in movies["rlnMicrographMovieName"])
    assert all(Path(n).is_file() for n in movies["rlnMicrographMovieName"])
    coords = starfile.read("AutoPick/job005/autopick.star", always_dict=True)
    table: pd.DataFrame = coords["coordinate_files"]
    assert all(Path(n).is_file() for n in table["rlnMicrographCoordinates"])
    assert all(Path(n).is_file() for n in table["rlnMicrographName"])
    model = starfile.read("Class2D/job007/run_model.star", always_dict=True)
    for reference in model["model_classes"]["rlnReferenceImage"]:
        assert Path(reference.split("@")[1]).is_file()
    for motion_star in Path("MotionCorr/job002").rglob("*_Fractions.star"):
        general = starfile.read(motion_star, always_dict=True)["general"]
        assert str(general["rlnMicrographMovieName"]).startswith("Movies/")
    for coordinates in Path("AutoPick/job005").rglob("*_autopick.star"):
        assert not any(
            c.startswith("rlnLivestream") for c in starfile.read(coordinates).columns
        )

    # livestream status shows the initial model
    model_status = read_status(project)["class3d"]
    assert model_status["iteration"] >= 1
    assert Path(model_status["slices_png"]).is_file()
    assert Path(model_status["initial_model"]).is_file()
    status_args = argparse.Namespace(project=project, json=False, failures=5)
    assert status_main(status_args) == 0
    assert "class3d: mini-batch" in capsys.readouterr().out
