"""The ledger's tables and the records read from them (see :mod:`livestream.ledger.store`)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "IMPORT_STAGE",
    "INTERRUPTED",
    "REFUND_ATTEMPT",
    "REJECTED_PREFIX",
    "SCHEMA_SQL",
    "SCHEMA_VERSION",
    "Curation",
    "StageResult",
    "StageRow",
    "StageState",
    "curation_of",
    "rejection_figures",
    "rejections_of",
    "result_from_json",
    "row_from_values",
]

IMPORT_STAGE = "import"
# the outcome of an attempt that a stop, a kill or a full disk ended: not a failure
INTERRUPTED = "interrupted"
# SET clause that gives an interrupted attempt back (it does not count towards
# workers.max_attempts)
REFUND_ATTEMPT = "attempts=max(attempts - 1, 0)"
# 2: the outbox table (MQTT events kept until the broker acknowledged them).  An
# older ledger gains the new tables when it opens (CREATE TABLE IF NOT EXISTS).
SCHEMA_VERSION = 2

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
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    created_unix_s REAL NOT NULL
);
"""


class StageState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # waiting for a retry
    QUARANTINED = "quarantined"


class Curation(enum.Enum):
    """The curation decision a stage result holds (:func:`curation_of`)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    # no decision: the stage does not curate (or there is no result).  An
    # undecided exposure is *not curated*: it is processed and pooled as in a chain
    # without a curate stage, and counted neither as accepted nor as rejected.
    UNDECIDED = "undecided"


# the figures keys under which the ledger stores the typed fields (schema 1)
_ACCEPTED_KEY = "accepted"
_SKIPPED_KEY = "skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class StageResult:
    """What a stage produced: output paths (role -> path relative to the project)
    and figures (numbers only: ``total_motion_a``, ``defocus_a``, ``n_particles``...).

    ``skipped``: the stage is done without having run (curation rejected the
    exposure).  ``accepted``: the curation decision of a curate stage (``None``
    for every other stage); read it through :func:`curation_of`.
    """

    stage: str
    outputs: Mapping[str, str] = field(default_factory=dict)
    figures: Mapping[str, float] = field(default_factory=dict)
    skipped: bool = False
    accepted: bool | None = None

    def __post_init__(self) -> None:
        for key in (_ACCEPTED_KEY, _SKIPPED_KEY):
            if key in self.figures:
                raise ValueError(
                    f"stage {self.stage!r}: figure {key!r} is a typed field of "
                    f"StageResult, not a figure (got {self.figures[key]!r})"
                )

    def stored_figures(self) -> dict[str, float]:
        """The figures as the ledger stores them (and events carry them): the
        typed fields as ``accepted`` = 1.0/0.0 and ``skipped`` = 1.0 first."""
        stored: dict[str, float] = {}
        if self.accepted is not None:
            stored[_ACCEPTED_KEY] = float(self.accepted)
        if self.skipped:
            stored[_SKIPPED_KEY] = 1.0
        stored.update(self.figures)
        return stored

    @classmethod
    def from_stored(
        cls, stage: str, outputs: Mapping[str, str], figures: Mapping[str, float]
    ) -> StageResult:
        """The inverse of :meth:`stored_figures` (every ledger row since schema 1)."""
        numbers = dict(figures)
        accepted = numbers.pop(_ACCEPTED_KEY, None)
        skipped = numbers.pop(_SKIPPED_KEY, 0.0)
        return cls(
            stage=stage,
            outputs=dict(outputs),
            figures=numbers,
            skipped=float(skipped) != 0.0,
            accepted=None if accepted is None else float(accepted) != 0.0,
        )


def curation_of(result: StageResult | None) -> Curation:
    """The one reading of a curation decision: accepted, rejected, or undecided
    (no result, or a result without a decision; see :class:`Curation`)."""
    if result is None or result.accepted is None:
        return Curation.UNDECIDED
    return Curation.ACCEPTED if result.accepted else Curation.REJECTED


REJECTED_PREFIX = "rejected_"


def rejection_figures(reasons: Iterable[str]) -> dict[str, float]:
    """A curation's reasons ``"figure=value > max limit"`` -> the figures
    ``{"rejected_<figure>": value}`` its result holds."""
    out: dict[str, float] = {}
    for reason in reasons:
        name, _, rest = reason.partition("=")
        out[f"{REJECTED_PREFIX}{name}"] = float(rest.split()[0])
    return out


def rejections_of(result: StageResult) -> dict[str, float]:
    """The failed curation rules of ``result``: figure name -> its value."""
    return {
        name.removeprefix(REJECTED_PREFIX): value
        for name, value in result.figures.items()
        if name.startswith(REJECTED_PREFIX)
    }


def result_from_json(stage: str, outputs_json: str, figures_json: str) -> StageResult:
    """A stage result from the ledger's ``outputs`` and ``figures`` JSON columns."""
    return StageResult.from_stored(
        stage, json.loads(outputs_json), json.loads(figures_json)
    )


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
        result=result_from_json(str(stage), str(outputs), str(figures)),
    )
