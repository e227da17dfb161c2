"""A real service process SIGKILLed at random moments during a session and
restarted: every exposure is done exactly once, outputs complete, no temporary
files left."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from tests.livestream.service_fixtures import (
    count_states,
    service_config,
    start_service,
    wait_for,
    write_config_file,
)

pytestmark = pytest.mark.slow

N_EXPOSURES = 10
CHAIN = ("first", "second")


def test_sigkill_and_restart_lose_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(20261122)
    session, movies, project = (
        tmp_path / "session",
        tmp_path / "movies",
        tmp_path / "project",
    )
    microscope = SimulatedMicroscope(
        session,
        movies,
        MicroscopeSettings(
            size_px=64, n_frames=4, noise_only=True, write_chunks=3, chunk_pause_s=0.02
        ),
        np.random.default_rng(1),
    )
    config = service_config(
        session,
        movies,
        project,
        workers={"max_in_flight": 2, "n_processes": 2},
        stages={
            "chain": list(CHAIN),
            "first": {"kind": "noop", "sleep_s": 0.4, "payload_bytes": 200_000},
            "second": {"kind": "noop", "sleep_s": 0.1, "payload_bytes": 200_000},
        },
    )
    config_file = write_config_file(tmp_path / "live.toml", config)
    log = tmp_path / "service.log"

    def acquire() -> None:
        for index in range(N_EXPOSURES):
            microscope.acquire(index)
            threading.Event().wait(0.3)

    writer = threading.Thread(target=acquire)
    writer.start()
    n_kills = 0
    try:
        for _ in range(3):
            baseline = count_states(project).get("done", 0)
            process = start_service(config_file, log)
            # kill while work is under way: after this run has finished something
            wait_for(
                lambda b=baseline: count_states(project).get("done", 0) > b,  # type: ignore[misc]
                60,
                "progress after a restart",
            )
            threading.Event().wait(float(rng.uniform(0.0, 0.8)))
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            n_kills += 1
        writer.join()
        process = start_service(config_file, log)
        n_stage_rows = N_EXPOSURES * len(CHAIN)
        wait_for(
            lambda: (
                count_states(project).get("done", 0) == N_EXPOSURES * (1 + len(CHAIN))
            ),
            60,
            "every stage of every exposure done",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        writer.join()
        microscope.close()
    assert n_kills == 3
    with sqlite3.connect(project / "livestream.sqlite") as db:
        attempts = db.execute(
            "SELECT exposure_id, stage, attempt, outcome FROM attempts ORDER BY id"
        ).fetchall()
        rows = db.execute(
            "SELECT exposure_id, stage, state, outputs FROM stages WHERE stage != 'import'"
        ).fetchall()
    assert len(rows) == n_stage_rows
    # exactly one finished attempt per exposure and stage, and it was the last one
    finished: dict[tuple[str, str], list[int]] = {}
    last: dict[tuple[str, str], int] = {}
    for eid, stage, attempt, outcome in attempts:
        last[(eid, stage)] = attempt
        if outcome == "done":
            finished.setdefault((eid, stage), []).append(attempt)
    assert len(finished) == n_stage_rows
    assert all(len(v) == 1 for v in finished.values())
    assert all(finished[key][0] == last[key] for key in finished)
    interrupted = [a for a in attempts if a[3] == "interrupted"]
    assert interrupted, "no kill hit a running stage: the test proved nothing"
    # every output is there and complete
    for eid, stage, state, outputs in rows:
        assert state == "done"
        document = json.loads((project / json.loads(outputs)["document"]).read_text())
        assert (document["exposure_id"], document["stage"]) == (eid, stage)
        assert len(document["payload"]) == 200_000
    assert len(list((project / "Noop").rglob("*.json"))) == n_stage_rows
    assert list(project.rglob("*.partial")) == []
    print(f"{n_kills} kills, {len(interrupted)} interrupted attempts redone")
