"""Curation thresholds changed while the service runs (SIGHUP): past exposures are
decided again from the ledger's figures without reprocessing, rejected exposures
never dispatch picking, newly accepted ones get their particles, and the metrics
scraped over HTTP, ``livestream status`` and the selection STAR agree with the
ledger.  Real parts: the daemon in-process with its signal handlers, real motion,
CTF, pick and extract stages in a worker process, SQLite, the /metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.config import load_config
from livestream.curation.live import curation_counts
from livestream.daemon import ServiceHandle, run_service
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.ledger.schema import rejections_of
from livestream.ledger.store import StageResult
from livestream.telemetry.reporting import EventType, ServiceEvent
from tests.livestream.service_fixtures import service_config, write_config_file

LOOSE = {
    "max_ctf_resolution_a": 100.0,
    "min_defocus_a": 0.0,
    "max_defocus_a": 1e6,
    "max_astigmatism_a": 1e6,
    "max_total_motion_a": 1e6,
    "max_early_motion_a": 1e6,
    "min_ctf_figure_of_merit": -1.0,
}
STRICT = {**LOOSE, "max_ctf_resolution_a": 1.0}  # nothing fits to 1 Å


def _write_config(root: Path, curate: dict[str, float]) -> Path:
    config = service_config(
        root / "session",
        root / "movies",
        root / "project",
        workers={"n_processes": 1, "max_in_flight": 2, "max_attempts": 1},
        metrics={"enabled": True, "port": 0},
        stages={
            "chain": ["motion", "ctf", "curate", "pick", "extract"],
            "motion": {"patches_x": 1},
            "curate": curate,
            "pick": {"diameter_min_a": 50.0, "diameter_max_a": 90.0},
        },
    )
    return write_config_file(root / "live.toml", config)


def _rows(project: Path, stage: str) -> dict[str, tuple[str, int, dict[str, Any]]]:
    with sqlite3.connect(project / "livestream.sqlite") as db:
        cursor = db.execute(
            "SELECT exposure_id, state, attempts, figures FROM stages WHERE stage=?",
            (stage,),
        )
        return {e: (s, a, json.loads(f)) for e, s, a, f in cursor}


def _counts(project: Path) -> Any:
    with sqlite3.connect(project / "livestream.sqlite") as db:
        return curation_counts(db, "curate")


def _scrape(address: tuple[str, int]) -> dict[str, float]:
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("livestream_curation")
    }


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.1)
    assert predicate(), what


def _star(project: Path, name: str, block: str) -> pd.DataFrame:
    table: pd.DataFrame = starfile.read(project / name, always_dict=True)[block]
    return table


@pytest.mark.slow
async def test_threshold_change_reevaluates_without_reprocessing(  # noqa: PLR0915 - one scripted service scenario, read top to bottom
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    microscope = SimulatedMicroscope(
        tmp_path / "session",
        tmp_path / "movies",
        MicroscopeSettings(
            size_px=384,
            n_frames=6,
            n_particles=10,
            dose_per_frame_e_per_a2=4.0,
            write_chunks=1,
        ),
        np.random.default_rng(5),
    )
    for index in range(3):
        microscope.acquire(index)
    config_file = _write_config(tmp_path, STRICT)
    events: list[ServiceEvent] = []
    handles: list[ServiceHandle] = []
    stop = asyncio.Event()
    service = asyncio.create_task(
        run_service(
            load_config(config_file),
            stop=stop,
            listeners=(events.append,),
            on_started=handles.append,
            install_signal_handlers=True,
        )
    )

    def n_done() -> int:
        return sum(e.type is EventType.EXPOSURE_DONE for e in events)

    try:
        # 1. strict: every exposure rejected; pick/extract skipped, never dispatched
        await _until(lambda: n_done() >= 3, 120, "3 exposures curated")
        (handle,) = handles
        address = handle.metrics_address
        assert address is not None
        picks = _rows(project, "pick")
        assert all(s == "done" and a == 0 for s, a, _ in picks.values())
        assert all(f == {"skipped": 1.0} for _, _, f in picks.values())
        assert _counts(project).rejected == 3

        # 2. loose, by SIGHUP: all newly accepted; picking and extraction run now
        _write_config(tmp_path, LOOSE)
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: n_done() >= 6, 120, "newly accepted exposures picked")
        extract = _rows(project, "extract")
        assert all(s == "done" and a == 1 for s, a, _ in extract.values())
        n_particles = sum(f["n_particles"] for _, _, f in extract.values())
        assert n_particles > 0
        await _until(
            lambda: (
                (project / "Extract/job006/particles.star").is_file()
                and len(_star(project, "Extract/job006/particles.star", "particles"))
                == n_particles
            ),
            20,
            "particle pool holds every particle",
        )

        # 3. a defocus limit that keeps only the least defocused exposure
        ctf = _rows(project, "ctf")
        defocus = sorted(
            (0.5 * (f["defocus_u_a"] + f["defocus_v_a"]), e)
            for e, (_, _, f) in ctf.items()
        )
        assert defocus[1][0] - defocus[0][0] > 10.0, defocus
        limit = 0.5 * (defocus[0][0] + defocus[1][0])
        kept = defocus[0][1]
        _write_config(tmp_path, {**LOOSE, "max_defocus_a": limit})
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(
            lambda: handle.curation.n_reloads == 2 and _counts(project).accepted == 1,
            30,
            "second re-evaluation",
        )
        selected = project / "Select/job004/micrographs.star"
        await _until(
            lambda: len(_star(project, str(selected), "micrographs")) == 1,
            20,
            "selection rewritten",
        )
        metrics = _scrape(address)
    finally:
        stop.set()
        assert await service == 0

    # nothing was reprocessed: one attempt of every motion, CTF, pick, extract
    for stage in ("motion", "ctf", "pick", "extract"):
        assert [a for _, a, _ in _rows(project, stage).values()] == [1, 1, 1], stage
    curate = _rows(project, "curate")
    assert {e for e, (_, _, f) in curate.items() if f["accepted"] == 1.0} == {kept}
    rejected = {e for e in curate if e != kept}
    assert all("rejected_defocus_mean_a" in curate[e][2] for e in rejected)
    assert all(f["thresholds_version"] == 2.0 for _, _, f in curate.values())
    for eid in curate:  # the decision files agree with the ledger
        document = json.loads((project / f"Select/job004/{eid}.json").read_text())
        assert document["accepted"] == (eid == kept)

    # the selection lists exactly the accepted micrograph, with its CTF
    micrographs = _star(project, str(selected), "micrographs")
    kept_ctf = ctf[kept][2]
    assert micrographs["rlnDefocusU"].iloc[0] == pytest.approx(kept_ctf["defocus_u_a"])
    motion = _rows(project, "motion")
    with sqlite3.connect(project / "livestream.sqlite") as db:
        (outputs,) = db.execute(
            "SELECT outputs FROM stages WHERE exposure_id=? AND stage='motion'",
            (kept,),
        ).fetchone()
    assert list(micrographs["rlnMicrographName"]) == [json.loads(outputs)["micrograph"]]
    assert len(motion) == 3

    # the pool holds only the accepted exposure's particles; the rejected keep theirs
    pool_path = project / "Extract/job006/particles.star"
    if extract[kept][2]["n_particles"] > 0:
        pool = _star(project, str(pool_path), "particles")
        assert len(pool) == extract[kept][2]["n_particles"]
        assert set(pool["rlnMicrographName"]) == set(micrographs["rlnMicrographName"])
    else:
        assert not pool_path.exists()
    with sqlite3.connect(project / "livestream.sqlite") as db:
        files = [
            json.loads(outputs)["particles_star"]
            for eid, outputs in db.execute(
                "SELECT exposure_id, outputs FROM stages WHERE stage='extract'"
            )
            if eid in rejected and extract[eid][2]["n_particles"] > 0
        ]
    assert files  # rejected exposures with particles keep their own files
    assert all((project / name).is_file() for name in files)

    # metrics scraped over HTTP match the ledger: gauges now, counters for events
    counts = _counts(project)
    assert (counts.accepted, counts.rejected) == (1, 2)
    assert metrics['livestream_curation_exposures{decision="accepted"}'] == 1
    assert metrics['livestream_curation_exposures{decision="rejected"}'] == 2
    for figure, n in counts.reasons.items():
        assert (
            metrics[f'livestream_curation_rejected_exposures{{figure="{figure}"}}'] == n
        )
    assert (
        metrics['livestream_curation_rejected_exposures{figure="ctf_resolution_a"}']
        == 0
    )
    assert metrics["livestream_curation_reevaluations_total"] == 2
    assert metrics["livestream_curation_thresholds_version"] == 2
    changes = "livestream_curation_decision_changes_total"
    assert metrics[f'{changes}{{decision="accepted"}}'] == 3
    assert metrics[f'{changes}{{decision="rejected"}}'] == 2
    decisions = "livestream_curation_decisions_total"
    assert metrics[f'{decisions}{{decision="rejected"}}'] == 3  # the stage's own

    # livestream status shows the same counts and reasons
    from livestream.cli.status import _table, read_status

    status = read_status(project)
    assert status["curation"] == counts.as_json()
    assert "curation: 1 accepted, 2 rejected" in _table(status)

    # offline: the loose thresholds accept all again, nothing to pick again
    from livestream.cli.curate import recurate_project

    report = recurate_project(project, _write_config(tmp_path, LOOSE))
    assert report["curation"] == {"accepted": 3, "rejected": 0, "reasons": {}}
    assert sorted(report["newly_accepted"]) == sorted(rejected)
    assert report["reopened"] == []
    pool = _star(project, "Extract/job006/particles.star", "particles")
    assert len(pool) == n_particles
    assert len(_star(project, str(selected), "micrographs")) == 3


# -- fast checks (not slow): the vectorised re-evaluation against the scalar rule ----
CHAIN = ("motion", "ctf", "curate", "pick")
N_LEDGER = 120


def _curated_ledger(path: Path, rng: np.random.Generator, n: int) -> Any:
    from livestream.ledger.store import Ledger

    ledger = Ledger(path / "livestream.sqlite")
    movie = path / "movie.tif"
    movie.write_bytes(b"x")
    for i in range(n):
        eid = f"exp{i:04d}"
        ledger.record_discovered(eid)
        ledger.mark_ready(
            eid,
            chain=CHAIN,
            acquired_unix_s=float(i),
            metadata_path=movie,
            movie_path=movie,
            movie_size_bytes=1,
            movie_mtime_ns=0,
        )
        u = float(rng.uniform(2000, 45000))
        figures = {
            "motion": {
                "total_motion_a": float(rng.uniform(0, 120)),
                "early_motion_a": float(rng.uniform(0, 40)),
            },
            "ctf": {
                "defocus_u_a": u,
                "defocus_v_a": u - float(rng.uniform(0, 1500)),
                "fit_resolution_a": float(rng.uniform(2.5, 12)),
                "figure_of_merit": float(rng.uniform(0, 0.3)),
            },
        }
        if i == 0:
            figures["ctf"]["fit_resolution_a"] = float("nan")  # a failed fit
        results = {
            "motion": StageResult(stage="motion", figures=figures["motion"]),
            "ctf": StageResult(stage="ctf", figures=figures["ctf"]),
            # the stage's own decision, as if made with different thresholds
            "curate": StageResult(stage="curate", accepted=True),
            "pick": StageResult(stage="pick", skipped=True),
        }
        for stage in CHAIN:
            ledger.mark_running(eid, stage)
            ledger.mark_done(
                eid, results[stage], duration_s=0.0, last=stage == CHAIN[-1]
            )
    return ledger


def test_reevaluation_equals_the_scalar_rule_and_reopens_only_skipped(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from livestream.curation.live import (
        reevaluate_curation,
        reopen_skipped,
        thresholds_of,
    )
    from pipelines.curation.rules import ExposureFigures, curate

    ledger = _curated_ledger(tmp_path, rng, N_LEDGER)
    params = {"max_ctf_resolution_a": 6.0, "max_astigmatism_a": 800.0}
    try:
        with ledger.transaction() as db:
            result = reevaluate_curation(db, params)
        thresholds = thresholds_of(params)
        expected_reasons: dict[str, int] = {}
        n_accepted = 0
        for i in range(N_LEDGER):
            results = {r.stage: r.result for r in ledger.rows_of(f"exp{i:04d}")}
            m, c = results["motion"].figures, results["ctf"].figures
            decision = curate(
                ExposureFigures(
                    ctf_resolution_a=c["fit_resolution_a"] if i else float("nan"),
                    defocus_u_a=c["defocus_u_a"],
                    defocus_v_a=c["defocus_v_a"],
                    total_motion_a=m["total_motion_a"],
                    early_motion_a=m["early_motion_a"],
                    ctf_figure_of_merit=c["figure_of_merit"],
                ),
                thresholds,
            )
            stored = results["curate"]
            assert stored.accepted is decision.accepted, i
            failed = sorted(r.split("=")[0] for r in decision.reasons)
            assert sorted(
                k.removeprefix("rejected_")
                for k in stored.figures
                if k.startswith("rejected_")
            ) == sorted(set(failed))
            n_accepted += decision.accepted
            for figure in set(failed):
                expected_reasons[figure] = expected_reasons.get(figure, 0) + 1
        assert 0 < n_accepted < N_LEDGER
        assert result.counts.accepted == n_accepted
        assert dict(result.counts.reasons) == expected_reasons
        assert set(result.newly_rejected) == set(result.changed)
        assert "exp0000" in result.newly_rejected  # NaN fails its rule
        # loosen again: the rejected come back, their skipped picks reopen
        with ledger.transaction() as db:
            again = reevaluate_curation(db, {"max_ctf_resolution_a": 100.0} | LOOSE)
            reopened = reopen_skipped(db, again.newly_accepted, ("pick",))
        assert again.version == result.version + 1
        assert set(again.newly_accepted) == set(result.newly_rejected) - {"exp0000"}
        assert sorted(reopened) == sorted(again.newly_accepted)
        curate_now = {r.stage: r.result for r in ledger.rows_of(reopened[0])}["curate"]
        assert curate_now.accepted is True
        assert rejections_of(curate_now) == {}  # the old failed rules are gone
        states = {r.stage: r.state.value for r in ledger.rows_of(reopened[0])}
        assert states == {
            "import": "done",
            "motion": "done",
            "ctf": "done",
            "curate": "done",
            "pick": "pending",
        }
    finally:
        ledger.close()


async def test_exposure_payload_carries_the_curation_decision() -> None:
    from datetime import UTC, datetime

    from livestream.telemetry.events import exposure_payload
    from livestream.telemetry.reporting import curation_field

    field = curation_field(
        {
            "curate": StageResult(
                stage="curate",
                figures={"rejected_astigmatism_a": 1200.0},
                accepted=False,
            ),
            "pick": StageResult(stage="pick", skipped=True),
        }
    )
    assert field == {
        "accepted": False,
        "reasons": ["astigmatism_a"],
        "rejected": {"astigmatism_a": 1200.0},
    }
    payload = exposure_payload(
        "e1", acquired_utc=None, processed_utc=datetime.now(UTC), curation=field
    )
    assert payload["curation"]["accepted"] is False
    assert (
        curation_field({"pick": StageResult(stage="pick", figures={"n_picks": 3.0})})
        is None
    )
