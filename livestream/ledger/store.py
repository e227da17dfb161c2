"""The durable ledger: SQLite (WAL), one row per exposure and stage.

The ledger is the truth of "done exactly once": a stage row becomes ``done`` only
after the stage's outputs were renamed into place (:mod:`pipelines.io.outputs`), and
:func:`livestream.ledger.reconcile.reconcile_ledger` makes the files and the rows agree
again after a crash.
The first stage of every exposure is ``import`` (the files settled and parsed);
the configured chain follows.  Every attempt is also appended to ``attempts``, so
the history proves that nothing finished was started again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from livestream.ledger.outbox import OutboxRows
from livestream.ledger.queries import LedgerQueries
from livestream.ledger.schema import (
    IMPORT_STAGE,
    INTERRUPTED,
    REFUND_ATTEMPT,
    SCHEMA_SQL,
    SCHEMA_VERSION,
    Curation,
    StageResult,
    StageRow,
    StageState,
    curation_of,
)

__all__ = [
    "IMPORT_STAGE",
    "Curation",
    "Ledger",
    "StageResult",
    "StageRow",
    "StageState",
    "curation_of",
]


def _now() -> float:
    return time.time()


class Ledger(LedgerQueries, OutboxRows):
    """One SQLite database per project, ``<project>/livestream.sqlite``."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; a power cut may lose
            # the last commits, which reconciliation then redoes (never skips).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA_SQL)
            self._db.execute(  # an older ledger now has the newer tables
                "INSERT INTO meta VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE"
                " SET value=excluded.value"
                " WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (str(SCHEMA_VERSION),),
            )
        self._db.execute("PRAGMA busy_timeout=5000")

    # -- plumbing -----------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        with suppress(sqlite3.OperationalError):  # a read-only connection
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    # -- exposures ----------------------------------------------------------------
    def record_discovered(
        self,
        exposure_id: str,
        *,
        metadata_path: Path | None = None,
        movie_path: Path | None = None,
    ) -> bool:
        """Note a file of ``exposure_id``; return True the first time it is seen."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT metadata_path, movie_path FROM exposures WHERE exposure_id=?",
                (exposure_id,),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO exposures (exposure_id, metadata_path, movie_path,"
                    " discovered_unix_s) VALUES (?, ?, ?, ?)",
                    (exposure_id, _str(metadata_path), _str(movie_path), _now()),
                )
                db.execute(
                    "INSERT INTO stages (exposure_id, stage, position, state)"
                    " VALUES (?, ?, 0, ?)",
                    (exposure_id, IMPORT_STAGE, StageState.PENDING.value),
                )
                return True
            db.execute(
                "UPDATE exposures SET metadata_path=coalesce(?, metadata_path),"
                " movie_path=coalesce(?, movie_path) WHERE exposure_id=?",
                (_str(metadata_path), _str(movie_path), exposure_id),
            )
            return False

    def mark_ready(
        self,
        exposure_id: str,
        *,
        chain: Sequence[str],
        acquired_unix_s: float,
        metadata_path: Path,
        movie_path: Path,
        movie_size_bytes: int,
        movie_mtime_ns: int,
    ) -> None:
        """Import done: add pending rows for every chain stage (existing rows stay)."""
        now = _now()
        with self.transaction() as db:
            db.execute(
                "UPDATE exposures SET metadata_path=?, movie_path=?, acquired_unix_s=?,"
                " ready_unix_s=coalesce(ready_unix_s, ?) WHERE exposure_id=?",
                (
                    str(metadata_path),
                    str(movie_path),
                    acquired_unix_s,
                    now,
                    exposure_id,
                ),
            )
            db.execute(
                "UPDATE stages SET state=?, error=NULL, finished_unix_s=?,"
                " input_size_bytes=?, input_mtime_ns=? WHERE exposure_id=? AND stage=?",
                (
                    StageState.DONE.value,
                    now,
                    movie_size_bytes,
                    movie_mtime_ns,
                    exposure_id,
                    IMPORT_STAGE,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO stages (exposure_id, stage, position, state,"
                " queued_unix_s) VALUES (?, ?, ?, ?, ?)",
                [
                    (exposure_id, stage, i + 1, StageState.PENDING.value, now)
                    for i, stage in enumerate(chain)
                ],
            )

    def quarantine_import(
        self,
        exposure_id: str,
        error: str,
        *,
        input_size_bytes: int | None = None,
        input_mtime_ns: int | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE stages SET state=?, error=?, finished_unix_s=?,"
                " input_size_bytes=?, input_mtime_ns=? WHERE exposure_id=? AND stage=?"
                " AND state != ?",
                (
                    StageState.QUARANTINED.value,
                    error,
                    _now(),
                    input_size_bytes,
                    input_mtime_ns,
                    exposure_id,
                    IMPORT_STAGE,
                    StageState.DONE.value,
                ),
            )

    def quarantine_following(
        self, exposure_id: str, stage: str, chain: Sequence[str]
    ) -> None:
        """Stages after a quarantined one will not run: say so in their rows."""
        later = list(chain)[list(chain).index(stage) + 1 :]
        with self.transaction() as db:
            db.executemany(
                "UPDATE stages SET state=?, error=? WHERE exposure_id=? AND stage=?"
                " AND state=?",
                [
                    (
                        StageState.QUARANTINED.value,
                        f"not run: stage {stage!r} was quarantined",
                        exposure_id,
                        name,
                        StageState.PENDING.value,
                    )
                    for name in later
                ],
            )

    def import_state(self, exposure_id: str) -> StageState | None:
        row = self._db.execute(
            "SELECT state FROM stages WHERE exposure_id=? AND stage=?",
            (exposure_id, IMPORT_STAGE),
        ).fetchone()
        return None if row is None else StageState(row[0])

    def is_imported(self, exposure_id: str) -> bool:
        row = self._db.execute(
            "SELECT state FROM stages WHERE exposure_id=? AND stage=?",
            (exposure_id, IMPORT_STAGE),
        ).fetchone()
        return row is not None and row[0] == StageState.DONE.value

    # -- stage transitions ---------------------------------------------------------
    def mark_running(self, exposure_id: str, stage: str) -> int:
        """Start an attempt; return its number (1 for the first)."""
        now = _now()
        with self.transaction() as db:
            db.execute(
                "UPDATE stages SET state=?, attempts=attempts+1, started_unix_s=?"
                " WHERE exposure_id=? AND stage=?",
                (StageState.RUNNING.value, now, exposure_id, stage),
            )
            (attempt,) = db.execute(
                "SELECT attempts FROM stages WHERE exposure_id=? AND stage=?",
                (exposure_id, stage),
            ).fetchone()
            db.execute(
                "INSERT INTO attempts (exposure_id, stage, attempt, started_unix_s)"
                " VALUES (?, ?, ?, ?)",
                (exposure_id, stage, attempt, now),
            )
        return int(attempt)

    def _finish(
        self,
        db: sqlite3.Connection,
        exposure_id: str,
        stage: str,
        state: StageState,
        now: float,
    ) -> None:
        db.execute(
            "UPDATE attempts SET finished_unix_s=?, outcome=? WHERE id=(SELECT max(id)"
            " FROM attempts WHERE exposure_id=? AND stage=?)",
            (now, state.value, exposure_id, stage),
        )

    def mark_done(
        self, exposure_id: str, result: StageResult, *, duration_s: float, last: bool
    ) -> None:
        """Record a finished stage (its outputs are already in place)."""
        now = _now()
        with self.transaction() as db:
            db.execute(
                "UPDATE stages SET state=?, finished_unix_s=?, duration_s=?, error=NULL,"
                " outputs=?, figures=? WHERE exposure_id=? AND stage=?",
                (
                    StageState.DONE.value,
                    now,
                    duration_s,
                    json.dumps(dict(result.outputs)),
                    json.dumps(result.stored_figures()),
                    exposure_id,
                    result.stage,
                ),
            )
            self._finish(db, exposure_id, result.stage, StageState.DONE, now)
            if last:
                db.execute(
                    "UPDATE exposures SET done_unix_s=? WHERE exposure_id=?",
                    (now, exposure_id),
                )

    def mark_failed(
        self,
        exposure_id: str,
        stage: str,
        error: str,
        *,
        duration_s: float,
        quarantine: bool,
    ) -> None:
        state = StageState.QUARANTINED if quarantine else StageState.FAILED
        now = _now()
        with self.transaction() as db:
            db.execute(
                "UPDATE stages SET state=?, finished_unix_s=?, duration_s=?, error=?"
                " WHERE exposure_id=? AND stage=?",
                (state.value, now, duration_s, error, exposure_id, stage),
            )
            self._finish(db, exposure_id, stage, state, now)

    def mark_interrupted(self, exposure_id: str, stage: str) -> bool:
        """Put an interrupted attempt back in the queue without counting it.

        A stop, a kill or a full disk interrupts an attempt; that is no failure of
        the stage, so its attempt is given back (``max_attempts`` counts failures)
        and closed as ``interrupted`` in the history.  Only a ``running`` row
        changes; return whether it did.
        """
        with self.transaction() as db:
            changed = db.execute(
                f"UPDATE stages SET state=?, {REFUND_ATTEMPT}"
                " WHERE exposure_id=? AND stage=? AND state=?",
                (
                    StageState.PENDING.value,
                    exposure_id,
                    stage,
                    StageState.RUNNING.value,
                ),
            ).rowcount
            if changed:
                db.execute(
                    "UPDATE attempts SET finished_unix_s=?, outcome=? WHERE"
                    " id=(SELECT max(id) FROM attempts WHERE exposure_id=? AND stage=?)"
                    " AND outcome IS NULL",
                    (_now(), INTERRUPTED, exposure_id, stage),
                )
        return changed > 0


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
