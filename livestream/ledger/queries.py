"""Read-only questions to the ledger: rows, counts, problems, timings.

:class:`livestream.ledger.store.Ledger` inherits these; they only run ``SELECT``s, so
they work on a read-only connection too (``livestream status``).
"""

from __future__ import annotations

import sqlite3

from livestream.ledger.schema import (
    StageResult,
    StageRow,
    StageState,
    result_from_json,
    row_from_values,
)

__all__ = ["LedgerQueries"]


class LedgerQueries:
    """The reading half of the ledger; the connection is the subclass's."""

    _db: sqlite3.Connection

    def rows_of(self, exposure_id: str) -> list[StageRow]:
        """Every stage row of one exposure, in chain order."""
        cursor = self._db.execute(
            "SELECT exposure_id, stage, state, attempts, error, duration_s,"
            " finished_unix_s, outputs, figures FROM stages WHERE exposure_id=?"
            " ORDER BY position",
            (exposure_id,),
        )
        return [row_from_values(values) for values in cursor]

    def stage_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        cursor = self._db.execute(
            "SELECT stage, state, count(*) FROM stages GROUP BY stage, state"
            " ORDER BY min(position), stage"
        )
        for stage, state, n in cursor:
            counts.setdefault(stage, {})[state] = int(n)
        return counts

    def problems(self, limit: int = 50) -> list[StageRow]:
        """Quarantined and failed rows, newest first."""
        cursor = self._db.execute(
            "SELECT exposure_id, stage, state, attempts, error, duration_s,"
            " finished_unix_s, outputs, figures FROM stages WHERE state IN (?, ?)"
            " ORDER BY finished_unix_s DESC LIMIT ?",
            (StageState.QUARANTINED.value, StageState.FAILED.value, limit),
        )
        return [row_from_values(values) for values in cursor]

    def newest_discovered_unix_s(self) -> float | None:
        (value,) = self._db.execute(
            "SELECT max(discovered_unix_s) FROM exposures"
        ).fetchone()
        return None if value is None else float(value)

    def done_times_since(self, since_unix_s: float) -> list[float]:
        cursor = self._db.execute(
            "SELECT done_unix_s FROM exposures WHERE done_unix_s >= ?"
            " ORDER BY done_unix_s",
            (since_unix_s,),
        )
        return [float(t) for (t,) in cursor]

    def first_done_unix_s(self) -> float | None:
        (value,) = self._db.execute("SELECT min(done_unix_s) FROM exposures").fetchone()
        return None if value is None else float(value)

    def count_exposures(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM exposures").fetchone()
        return int(n)

    def count_done(self) -> int:
        (n,) = self._db.execute(
            "SELECT count(*) FROM exposures WHERE done_unix_s IS NOT NULL"
        ).fetchone()
        return int(n)

    def attempt_outcomes(self) -> list[tuple[str, str, int, str | None]]:
        """``(exposure_id, stage, attempt, outcome)`` for every attempt, in order."""
        cursor = self._db.execute(
            "SELECT exposure_id, stage, attempt, outcome FROM attempts ORDER BY id"
        )
        return [(str(e), str(s), int(a), o) for e, s, a, o in cursor]

    def movie_paths(self) -> dict[str, str]:
        """``{exposure_id: movie path}`` of every exposure whose movie is known."""
        cursor = self._db.execute(
            "SELECT exposure_id, movie_path FROM exposures WHERE movie_path IS NOT NULL"
        )
        return {str(e): str(m) for e, m in cursor}

    def done_results(self, stage: str) -> list[tuple[str, StageResult]]:
        """``(exposure_id, result)`` of every done row of ``stage``, in order of
        acquisition (the order of the job index files)."""
        cursor = self._db.execute(
            "SELECT s.exposure_id, s.outputs, s.figures FROM stages s"
            " JOIN exposures e ON e.exposure_id = s.exposure_id"
            " WHERE s.stage = ? AND s.state = ?"
            " ORDER BY e.acquired_unix_s, s.exposure_id",
            (stage, StageState.DONE.value),
        )
        return [
            (str(exposure_id), result_from_json(stage, outputs, figures))
            for exposure_id, outputs, figures in cursor
        ]
