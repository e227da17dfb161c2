"""A short live session through the real chain motion -> ctf -> curate -> pick ->
extract: the project is a RELION project whose index files list every micrograph
once, whose particle pool holds every extracted particle, and a restart rebuilds
the same index; a rejected exposure is done with its decision and skips picking."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.config import ServiceConfig
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.ledger.store import StageResult
from tests.livestream.service_fixtures import run_until_settled, service_config

pytestmark = pytest.mark.slow

LOOSE = dict.fromkeys(
    (
        "max_ctf_resolution_a",
        "min_defocus_a",
        "max_defocus_a",
        "max_astigmatism_a",
        "max_total_motion_a",
        "max_early_motion_a",
        "min_ctf_figure_of_merit",
    )
)
STRICT = {"max_ctf_resolution_a": 1.0}  # nothing fits to 1 Å: rejected


def _config(root: Path, curate: dict[str, object]) -> ServiceConfig:
    return service_config(
        root / "session",
        root / "movies",
        root / "project",
        workers={"n_processes": 1, "max_in_flight": 2, "max_attempts": 1},
        stages={
            "chain": ["motion", "ctf", "curate", "pick", "extract"],
            "motion": {"patches_x": 1},
            "curate": curate,
            "pick": {"diameter_min_a": 50.0, "diameter_max_a": 90.0},
        },
    )


def _figures(project: Path, stage: str) -> dict[str, str]:
    with sqlite3.connect(project / "livestream.sqlite") as db:
        rows = db.execute(
            "SELECT exposure_id, figures FROM stages WHERE stage=? AND state='done'",
            (stage,),
        )
        return dict(rows.fetchall())


def _read(project: Path, name: str, block: str) -> pd.DataFrame:
    table: pd.DataFrame = starfile.read(project / name, always_dict=True)[block]
    return table


async def test_live_session_makes_a_relion_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    microscope = SimulatedMicroscope(
        tmp_path / "session",
        tmp_path / "movies",
        # 512 px x 12 frames is about the smallest movie whose drift can be measured
        # (at 384 px x 6 frames the alignment error is 2-8 px whatever the weighting)
        MicroscopeSettings(size_px=512, n_frames=12, n_particles=8, write_chunks=1),
        np.random.default_rng(11),
    )
    for index in range(2):
        microscope.acquire(index)
    events = await run_until_settled(_config(tmp_path, LOOSE), 2, timeout_s=120)

    assert all('"accepted": 1.0' in f for f in _figures(project, "curate").values())
    motion = _read(
        project, "MotionCorr/job002/corrected_micrographs.star", "micrographs"
    )
    ctf = _read(project, "CtfFind/job003/micrographs_ctf.star", "micrographs")
    pool = _read(project, "Extract/job006/particles.star", "particles")
    assert motion["rlnMicrographName"].is_unique
    assert len(motion) == 2
    assert sorted(ctf["rlnMicrographName"]) == sorted(motion["rlnMicrographName"])
    for column in ("rlnMicrographName", "rlnMicrographMetadata", "rlnCtfPowerSpectrum"):
        assert all((project / name).is_file() for name in motion[column])
    assert all((project / n.removesuffix(":mrc")).is_file() for n in ctf["rlnCtfImage"])
    extracted = [
        e.figures["n_particles"] for e in events
        if e.stage == "extract" and e.state == "done"
    ]  # fmt: skip
    assert len(extracted) == 2
    assert sum(extracted) > 0
    assert len(pool) == sum(extracted)
    stacks = {name.split("@")[1] for name in pool["rlnImageName"]}
    assert all((project / stack).is_file() for stack in stacks)
    assert set(pool["rlnMicrographName"]) <= set(motion["rlnMicrographName"])
    picks = list((project / "AutoPick/job005").glob("*_autopick.star"))
    thumbnails = list((project / "AutoPick/job005").glob("*_picks.png"))
    assert len(picks) == 2
    assert len(thumbnails) == 2
    done = [e for e in events if e.type.value == "exposure_done"]
    assert all("n_particles" in e.figures and "defocus_a" in e.figures for e in done)

    # restart with strict curation and one more exposure: the index is rebuilt
    # from the ledger, the new exposure is rejected and skips pick and extract
    microscope.acquire(2)
    await run_until_settled(_config(tmp_path, STRICT), 1, timeout_s=120)
    motion_after = _read(
        project, "MotionCorr/job002/corrected_micrographs.star", "micrographs"
    )
    assert len(motion_after) == 3
    assert motion_after["rlnMicrographName"].is_unique
    pd.testing.assert_frame_equal(motion_after.iloc[:2], motion)
    pool_after = _read(project, "Extract/job006/particles.star", "particles")
    pd.testing.assert_frame_equal(pool_after, pool)
    curate = _figures(project, "curate")
    rejected = [eid for eid, f in curate.items() if '"accepted": 0.0' in f]
    assert len(rejected) == 1
    assert "rejected_ctf_resolution_a" in curate[rejected[0]]
    assert '"skipped": 1.0' in _figures(project, "extract")[rejected[0]]


def test_curation_decisions_and_failed_rules_are_counted() -> None:
    from prometheus_client import CollectorRegistry

    from livestream.curation.metrics import CurationMetrics

    registry = CollectorRegistry()
    metrics = CurationMetrics(registry)
    metrics.observe(StageResult(stage="curate", accepted=True))
    metrics.observe(
        StageResult(
            stage="curate", figures={"rejected_ctf_resolution_a": 8.0}, accepted=False
        )
    )
    metrics.observe(
        StageResult(
            stage="curate",
            figures={"rejected_ctf_resolution_a": 9.0, "rejected_astigmatism_a": 1e3},
            accepted=False,
        )
    )
    metrics.observe(StageResult(stage="motion", figures={"total_motion_a": 2.0}))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    decisions = "livestream_curation_decisions_total"
    assert value(decisions, decision="accepted") == 1.0
    assert value(decisions, decision="rejected") == 2.0
    rules = "livestream_curation_rejections_total"
    assert value(rules, figure="ctf_resolution_a") == 2.0
    assert value(rules, figure="astigmatism_a") == 1.0
