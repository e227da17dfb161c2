"""A Dask cluster processes the same session to the same ledger as the local pool."""

from __future__ import annotations

from pathlib import Path

import pytest

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

    async with distributed.LocalCluster(
        n_workers=1,
        processes=False,
        threads_per_worker=1,
        asynchronous=True,
        dashboard_address=None,
    ) as cluster:
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
