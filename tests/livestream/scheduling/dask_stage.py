"""A stage plugin for the Dask tests: logs each start and end with its worker's pid.

It lives outside livestream's packages, as a facility's own stage would, so it is
loaded through the plugin point (``"tests.livestream.scheduling.dask_stage:run"``).
"""

from __future__ import annotations

import os
import time

from livestream.ledger.schema import StageResult
from livestream.stages.params import StageParams
from livestream.stages.task import StageTask
from pipelines.io.outputs import write_text_atomic

KIND = f"{__name__}:run"


class SlowParams(StageParams):
    index: str = "extract"  # the job index its results feed
    sleep_s: float = 0.0


def _log(task: StageTask, what: str) -> None:
    line = f"{what} {task.exposure.exposure_id} {task.stage} {os.getpid()}\n"
    with open(task.project_path / "stage_log.txt", "a") as log:  # O_APPEND: atomic
        log.write(line)


def run(task: StageTask, params: SlowParams) -> StageResult:
    _log(task, "start")
    time.sleep(params.sleep_s)
    relative = f"Slow/{task.stage}/{task.exposure.exposure_id}.txt"
    write_text_atomic(task.project_path / relative, str(os.getpid()))
    _log(task, "end")
    return StageResult(stage=task.stage, outputs={"document": relative})


run.params_model = SlowParams  # type: ignore[attr-defined]
