"""The Slurm configuration: the batch script dask-jobqueue submits, and its checks."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from livestream.cli.main import main
from livestream.config import ConfigError, SlurmConfig, load_config
from livestream.scheduling.clusters import slurm_cluster_kwargs
from livestream.scheduling.dask_settings import dask_environment, dask_settings
from tests.livestream.scheduling.heartbeats import settled_heartbeats

pytest.importorskip("dask_jobqueue")

SLURM_TOML = """
[workers.slurm]
queue = "em"
account = "cm40593"
jobs = 3
cores = 16
processes = 4
memory = "64GiB"
walltime = "2-00:00:00"
job_extra_directives = ["--gres=gpu:1"]
job_script_prologue = ["module load cuda/12.4"]
local_directory = "/scratch/livestream"
"""


def test_the_job_script_asks_slurm_for_what_the_config_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "live.toml"
    config.write_text(SLURM_TOML)
    assert main(["slurm-script", "--config", str(config)]) == 0
    script = capsys.readouterr().out
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH -J livestream-worker",
        "#SBATCH -p em",
        "#SBATCH -A cm40593",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64G",
        "#SBATCH -t 2-00:00:00",
        "#SBATCH --gres=gpu:1",
    ]
    assert "module load cuda/12.4" in script
    # the service's Dask settings, exported before the facility's own prologue
    lines = script.splitlines()
    exports = [line for line in lines if line.startswith("export DASK_")]
    assert len(exports) == len(dask_environment())
    exported = dict(shlex.split(line)[1].split("=", 1) for line in exports)
    assert exported == dask_environment()
    assert exported["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] == "False"
    assert max(map(lines.index, exports)) < lines.index("module load cuda/12.4")
    (command,) = [line for line in script.splitlines() if "dask_worker" in line]
    words = command.split()
    assert words[0] == sys.executable  # the same install on the nodes
    assert words[words.index("--nworkers") + 1] == "4"
    assert words[words.index("--nthreads") + 1] == "1"  # one stage per process
    assert words[words.index("--memory-limit") + 1] == "16.00GiB"  # 64 GiB / 4
    assert words[words.index("--local-directory") + 1] == "/scratch/livestream"
    assert words.count("--nthreads") == 1


def test_a_config_without_slurm_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "live.toml"
    config.write_text("[workers]\nn_processes = 2\n")
    assert main(["slurm-script", "--config", str(config)]) == 2
    assert "no [workers.slurm] table" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ({"slurm": {"cores": 2, "processes": 4}}, "processes=4 exceeds cores=2"),
        ({"slurm": {"memory": "lots"}}, r"workers\.slurm\.memory"),
        ({"slurm": {"walltime": "1 day"}}, r"workers\.slurm\.walltime"),
        (
            {"slurm": {}, "dask_scheduler_address": "tcp://x:8786"},
            "both name a cluster",
        ),
    ],
)
def test_bad_slurm_tables_are_config_errors_naming_the_key(
    workers: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"workers": workers})


async def test_a_worker_started_by_the_job_script_heartbeats_at_the_services_interval(
    tmp_path: Path,
) -> None:
    """The scheduler of the service's ``SLURMCluster`` is the service's, and a worker
    started by its batch script (run here with bash: the ``#SBATCH`` lines are
    comments to it) heartbeats every 5 s, not at Dask's 0.5 s."""
    import dask_jobqueue
    import distributed

    from livestream.scheduling.dask_scheduler import (
        WORKER_HEARTBEAT_S,
        ServiceScheduler,
    )

    config = SlurmConfig(
        jobs=1, cores=1, processes=1, memory="1GiB", local_directory=str(tmp_path)
    )
    with dask_settings():
        cluster = await dask_jobqueue.SLURMCluster(
            asynchronous=True, **slurm_cluster_kwargs(config)
        )
    async with cluster:
        assert type(cluster.scheduler) is ServiceScheduler
        script = tmp_path / "job.sh"
        script.write_text(cluster.job_script())
        log = (tmp_path / "job.log").open("w")  # the worker's and nanny's logging
        job = subprocess.Popen(
            ["bash", str(script)], stderr=log, stdout=log, start_new_session=True
        )
        try:
            client = await distributed.Client(cluster, asynchronous=True)
            try:
                await client.wait_for_workers(1, timeout=60)
                intervals = await settled_heartbeats(client)
            finally:
                await client.close()
        finally:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=30)
            log.close()
    assert list(intervals.values()) == [WORKER_HEARTBEAT_S * 1000]
