"""OpenMP's idle threads sleep in the service's processes
(livestream.scheduling.openmp; docs/motion_speed.md, twelfth revision)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from livestream.cli.main import main
from livestream.scheduling.executors import LocalExecutor
from livestream.scheduling.openmp import WAIT_POLICY, passive_openmp

ENV = "OMP_WAIT_POLICY"


def openmp_of_this_process(_: object = None) -> dict[str, object]:
    """A numba parallel kernel run here (libgomp loads with the ``omp`` layer),
    then what libgomp took."""
    import numba
    import numpy as np

    from livestream.scheduling.openmp import spin_count
    from pipelines.motion._kernels.core import frame_sum

    out = np.empty((4, 8), dtype=np.float32)
    frame_sum(np.ones((3, 4, 8), dtype=np.int8), out)
    return {
        "layer": numba.threading_layer(),
        "spin": spin_count(),
        "env": os.environ.get(ENV),
    }


def _needs_libgomp(seen: dict[str, object]) -> None:
    if seen["layer"] != "omp" or seen["spin"] is None:
        pytest.skip(f"numba's layer here is {seen['layer']}, not GNU libgomp 11+")


@pytest.mark.slow  # a spawned worker imports numba
async def test_the_pool_workers_openmp_threads_sleep_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # not inherited: spawn passes this environment, which has no policy
    monkeypatch.delenv(ENV, raising=False)
    executor = LocalExecutor(1, "spawn")
    try:
        seen = await executor.run(openmp_of_this_process, None)
    finally:
        await executor.close(cancel=False)
    _needs_libgomp(seen)
    assert seen["env"] == WAIT_POLICY
    assert seen["spin"] == 0


@pytest.mark.slow
def test_without_the_setting_libgomp_spins() -> None:
    """The read-back tells the two apart: a process without the setting spins."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    code = (
        "import json; from tests.livestream.scheduling.test_openmp import "
        "openmp_of_this_process as f; print(json.dumps(f()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    _needs_libgomp(seen)
    assert seen["env"] is None
    assert seen["spin"] > 0  # libgomp's default: 300 000 turns


def test_the_command_line_sets_it_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ.get(ENV) == WAIT_POLICY


def test_an_operators_policy_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "ACTIVE")
    passive_openmp()
    assert os.environ[ENV] == "ACTIVE"
