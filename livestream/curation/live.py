"""Re-evaluate the curation of past exposures from their stored figures.

The ``curate`` stage decides once per exposure.  When the thresholds change, every
exposure whose motion, CTF and curate rows are done is decided again with
:func:`pipelines.curation.rules.curate_table` (one vector comparison per rule) from the
figures the ledger already holds: nothing is reprocessed.  The new decisions
replace ``accepted`` and the ``rejected_<figure>`` entries of the curate rows'
figures (with ``thresholds_version``), and each change of thresholds is one row of
the ledger table ``curation_thresholds`` (version, time, thresholds, counts).

Used by the service on SIGHUP (:mod:`livestream.curation.reload`) and by
``livestream curate`` on a finished project.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from livestream.ledger.schema import (
    REJECTED_PREFIX,
    Curation,
    curation_of,
    rejection_figures,
    rejections_of,
    result_from_json,
)
from livestream.stages.params import CurateParams, StageParams
from pipelines.curation.rules import CurationThresholds, curate_table
from pipelines.io.outputs import write_text_atomic

__all__ = [
    "CurationCounts",
    "Reevaluation",
    "curation_counts",
    "reevaluate_curation",
    "reopen_skipped",
    "thresholds_of",
    "write_decision_files",
]

# ledger figure -> curate_table column
_FIGURES = {
    "ctf": {
        "fit_resolution_a": "ctf_resolution_a",
        "defocus_u_a": "defocus_u_a",
        "defocus_v_a": "defocus_v_a",
        "figure_of_merit": "ctf_figure_of_merit",
    },
    "motion": {"total_motion_a": "total_motion_a", "early_motion_a": "early_motion_a"},
}
_THRESHOLDS_SQL = """
CREATE TABLE IF NOT EXISTS curation_thresholds (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    stage TEXT NOT NULL,
    set_unix_s REAL NOT NULL,
    thresholds TEXT NOT NULL,
    n_accepted INTEGER NOT NULL,
    n_rejected INTEGER NOT NULL,
    n_changed INTEGER NOT NULL
)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class CurationCounts:
    """The current decision set: exposures accepted, rejected, and per failed
    figure the number of exposures it rejects."""

    accepted: int = 0
    rejected: int = 0
    reasons: Mapping[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Reevaluation:
    version: int
    counts: CurationCounts
    newly_accepted: tuple[str, ...]
    newly_rejected: tuple[str, ...]
    # exposure_id -> (accepted, reasons) for every exposure whose decision changed
    changed: Mapping[str, tuple[bool, tuple[str, ...]]]


# a curate stage's parameters, or its table (checked by CurateParams)
CurateTable = StageParams | Mapping[str, Any]


def _checked(params: CurateTable) -> CurateParams:
    if isinstance(params, CurateParams):
        return params
    if isinstance(params, StageParams):
        raise TypeError(f"not the parameters of a curate stage: {params!r}")
    return CurateParams.model_validate(dict(params))


def thresholds_of(params: CurateTable) -> CurationThresholds:
    """:class:`pipelines.curation.rules.CurationThresholds` of a curate stage."""
    p = _checked(params)
    return CurationThresholds(
        max_ctf_resolution_a=p.max_ctf_resolution_a,
        min_defocus_a=p.min_defocus_a,
        max_defocus_a=p.max_defocus_a,
        max_astigmatism_a=p.max_astigmatism_a,
        max_total_motion_a=p.max_total_motion_a,
        max_early_motion_a=p.max_early_motion_a,
        min_ctf_figure_of_merit=p.min_ctf_figure_of_merit,
        max_relative_ice_thickness=None,  # the CTF stage does not measure it
    )


def reevaluate_curation(
    db: sqlite3.Connection,
    params: CurateTable,
    *,
    curate_stage: str = "curate",
    only: Sequence[str] | None = None,
) -> Reevaluation:
    """Decide every curated exposure again with ``params`` (a curate stage table);
    record the decisions in the curate rows; run inside a transaction.

    ``only`` restricts the re-evaluation to these exposures (a decision that was
    made with thresholds replaced while it ran).
    """
    p = _checked(params)
    db.execute(_THRESHOLDS_SQL)
    rows = db.execute(
        "SELECT c.exposure_id, c.figures, m.figures, t.figures FROM stages c"
        " JOIN stages m ON m.exposure_id = c.exposure_id AND m.stage = ?"
        " JOIN stages t ON t.exposure_id = c.exposure_id AND t.stage = ?"
        " WHERE c.stage = ? AND c.state = 'done' AND m.state = 'done'"
        " AND t.state = 'done'",
        (p.motion_stage, p.ctf_stage, curate_stage),
    ).fetchall()
    if only is not None:
        wanted = set(only)
        rows = [r for r in rows if r[0] in wanted]
    ids = [str(r[0]) for r in rows]
    stored = [result_from_json(curate_stage, "{}", r[1]) for r in rows]
    columns: dict[str, Any] = {}
    for index, source in ((2, "motion"), (3, "ctf")):
        parsed = [json.loads(r[index]) for r in rows]
        for name, column in _FIGURES[source].items():
            columns[column] = np.array(
                [float(f.get(name, np.nan)) for f in parsed], dtype=np.float64
            )
    import pandas as pd  # ~0.3 s: loaded on the first re-curation, not at start

    table = pd.DataFrame(columns, index=ids)
    decisions = curate_table(table, thresholds_of(p))
    version = _record_version(db, curate_stage, p, decisions, only)
    changed: dict[str, tuple[bool, tuple[str, ...]]] = {}
    updates = []
    for eid, old, accepted, reasons in zip(
        ids, stored, decisions["accepted"], decisions["reasons"], strict=True
    ):
        figures = {
            k: v for k, v in old.figures.items() if not k.startswith(REJECTED_PREFIX)
        }
        figures.update(rejection_figures(reasons))
        figures["thresholds_version"] = float(version)
        new = replace(old, figures=figures, accepted=bool(accepted))
        if (old.accepted, rejections_of(old)) != (new.accepted, rejections_of(new)):
            changed[eid] = (bool(accepted), tuple(reasons))
        updates.append((json.dumps(new.stored_figures()), eid, curate_stage))
    db.executemany(
        "UPDATE stages SET figures = ? WHERE exposure_id = ? AND stage = ?", updates
    )
    if only is None:
        db.execute(
            "UPDATE curation_thresholds SET n_changed = ? WHERE version = ?",
            (len(changed), version),
        )
    # newly accepted: rejected before (its later stages were skipped); newly
    # rejected: accepted or undecided before (its later stages ran)
    was_rejected = {
        e: curation_of(r) is Curation.REJECTED for e, r in zip(ids, stored, strict=True)
    }
    return Reevaluation(
        version=version,
        counts=curation_counts(db, curate_stage),
        newly_accepted=tuple(e for e, d in changed.items() if d[0] and was_rejected[e]),
        newly_rejected=tuple(
            e for e, d in changed.items() if not d[0] and not was_rejected[e]
        ),
        changed=changed,
    )


def _record_version(
    db: sqlite3.Connection,
    stage: str,
    params: CurateParams,
    decisions: Any,
    only: Sequence[str] | None,
) -> int:
    if only is not None:  # a late decision under the current thresholds
        row = db.execute(
            "SELECT max(version) FROM curation_thresholds WHERE stage = ?", (stage,)
        ).fetchone()
        if row[0] is not None:
            return int(row[0])
    n_accepted = int(decisions["accepted"].sum())
    cursor = db.execute(
        "INSERT INTO curation_thresholds (stage, set_unix_s, thresholds, n_accepted,"
        " n_rejected, n_changed) VALUES (?, ?, ?, ?, ?, 0)",
        (
            stage,
            time.time(),
            params.model_dump_json(exclude={"kind"}),
            n_accepted,
            len(decisions) - n_accepted,
        ),
    )
    return int(cursor.lastrowid or 0)


def curation_counts(
    db: sqlite3.Connection, curate_stage: str = "curate"
) -> CurationCounts:
    """Counts of the decisions held by the done curate rows (a row without a
    decision is counted in neither).

    Parsed in Python: the ledger's figures may hold NaN (a failed fit), which
    Python's JSON accepts and SQLite's ``json_extract`` refuses.
    """
    accepted = rejected = 0
    reasons: dict[str, int] = {}
    cursor = db.execute(
        "SELECT figures FROM stages WHERE stage = ? AND state = 'done'",
        (curate_stage,),
    )
    for (text,) in cursor:
        result = result_from_json(curate_stage, "{}", text)
        decision = curation_of(result)
        if decision is Curation.ACCEPTED:
            accepted += 1
        elif decision is Curation.REJECTED:
            rejected += 1
            for figure in rejections_of(result):
                reasons[figure] = reasons.get(figure, 0) + 1
    ordered = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return CurationCounts(accepted=accepted, rejected=rejected, reasons=dict(ordered))


def reopen_skipped(
    db: sqlite3.Connection, exposure_ids: Iterable[str], stages: Sequence[str]
) -> list[str]:
    """Put the ``stages`` that were skipped for these exposures back to pending;
    return the exposures that now have work to do."""
    reopened = []
    marks = ", ".join("?" * len(stages))
    for eid in exposure_ids:
        rows = db.execute(
            f"SELECT stage, figures FROM stages WHERE exposure_id = ? AND stage IN"
            f" ({marks}) AND state = 'done'",
            (eid, *stages),
        ).fetchall()
        skipped = [s for s, f in rows if result_from_json(s, "{}", f).skipped]
        db.executemany(
            "UPDATE stages SET state = 'pending', outputs = '{}', figures = '{}',"
            " error = NULL, finished_unix_s = NULL WHERE exposure_id = ? AND stage = ?",
            [(eid, stage) for stage in skipped],
        )
        if skipped:
            db.execute(
                "UPDATE exposures SET done_unix_s = NULL WHERE exposure_id = ?", (eid,)
            )
            reopened.append(eid)
    return reopened


def write_decision_files(
    project: Path,
    job: str,
    changed: Mapping[str, tuple[bool, tuple[str, ...]]],
    version: int,
) -> None:
    """Rewrite ``<job>/<id>.json`` of every exposure whose decision changed."""
    for eid, (accepted, reasons) in changed.items():
        document = {
            "accepted": accepted,
            "reasons": list(reasons),
            "thresholds_version": version,
        }
        write_text_atomic(project / job / f"{eid}.json", json.dumps(document) + "\n")
