"""Template sets on disk and in the ledger.

Template set ``N`` is the class averages of the online 2D classes the ranker
selected at one snapshot: an MRC stack ``AutoPick/job005/templates/templates_vNNN.mrcs``
(written atomically, white particles, the averages' pixel size in the header) and
one row of the ledger table ``template_sets`` (version, snapshot iteration, the
classes, the particles behind them, the stack's path).  The file is written before
the row: a kill between the two leaves a stack that the next set of the same
version overwrites, and a restarted service reads the newest row and picks with
the same set.

Re-picking (:func:`reopen_for_repick`) puts the pick stage and the stages after it
back to pending, in one transaction, for every finished exposure whose picks were
not made with the current set; motion and CTF rows stay done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from livestream.ledger.schema import result_from_json
from pipelines.errors import StageInputError
from pipelines.io.outputs import write_mrc
from pipelines.picking.class_templates import template_averages

__all__ = [
    "TEMPLATE_SETS_SQL",
    "TemplateSet",
    "latest_template_set",
    "next_template_version",
    "record_template_set",
    "reopen_for_repick",
    "template_picked_counts",
    "template_stack_path",
    "write_template_stack",
]

TEMPLATE_SETS_SQL = """
CREATE TABLE IF NOT EXISTS template_sets (
    version INTEGER PRIMARY KEY,
    created_unix_s REAL NOT NULL,
    iteration INTEGER NOT NULL,
    classes TEXT NOT NULL,
    n_particles INTEGER NOT NULL,
    path TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateSet:
    """One stored template set (``path`` relative to the project folder;
    ``classes`` 1-based, as RELION numbers classes)."""

    version: int
    iteration: int
    classes: tuple[int, ...]
    n_particles: int
    path: str
    created_unix_s: float

    def as_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "iteration": self.iteration,
            "classes": list(self.classes),
            "n_particles": self.n_particles,
            "path": self.path,
        }


def template_stack_path(job: str, version: int) -> Path:
    """``<job>/templates/templates_vNNN.mrcs`` relative to the project folder."""
    return Path(job) / "templates" / f"templates_v{version:03d}.mrcs"


def write_template_stack(
    classes_mrcs: str | Path, classes: Sequence[int], target: Path
) -> None:
    """Write the averages of ``classes`` (1-based) of ``classes_mrcs`` to
    ``target`` atomically, keeping the pixel size."""
    source = Path(classes_mrcs)
    with mrcfile.open(source, mode="r", permissive=True) as mrc:
        if mrc.data is None:
            raise StageInputError(source, "data", None, "not an MRC stack")
        averages = template_averages(np.asarray(mrc.data), classes, source)
        pixel_size_a = float(mrc.voxel_size.x)
    write_mrc(target, averages, pixel_size_a=pixel_size_a, float16=False, is_stack=True)


def _row_to_set(row: tuple[object, ...]) -> TemplateSet:
    version, created, iteration, classes, n_particles, path = row
    return TemplateSet(
        version=int(str(version)),
        created_unix_s=float(str(created)),
        iteration=int(str(iteration)),
        classes=tuple(int(c) for c in json.loads(str(classes))),
        n_particles=int(str(n_particles)),
        path=str(path),
    )


def latest_template_set(db: sqlite3.Connection) -> TemplateSet | None:
    """The newest stored set (``None``: none yet)."""
    db.execute(TEMPLATE_SETS_SQL)
    row = db.execute(
        "SELECT version, created_unix_s, iteration, classes, n_particles, path"
        " FROM template_sets ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return None if row is None else _row_to_set(row)


def next_template_version(db: sqlite3.Connection) -> int:
    db.execute(TEMPLATE_SETS_SQL)
    (latest,) = db.execute("SELECT max(version) FROM template_sets").fetchone()
    return 1 if latest is None else int(latest) + 1


def record_template_set(
    db: sqlite3.Connection,
    *,
    version: int,
    iteration: int,
    classes: Sequence[int],
    n_particles: int,
    path: Path,
) -> TemplateSet:
    """Store set ``version`` (its stack is already written); run in a transaction."""
    db.execute(TEMPLATE_SETS_SQL)
    now = time.time()
    db.execute(
        "INSERT INTO template_sets (version, created_unix_s, iteration, classes,"
        " n_particles, path) VALUES (?, ?, ?, ?, ?, ?)",
        (version, now, iteration, json.dumps(list(classes)), n_particles, str(path)),
    )
    return TemplateSet(
        version=version,
        iteration=iteration,
        classes=tuple(int(c) for c in classes),
        n_particles=n_particles,
        path=str(path),
        created_unix_s=now,
    )


def reopen_for_repick(
    db: sqlite3.Connection, version: int, stages: Sequence[str]
) -> list[str]:
    """Put ``stages`` (the pick stage first, then the stages after it) back to
    pending for every finished exposure whose pick is done, was not skipped, and
    was not made with template set ``version``; return those exposures.  Run
    inside a transaction."""
    pick = stages[0]
    rows = db.execute(
        "SELECT s.exposure_id, s.figures FROM stages s JOIN exposures e"
        " ON e.exposure_id = s.exposure_id WHERE s.stage = ? AND s.state = 'done'"
        " AND e.done_unix_s IS NOT NULL ORDER BY e.acquired_unix_s",
        (pick,),
    ).fetchall()
    chosen = []
    for eid, figures in rows:
        result = result_from_json(pick, "{}", figures)
        if result.skipped or result.figures.get("template_set") == float(version):
            continue
        chosen.append(str(eid))
    marks = ", ".join("?" * len(stages))
    for eid in chosen:
        db.execute(
            f"UPDATE stages SET state = 'pending', outputs = '{{}}', figures = '{{}}',"
            f" error = NULL, finished_unix_s = NULL WHERE exposure_id = ?"
            f" AND stage IN ({marks})",
            (eid, *stages),
        )
        db.execute(
            "UPDATE exposures SET done_unix_s = NULL WHERE exposure_id = ?", (eid,)
        )
    return chosen


def template_picked_counts(db: sqlite3.Connection, pick_stage: str) -> dict[int, int]:
    """Done picks per template set version (0: picked without templates)."""
    counts: dict[int, int] = {}
    cursor = db.execute(
        "SELECT figures FROM stages WHERE stage = ? AND state = 'done'", (pick_stage,)
    )
    for (figures,) in cursor:
        result = result_from_json(pick_stage, "{}", figures)
        if result.skipped:
            continue
        version = int(result.figures.get("template_set", 0.0))
        counts[version] = counts.get(version, 0) + 1
    return counts
