"""The job index files are a function of the ledger's done rows: the counts are
right, a rebuild (a restart) gives the same tables, unfinished and rejected
exposures are left out, and rewrites are debounced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from livestream.config import load_config
from livestream.ledger.store import Ledger, StageResult
from livestream.project.job_index import IndexTargets, JobIndex, index_targets
from livestream.project.job_tables import corrected_micrographs
from livestream.stages.registry import build_chain
from livestream.telemetry.reporting import EventType, ServiceEvent
from mdcatch.crosscheck import DEFAULT_CS_MM
from pipelines.extraction.particles_star import write_particles_star
from pipelines.io.outputs import write_bytes_atomic

CHAIN = ("motion", "ctf", "extract")
TARGETS = IndexTargets(motion_stage="motion", ctf_stage="ctf", extract_stage="extract")


def _optics() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [2.0],
            "rlnImageSize": [64],
            "rlnVoltage": [300.0],
        }
    )


def _exposure(
    ledger: Ledger, project: Path, index: int, n_particles: int, *, finished: int
) -> None:
    """One exposure whose first ``finished`` chain stages are done."""
    eid = f"exp{index:03d}"
    ledger.record_discovered(eid)
    movie = project / "movies" / f"{eid}.mrc"
    write_bytes_atomic(movie, b"movie")
    ledger.mark_ready(
        eid,
        chain=CHAIN,
        acquired_unix_s=1000.0 + index,
        metadata_path=movie,
        movie_path=movie,
        movie_size_bytes=5,
        movie_mtime_ns=0,
    )
    micrograph = f"MotionCorr/job002/{eid}.mrc"
    results = [
        StageResult(
            stage="motion",
            outputs={"micrograph": micrograph, "star": f"MotionCorr/job002/{eid}.star"},
            figures={"total_motion_a": 3.0 + index, "early_motion_a": 1.0,
                     "late_motion_a": 2.0 + index, "pixel_size_a": 1.0},
        ),
        StageResult(
            stage="ctf",
            outputs={"ctf_image": f"CtfFind/job003/{eid}.ctf"},
            figures={"defocus_u_a": 15000.0 + index, "defocus_v_a": 14000.0,
                     "astigmatism_angle_deg": 30.0, "figure_of_merit": 0.2,
                     "fit_resolution_a": 5.0},
        ),
    ]  # fmt: skip
    outputs: dict[str, str] = {}
    if n_particles:
        star = f"Extract/job006/{eid}_particles.star"
        particles = pd.DataFrame(
            {
                "rlnImageName": [f"{i + 1:06d}@Extract/job006/{eid}.mrcs"
                                 for i in range(n_particles)],
                "rlnMicrographName": [micrograph] * n_particles,
                "rlnOpticsGroup": [1] * n_particles,
            }
        )  # fmt: skip
        write_particles_star(project / star, _optics(), particles)
        outputs["particles_star"] = star
    results.append(
        StageResult(
            stage="extract", outputs=outputs, figures={"n_particles": n_particles}
        )
    )
    for result in results[:finished]:
        ledger.mark_running(eid, result.stage)
        ledger.mark_done(eid, result, duration_s=0.1, last=result.stage == "extract")


def _tables(project: Path) -> dict[str, pd.DataFrame]:
    files = {
        "motion": "MotionCorr/job002/corrected_micrographs.star",
        "ctf": "CtfFind/job003/micrographs_ctf.star",
        "particles": "Extract/job006/particles.star",
    }
    tables = {}
    for key, name in files.items():
        blocks = starfile.read(project / name, always_dict=True)
        tables[key] = blocks["particles" if key == "particles" else "micrographs"]
        tables[f"{key}_optics"] = blocks["optics"]
    return tables


def test_index_lists_done_rows_once_and_a_rebuild_is_identical(tmp_path: Path) -> None:
    project = tmp_path / "project"
    ledger = Ledger(project / "livestream.sqlite")
    counts = [5, 0, 7]  # the second exposure yielded no particle
    for index, n in enumerate(counts):
        _exposure(ledger, project, index, n, finished=3)
    _exposure(ledger, project, 3, 4, finished=1)  # motion done, CTF still running
    index = JobIndex(ledger.path, project, TARGETS)
    assert index.write_all() == {
        "motion": 4,
        "movies": 4,
        "ctf": 3,
        "particles": sum(counts),
    }
    first = _tables(project)
    # the movies of the done motion rows (no Movies link here: absolute paths),
    # in the optics groups of corrected_micrographs.star
    movies = starfile.read(project / "Import/job001/movies.star", always_dict=True)
    assert list(movies["movies"]["rlnMicrographMovieName"]) == [
        str(project / "movies" / f"exp{i:03d}.mrc") for i in range(4)
    ]
    assert list(movies["movies"]["rlnOpticsGroup"]) == list(
        first["motion"]["rlnOpticsGroup"]
    )
    names = first["motion"]["rlnMicrographName"]
    assert names.is_unique
    assert len(names) == 4
    assert list(first["ctf"]["rlnMicrographName"]) == list(names[:3])
    assert next(iter(first["ctf"]["rlnCtfImage"])) == "CtfFind/job003/exp000.ctf:mrc"
    np.testing.assert_allclose(first["motion"]["rlnAccumMotionTotal"], [3, 4, 5, 6])
    np.testing.assert_allclose(first["ctf"]["rlnCtfAstigmatism"], [1000, 1001, 1002])
    per_micrograph = first["particles"].groupby("rlnMicrographName").size()
    assert per_micrograph.to_dict() == {
        "MotionCorr/job002/exp000.mrc": 5,
        "MotionCorr/job002/exp002.mrc": 7,
    }
    # a restart: the files are gone or stale, a new index rebuilds the same tables
    (project / "Extract/job006/particles.star").unlink()
    again = JobIndex(ledger.path, project, TARGETS)
    again.write_all()
    rebuilt = _tables(project)
    for key, table in first.items():
        pd.testing.assert_frame_equal(rebuilt[key], table)
    ledger.close()


def test_targets_follow_the_chain_and_its_job_folders() -> None:
    stages = {
        "chain": ["mc", "ctf"],
        "mc": {"kind": "motion", "job": "MotionCorr/job012"},
    }
    config = load_config(None, {"stages": stages})
    targets = index_targets(build_chain(config.stages))
    assert targets.motion_stage == "mc"
    assert targets.motion_job == "MotionCorr/job012"
    assert targets.ctf_stage == "ctf"
    assert targets.ctf_job == "CtfFind/job003"
    assert targets.extract_stage is None
    assert targets.stages == {"mc", "ctf"}


async def test_many_finished_stages_give_few_rewrites(tmp_path: Path) -> None:
    project = tmp_path / "project"
    ledger = Ledger(project / "livestream.sqlite")
    _exposure(ledger, project, 0, 3, finished=3)
    index = JobIndex(ledger.path, project, TARGETS, min_interval_s=0.3)
    task = asyncio.create_task(index.run())
    done = ServiceEvent(
        type=EventType.STAGE_FINISHED, exposure_id="exp000", stage="ctf", state="done"
    )
    other = ServiceEvent(
        type=EventType.STAGE_FINISHED, exposure_id="exp000", stage="pick", state="done"
    )
    index.on_event(other)  # not an indexed stage
    await asyncio.sleep(0.1)
    assert index.n_writes == 0
    for _ in range(50):  # fifty exposures finish within 0.5 s
        index.on_event(done)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    task.cancel()
    assert 1 <= index.n_writes <= 3
    assert (project / "CtfFind/job003/micrographs_ctf.star").is_file()
    ledger.close()


def test_selection_holds_the_accepted_and_the_pool_drops_the_rejected(
    tmp_path: Path,
) -> None:
    """Curation decisions: accepted, rejected, and a row without a decision
    (undecided: not selected, but pooled as without curation)."""
    project = tmp_path / "project"
    ledger = Ledger(project / "livestream.sqlite")
    for index in range(3):
        _exposure(ledger, project, index, 2 + index, finished=3)
    decisions = {"exp000": True, "exp001": False, "exp002": None}
    with ledger.transaction() as db:
        db.executemany(
            "INSERT INTO stages (exposure_id, stage, position, state) VALUES (?, ?, ?, ?)",
            [(eid, "curate", 9, "pending") for eid in decisions],
        )
    for eid, accepted in decisions.items():
        ledger.mark_running(eid, "curate")
        result = StageResult(stage="curate", accepted=accepted)
        ledger.mark_done(eid, result, duration_s=0.0, last=False)
    targets = IndexTargets(
        motion_stage="motion",
        ctf_stage="ctf",
        curate_stage="curate",
        extract_stage="extract",
    )
    counts = JobIndex(ledger.path, project, targets).write_all()
    assert counts == {
        "motion": 3,
        "movies": 3,
        "ctf": 3,
        "selected": 1,
        "particles": 2 + 4,
    }
    selected = starfile.read(
        project / "Select/job004/micrographs.star", always_dict=True
    )["micrographs"]
    assert list(selected["rlnMicrographName"]) == ["MotionCorr/job002/exp000.mrc"]
    ledger.close()


def test_optics_groups_follow_mdcatchs_rule(tmp_path: Path) -> None:
    """Float noise below mdcatch's rounding keeps one group; another voltage makes
    a second; rows without recorded optics get mdcatch's defaults."""
    rows = [
        ({"micrograph": "a.mrc"}, {"pixel_size_a": 1.0, "voltage_kv": 300.0,
                                   "cs_mm": 2.7, "amplitude_contrast": 0.1}),
        ({"micrograph": "b.mrc"}, {"pixel_size_a": 1.0, "voltage_kv": 300.0 + 1e-9,
                                   "cs_mm": 2.7, "amplitude_contrast": 0.1}),
        ({"micrograph": "c.mrc"}, {"pixel_size_a": 1.0, "voltage_kv": 200.0,
                                   "cs_mm": 2.7, "amplitude_contrast": 0.1}),
        ({"micrograph": "d.mrc"}, {"pixel_size_a": 1.0}),
    ]  # fmt: skip
    path = tmp_path / "corrected_micrographs.star"
    corrected_micrographs(path, rows)
    blocks = starfile.read(path, always_dict=True)
    assert list(blocks["micrographs"]["rlnOpticsGroup"]) == [1, 1, 2, 1]
    assert list(blocks["optics"]["rlnVoltage"]) == [300.0, 200.0]
    assert list(blocks["optics"]["rlnSphericalAberration"]) == [DEFAULT_CS_MM] * 2
