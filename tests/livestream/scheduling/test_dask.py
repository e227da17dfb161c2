"""A Dask cluster processes the same session to the same ledger as the local pool."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.scheduling.dask_settings import local_cluster
from livestream.scheduling.executors import check_payload
from tests.livestream.scheduling import dask_stage
from tests.livestream.service_fixtures import (
    ledger_rows,
    run_until_settled,
    service_config,
    write_session,
)

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


def _comparable(project: Path) -> dict[tuple[str, str], tuple[str, int]]:
    return {
        key: (state, attempts)
        for key, (state, attempts, _) in ledger_rows(project).items()
    }


async def test_dask_local_cluster_gives_the_same_ledger(tmp_path: Path) -> None:
    session, movies, _ = write_session(tmp_path, 4)
    local_project = tmp_path / "local"
    await run_until_settled(service_config(session, movies, local_project), 4)

    async with local_cluster(1, processes=False) as cluster:
        dask_project = tmp_path / "dask"
        config = service_config(
            session,
            movies,
            dask_project,
            workers={"dask_scheduler_address": cluster.scheduler_address},
        )
        await run_until_settled(config, 4)

    assert _comparable(dask_project) == _comparable(local_project)
    assert len(_comparable(dask_project)) == 4 * 3
    local_files = sorted(
        p.relative_to(local_project) for p in local_project.rglob("*.json")
    )
    dask_files = sorted(
        p.relative_to(dask_project) for p in dask_project.rglob("*.json")
    )
    assert dask_files == local_files
    assert len(dask_files) == 8


def _log_lines(project: Path) -> list[tuple[str, str, str, int]]:
    path = project / "stage_log.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(what, eid, stage, int(pid)) for what, eid, stage, pid in rows]


async def test_a_worker_killed_mid_stage_is_replaced_and_the_stage_done_once(
    tmp_path: Path,
) -> None:
    """SIGKILL the Dask worker process running a stage: Dask runs the stage again on
    the other worker, the ledger records one attempt, every exposure is done once."""
    n = 3
    session, movies, _ = write_session(tmp_path, n)
    project = tmp_path / "project"
    stages = {
        "chain": ["slow"],
        "slow": {"kind": dask_stage.KIND, "sleep_s": 1.5, "index": "extract"},
    }
    killed: list[int] = []

    async def kill_first_running() -> None:
        while not killed:
            await asyncio.sleep(0.05)
            starts = [row for row in _log_lines(project) if row[0] == "start"]
            if starts:
                pid = starts[0][3]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    async with local_cluster(2) as cluster:
        config = service_config(
            session,
            movies,
            project,
            workers={
                "dask_scheduler_address": cluster.scheduler_address,
                "max_in_flight": 2,
            },
            stages=stages,
        )
        killer = asyncio.create_task(kill_first_running())
        await run_until_settled(config, n, timeout_s=120.0)
        killer.cancel()

    assert len(killed) == 1
    log = _log_lines(project)
    ends = [row for row in log if row[0] == "end"]
    assert sorted(eid for _, eid, _, _ in ends) == sorted({r[1] for r in log})
    assert len(ends) == n  # every exposure finished exactly once
    assert killed[0] not in {pid for *_, pid in ends}  # the killed worker ended none
    starts = [row for row in log if row[0] == "start"]
    assert len(starts) == n + 1  # the interrupted stage started once more
    rows = {k: v for k, v in ledger_rows(project).items() if k[1] == "slow"}
    assert len(rows) == n
    assert {state for state, _, _ in rows.values()} == {"done"}
    assert all(attempts == 1 for _, attempts, _ in rows.values())
    outputs = sorted(p.name for p in (project / "Slow" / "slow").iterdir())
    assert len(outputs) == n


def test_a_task_or_result_carrying_an_image_is_refused() -> None:
    image = np.zeros((64, 64), np.float32)
    assert check_payload({"path": "MotionCorr/job002/a.mrc", "n": 3}, "task") < 1024
    with pytest.raises(TypeError, match=r"task dict carries an array of 16384 bytes"):
        check_payload({"image": image}, "task")
    with pytest.raises(TypeError, match="stages exchange paths, not data"):
        check_payload("x" * 100_000, "result")


async def test_the_real_chain_on_dask_ships_paths_not_images(tmp_path: Path) -> None:
    """motion -> ctf -> curate -> pick -> extract through Dask: every task and result
    passes the executor's payload check (no array, under 64 kB)."""
    microscope = SimulatedMicroscope(
        tmp_path / "session",
        tmp_path / "movies",
        MicroscopeSettings(size_px=256, n_frames=6, n_particles=4, write_chunks=1),
        np.random.default_rng(3),
    )
    microscope.acquire(0)
    project = tmp_path / "project"
    # processes=False: the executor checks each payload on the client side
    async with local_cluster(1, processes=False) as cluster:
        config = service_config(
            tmp_path / "session",
            tmp_path / "movies",
            project,
            workers={
                "dask_scheduler_address": cluster.scheduler_address,
                "max_attempts": 1,
            },
            stages={
                "chain": ["motion", "ctf", "curate", "pick", "extract"],
                "motion": {"patches_x": 1, "patches_y": 1},
                "curate": {"max_ctf_resolution_a": None, "min_defocus_a": None},
                "pick": {"diameter_min_a": 50.0, "diameter_max_a": 90.0},
            },
        )
        await run_until_settled(config, 1, timeout_s=180.0)
    rows = ledger_rows(project)
    assert {stage for _, stage in rows} == {
        "import",
        "motion",
        "ctf",
        "curate",
        "pick",
        "extract",
    }
    assert {state for state, _, _ in rows.values()} == {"done"}, rows
