"""The RELION pipeline files, read by the CCP-EM pipeliner (the real reader of
RELION projects): every listed job has its type and status, every node exists with
its type label, the STAR files pass the pipeliner's validation, the job folders
hold job.star / job_pipeline.star / note.txt / RELION_JOB_EXIT_SUCCESS, and a
SIGKILL in the middle of rewrites leaves a valid default_pipeline.star."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livestream.config import load_config
from livestream.project.movies import link_movies, movie_name
from livestream.project.pipeline import (
    EXIT_SUCCESS,
    PipelineJob,
    RelionPipeline,
    job_options,
    star_value,
)
from livestream.project.pipeline_jobs import pipeline_jobs
from livestream.stages.registry import build_chain

pipeliner = pytest.importorskip("pipeliner")

from pipeliner.api.api_utils import validate_starfile  # noqa: E402
from pipeliner.node_factory import create_node  # noqa: E402
from pipeliner.process import Process  # noqa: E402
from pipeliner.project_graph import ProjectGraph  # noqa: E402
from pipeliner.relion_compatibility import jobstar_options_as_dict  # noqa: E402

JOBS = (
    PipelineJob(
        folder="Import/job001",
        process_type="relion.import.movies",
        outputs=(("movies.star", "MicrographMovieGroupMetadata.star.relion"),),
        options={"path": "/data/session one", "software": "auto", "empty": ""},
        note="++++ livestream run\n",
    ),
    PipelineJob(
        folder="MotionCorr/job002",
        process_type="relion.motioncorr.own",
        outputs=(
            (
                "corrected_micrographs.star",
                "MicrographGroupMetadata.star.relion.motioncorr",
            ),
        ),
        inputs=("Import/job001/movies.star",),
        options=job_options({"patches_x": 5, "float32": False, "gain": None}),
        note="++++ livestream run\n[stages.motion]\n",
    ),
    PipelineJob(  # never started: not listed
        folder="CtfFind/job003",
        process_type="relion.ctffind.ctffind4",
        outputs=(("micrographs_ctf.star", "MicrographGroupMetadata.star.relion.ctf"),),
        inputs=("MotionCorr/job002/corrected_micrographs.star",),
    ),
)

STAR = "# version 30001\n\ndata_movies\n\nloop_\n_rlnMicrographMovieName #1\na.tif\n"


def _project(root: Path) -> Path:
    project = root / "project"
    for name in ("Import/job001/movies.star", "MotionCorr/job002/x.mrc"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(STAR)
    return project


def test_the_pipeliner_lists_every_started_job_and_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(tmp_path)
    pipeline = RelionPipeline(project, JOBS)
    pipeline.write()
    monkeypatch.chdir(project)
    with ProjectGraph(pipeline_dir=".", read_only=True) as graph:
        assert graph.job_counter == 4
        procs = {p.name: (p.type, p.status) for p in graph.process_list}
        assert procs == {
            "Import/job001/": ("relion.import.movies", "Running"),
            "MotionCorr/job002/": ("relion.motioncorr.own", "Running"),
        }
        # the motion job has not written its index yet: no node, no edge
        nodes = {n.name: n.type for n in graph.node_list}
        assert nodes == {
            "Import/job001/movies.star": "MicrographMovieGroupMetadata.star.relion"
        }
        motion = graph.find_process("MotionCorr/job002/")
        assert [n.name for n in motion.input_nodes] == ["Import/job001/movies.star"]
    assert not (project / "CtfFind").exists()

    (project / "MotionCorr/job002/corrected_micrographs.star").write_text(STAR)
    pipeline.write(finished=True)
    with ProjectGraph(pipeline_dir=".", read_only=True) as graph:
        assert {p.status for p in graph.process_list} == {"Succeeded"}
        node = graph.find_node("MotionCorr/job002/corrected_micrographs.star")
        assert node is not None
        assert node.type == "MicrographGroupMetadata.star.relion.motioncorr"
        assert node.output_from_process.name == "MotionCorr/job002/"
    for job in JOBS[:2]:
        folder = project / job.folder
        assert (folder / EXIT_SUCCESS).is_file()
        assert (folder / "note.txt").read_text() == job.note
        options = jobstar_options_as_dict(str(folder / "job.star"))
        assert options["_rlnJobTypeLabel"] == job.process_type
        assert options["_rlnJobIsContinue"] == "0"
        assert {k: v for k, v in options.items() if not k.startswith("_")} == dict(
            job.options
        )
        with ProjectGraph(
            name="job", pipeline_dir=job.folder, read_only=True
        ) as own:  # job_pipeline.star: the job's own slice
            assert [p.name for p in own.process_list] == [job.name]
        for star in folder.glob("*.star"):
            validate_starfile(str(star))
            assert not Path(f"{star}.orig").exists()  # nothing needed quoting
    validate_starfile("default_pipeline.star")
    assert not Path("default_pipeline.star.orig").exists()

    # the service starts again: the jobs grow again
    pipeline.write()
    assert not (project / "MotionCorr/job002" / EXIT_SUCCESS).exists()


def test_jobs_a_user_ran_in_relion_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RELION job added to the project while the service was down stays in the
    pipeline when the service starts again and rewrites it."""
    project = _project(tmp_path)
    (project / "MotionCorr/job002/corrected_micrographs.star").write_text(STAR)
    RelionPipeline(project, JOBS).write(finished=True)
    monkeypatch.chdir(project)
    theirs = "ManualPick/job012/"
    Path(theirs).mkdir(parents=True)
    Path(theirs, "manualpick.star").write_text(STAR)
    with ProjectGraph(pipeline_dir=".", read_only=False) as graph:
        graph.job_counter = 13
        process = Process(theirs, "relion.manualpick", "Succeeded")
        graph.add_process(process, do_overwrite=False)
        node = create_node(
            f"{theirs}manualpick.star",
            "MicrographCoordsGroup",
            ["relion", "manualpick"],
        )
        graph.add_new_output_edge(process, node)
        graph.add_new_input_edge(
            graph.find_node("MotionCorr/job002/corrected_micrographs.star"), process
        )
        counter = graph.job_counter  # the pipeliner's: 13 or the next one
    assert counter >= 13
    RelionPipeline(project, JOBS).write()  # the service again
    with ProjectGraph(pipeline_dir=".", read_only=True) as graph:
        assert graph.job_counter == counter
        procs = {p.name: (p.type, p.status) for p in graph.process_list}
        assert procs[theirs] == ("relion.manualpick", "Succeeded")
        assert procs["MotionCorr/job002/"] == ("relion.motioncorr.own", "Running")
        manual = graph.find_process(theirs)
        assert [n.name for n in manual.output_nodes] == [f"{theirs}manualpick.star"]
        assert [n.name for n in manual.input_nodes] == [
            "MotionCorr/job002/corrected_micrographs.star"
        ]


def test_job_options_follow_relion_conventions() -> None:
    assert job_options({"a": True, "b": None, "c": [1, 2], "d": {"e": 1.5}}) == {
        "a": "Yes",
        "b": "",
        "c": "1,2",
        "d.e": "1.5",
    }
    assert star_value("") == '""'
    assert star_value("two words") == '"two words"'
    assert star_value("data_x") == '"data_x"'
    assert star_value("MotionCorr/job002/") == "MotionCorr/job002/"


def test_the_service_jobs_follow_the_chain(tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "project": {"path": tmp_path / "p"},
            "stages": {
                "chain": ["motion", "ctf", "curate", "pick", "extract"],
                "pick": {"picker": "template", "templates_path": tmp_path / "t"},
            },
        },
    )
    jobs = pipeline_jobs(config, build_chain(config.stages), ["livestream", "run"])
    by_folder = {job.folder: job for job in jobs}
    assert [job.folder for job in jobs] == [
        "Import/job001",
        "MotionCorr/job002",
        "CtfFind/job003",
        "Select/job004",
        "AutoPick/job005",
        "Extract/job006",
        "Class2D/job007",
        "InitialModel/job008",
        "Refine3D/job009",
        "External/job010",
        "Class3D/job011",
    ]
    assert by_folder["AutoPick/job005"].process_type == "relion.autopick.ref2d"
    assert by_folder["Select/job004"].process_type == "relion.select.onvalue"
    assert by_folder["Extract/job006"].inputs == (
        "AutoPick/job005/autopick.star",
        "Select/job004/micrographs.star",
    )
    assert by_folder["Class2D/job007"].inputs == ("Extract/job006/particles.star",)
    initial_model = by_folder["InitialModel/job008"]
    assert initial_model.process_type == "relion.initialmodel"
    assert initial_model.inputs == ("Class2D/job007/run_selected.star",)
    assert initial_model.options["sym_name"] == "C1"
    assert initial_model.options["start_particles"] == "5000"
    refine = by_folder["Refine3D/job009"]  # on request and at drain
    assert refine.process_type == "relion.refine3d"
    assert refine.inputs == (
        "Class2D/job007/run_selected.star",
        "InitialModel/job008/initial_model.mrc",
    )
    assert refine.options["ini_high"] == "40.0"
    assert by_folder["External/job010"].inputs == ("Refine3D/job009/run_data.star",)
    assert by_folder["MotionCorr/job002"].options["patches_x"] == str(
        config.stages.table_of("motion").model_dump()["patches_x"]
    )
    assert "livestream run" in by_folder["CtfFind/job003"].note


def test_movies_are_named_through_the_link(tmp_path: Path) -> None:
    session, project = tmp_path / "session", tmp_path / "project"
    (session / "Images").mkdir(parents=True)
    assert link_movies(project, session) == project / "Movies"
    assert link_movies(project, session) == project / "Movies"  # idempotent
    assert (project / "Movies" / "Images").is_dir()
    assert movie_name(project, session / "Images/a.tif") == "Movies/Images/a.tif"
    outside = tmp_path / "elsewhere/b.tif"
    assert movie_name(project, outside) == str(outside)
    assert link_movies(project, tmp_path / "other") is None  # left as it is
    assert os.readlink(project / "Movies") == str(session.absolute())
    assert link_movies(session / "project", session) is None  # would be a loop
    assert not (session / "project").exists()


_REWRITER = """
import sys
from pathlib import Path
from livestream.project.pipeline import PipelineJob, RelionPipeline

project = Path(sys.argv[1])
jobs = [
    PipelineJob(folder=f"Extract/job{i:03d}", process_type="relion.extract",
                outputs=(("particles.star", "ParticleGroupMetadata.star.relion"),))
    for i in range(1, 25)
]
for job in jobs:
    (project / job.folder).mkdir(parents=True, exist_ok=True)
    (project / job.folder / "particles.star").write_text("data_\\n")
print("ready", flush=True)
n = 0
while True:
    n += 1
    RelionPipeline(project, jobs[: 1 + n % len(jobs)]).write(finished=n % 2 == 0)
"""


@pytest.mark.slow  # three interpreters that import the package: ~10-30 s
def test_a_kill_during_rewrites_leaves_a_valid_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _REWRITER, str(project)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + 0.13 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        monkeypatch.chdir(project)
        with ProjectGraph(pipeline_dir=".", read_only=True) as graph:
            names = [p.name for p in graph.process_list]
            assert graph.job_counter == len(names) + 1
            assert names == [f"Extract/job{i:03d}/" for i in range(1, len(names) + 1)]
            assert len(graph.node_list) == len(names)
            assert {p.status for p in graph.process_list} <= {"Running", "Succeeded"}
