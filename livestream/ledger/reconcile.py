"""Start-up reconciliation: make the ledger and the project folder agree again.

After a crash or a stop: ``running`` rows were interrupted and go back to
``pending`` (their attempt is closed as ``interrupted`` and not counted: a killed
daemon is no failure of the stage, see :meth:`Ledger.mark_interrupted`); ``done``
rows whose outputs are missing go back to ``pending``; ``failed`` rows (waiting for
a retry) become ``pending`` with their attempt count kept; temporary ``*.partial``
files in the project are deleted.  Nothing ``done`` with its outputs present is redone.
Quarantined stages stay quarantined unless asked (their attempts restart at 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from livestream.ledger.schema import (
    IMPORT_STAGE,
    INTERRUPTED,
    REFUND_ATTEMPT,
    StageState,
)
from livestream.ledger.store import Ledger
from pipelines.io.outputs import remove_partials

__all__ = ["ReconcileReport", "reconcile_ledger"]

PENDING, RUNNING, DONE = (
    StageState.PENDING.value,
    StageState.RUNNING.value,
    StageState.DONE.value,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileReport:
    running_reset: int
    missing_outputs_reset: int
    failed_reset: int
    partials_removed: int


def reconcile_ledger(
    ledger: Ledger, project: Path, *, retry_quarantined: bool = False
) -> ReconcileReport:
    """Reconcile ``ledger`` with ``project`` (see the module doc)."""

    with ledger.transaction() as db:
        running = db.execute(
            f"UPDATE stages SET state=?, {REFUND_ATTEMPT} WHERE state=?",
            (PENDING, RUNNING),
        ).rowcount
        db.execute(
            "UPDATE attempts SET outcome=? WHERE outcome IS NULL", (INTERRUPTED,)
        )
        failed = db.execute(
            "UPDATE stages SET state=? WHERE state=?",
            (PENDING, StageState.FAILED.value),
        ).rowcount
        if retry_quarantined:
            db.execute(
                "UPDATE stages SET state=?, attempts=0, error=NULL WHERE state=?"
                " AND stage != ?",
                (PENDING, StageState.QUARANTINED.value, IMPORT_STAGE),
            )
        missing = 0
        cursor = db.execute(
            "SELECT exposure_id, stage, outputs FROM stages WHERE state=?"
            " AND outputs != '{}'",
            (DONE,),
        )
        for exposure_id, stage, outputs in cursor.fetchall():
            if all((project / p).is_file() for p in json.loads(outputs).values()):
                continue
            missing += 1
            db.execute(
                "UPDATE stages SET state=?, outputs='{}' WHERE exposure_id=?"
                " AND stage=?",
                (PENDING, exposure_id, stage),
            )
            db.execute(
                "UPDATE exposures SET done_unix_s=NULL WHERE exposure_id=?",
                (exposure_id,),
            )
    removed = remove_partials(project)
    return ReconcileReport(
        running_reset=running,
        missing_outputs_reset=missing,
        failed_reset=failed,
        partials_removed=len(removed),
    )
