"""The ledger's tables and the records read from them (see :mod:`livestream.ledger.store`)."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "IMPORT_STAGE",
    "INTERRUPTED",
    "REFUND_ATTEMPT",
    "SCHEMA_SQL",
    "SCHEMA_VERSION",
    "StageResult",
    "StageRow",
    "StageState",
    "row_from_values",
]

IMPORT_STAGE = "import"
# the outcome of an attempt that a stop, a kill or a full disk ended: not a failure
INTERRUPTED = "interrupted"
# SET clause that gives an interrupted attempt back (it does not count towards
# workers.max_attempts)
REFUND_ATTEMPT = "attempts=max(attempts - 1, 0)"
SCHEMA_VERSION = 1

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exposures (
    exposure_id TEXT PRIMARY KEY,
    metadata_path TEXT,
    movie_path TEXT,
    acquired_unix_s REAL,
    discovered_unix_s REAL NOT NULL,
    ready_unix_s REAL,
    done_unix_s REAL
);
CREATE TABLE IF NOT EXISTS stages (
    exposure_id TEXT NOT NULL REFERENCES exposures(exposure_id),
    stage TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_unix_s REAL,
    started_unix_s REAL,
    finished_unix_s REAL,
    duration_s REAL,
    error TEXT,
    outputs TEXT NOT NULL DEFAULT '{}',
    figures TEXT NOT NULL DEFAULT '{}',
    input_size_bytes INTEGER,
    input_mtime_ns INTEGER,
    PRIMARY KEY (exposure_id, stage)
);
CREATE INDEX IF NOT EXISTS stages_state ON stages(state, stage);
CREATE INDEX IF NOT EXISTS exposures_done ON exposures(done_unix_s);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exposure_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_unix_s REAL NOT NULL,
    finished_unix_s REAL,
    outcome TEXT
);
"""


class StageState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # waiting for a retry
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True, kw_only=True)
class StageResult:
    """What a stage produced: output paths (role -> path relative to the project)
    and figures (``total_motion_a``, ``defocus_a``, ``n_particles``...)."""

    stage: str
    outputs: Mapping[str, str] = field(default_factory=dict)
    figures: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StageRow:
    exposure_id: str
    stage: str
    state: StageState
    attempts: int
    error: str | None
    duration_s: float | None
    finished_unix_s: float | None
    result: StageResult


def row_from_values(values: tuple[object, ...]) -> StageRow:
    exposure_id, stage, state, attempts, error, duration, finished, outputs, figures = (
        values
    )
    return StageRow(
        exposure_id=str(exposure_id),
        stage=str(stage),
        state=StageState(state),
        attempts=int(str(attempts)),
        error=None if error is None else str(error),
        duration_s=None if duration is None else float(str(duration)),
        finished_unix_s=None if finished is None else float(str(finished)),
        result=StageResult(
            stage=str(stage),
            outputs=json.loads(str(outputs)),
            figures=json.loads(str(figures)),
        ),
    )
