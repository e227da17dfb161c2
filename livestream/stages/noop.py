"""The ``noop`` stage: writes a small file atomically (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from livestream.ledger.schema import StageResult
from livestream.stages.params import NoopParams
from livestream.stages.task import StageTask
from pipelines.errors import StageInputError
from pipelines.io.outputs import write_text_atomic

__all__ = ["run_noop"]


def run_noop(task: StageTask, params: NoopParams) -> StageResult:
    """Write ``Noop/<stage>/<exposure_id>.json`` naming the input; nothing else."""
    movie = task.exposure.movie_path
    if movie is None or not movie.is_file():
        raise StageInputError(
            movie or task.exposure.metadata_path,
            "movie_path",
            movie,
            "movie file is missing",
        )
    if task.attempt <= params.crash_attempts:
        os._exit(70)  # a worker crash, as a segfault in a numerical library would be
    if task.attempt <= params.fail_attempts:
        raise RuntimeError(
            f"transient failure of {task.stage} on attempt {task.attempt}"
        )
    if params.sleep_s > 0:
        time.sleep(params.sleep_s)
    relative = Path("Noop") / task.stage / f"{task.exposure.exposure_id}.json"
    document = {
        "exposure_id": task.exposure.exposure_id,
        "stage": task.stage,
        "movie_size_bytes": movie.stat().st_size,
        "previous": {k: dict(v.outputs) for k, v in task.previous.items()},
        "payload": "x" * params.payload_bytes,
    }
    write_text_atomic(task.project_path / relative, json.dumps(document))
    return StageResult(
        stage=task.stage,
        outputs={"document": str(relative)},
        figures={"payload_bytes": float(params.payload_bytes)},
    )
