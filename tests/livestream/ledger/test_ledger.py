"""The SQLite ledger: transitions, history, and reconciliation after a crash."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from livestream.ledger.reconcile import reconcile_ledger
from livestream.ledger.store import Ledger, StageResult, StageState

CHAIN = ("motion", "ctf")


def _ready(ledger: Ledger, eid: str, tmp_path: Path) -> None:
    ledger.record_discovered(eid, metadata_path=tmp_path / f"{eid}.xml")
    ledger.mark_ready(
        eid,
        chain=CHAIN,
        acquired_unix_s=1.7e9,
        metadata_path=tmp_path / f"{eid}.xml",
        movie_path=tmp_path / f"{eid}.mrc",
        movie_size_bytes=1024,
        movie_mtime_ns=5,
    )


def test_database_is_wal_and_rows_follow_the_chain(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "p" / "livestream.sqlite")
    assert ledger.record_discovered("e1") is True
    assert ledger.record_discovered("e1") is False  # a duplicate event is harmless
    _ready(ledger, "e1", tmp_path)
    rows = ledger.rows_of("e1")
    assert [r.stage for r in rows] == ["import", "motion", "ctf"]
    assert [r.state for r in rows] == [
        StageState.DONE,
        StageState.PENDING,
        StageState.PENDING,
    ]
    (mode,) = ledger._db.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"
    ledger.close()


def test_attempts_and_history_are_recorded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    _ready(ledger, "e1", tmp_path)
    assert ledger.mark_running("e1", "motion") == 1
    ledger.mark_failed(
        "e1", "motion", "RuntimeError: flaky", duration_s=0.1, quarantine=False
    )
    assert ledger.mark_running("e1", "motion") == 2
    ledger.mark_done(
        "e1",
        StageResult(
            stage="motion",
            outputs={"micrograph": "m.mrc"},
            figures={"total_motion_a": 3.5},
        ),
        duration_s=0.2,
        last=False,
    )
    motion = ledger.rows_of("e1")[1]
    assert motion.state is StageState.DONE
    assert motion.attempts == 2
    assert motion.error is None
    assert motion.result.figures == {"total_motion_a": 3.5}
    assert ledger.attempt_outcomes() == [
        ("e1", "motion", 1, "failed"),
        ("e1", "motion", 2, "done"),
    ]
    assert ledger.stage_counts()["motion"] == {"done": 1}


def test_reconcile_redoes_half_done_work_and_keeps_finished_work(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    ledger = Ledger(project / "livestream.sqlite")
    for eid in ("kept", "lost", "interrupted"):
        _ready(ledger, eid, tmp_path)
        ledger.mark_running(eid, "motion")
    (project / "kept.mrc").write_bytes(b"x")
    ledger.mark_done(
        "kept",
        StageResult(stage="motion", outputs={"m": "kept.mrc"}),
        duration_s=1,
        last=False,
    )
    ledger.mark_done(
        "lost",
        StageResult(stage="motion", outputs={"m": "lost.mrc"}),
        duration_s=1,
        last=False,
    )
    partial = project / "MotionCorr" / ".x.mrc.abcd.partial"
    partial.parent.mkdir()
    partial.write_bytes(b"half")
    ledger.close()

    ledger = Ledger(project / "livestream.sqlite")  # as after a crash
    report = reconcile_ledger(ledger, project)
    assert report.running_reset == 1
    assert report.missing_outputs_reset == 1
    assert report.partials_removed == 1
    assert not partial.exists()
    states = {
        eid: ledger.rows_of(eid)[1].state for eid in ("kept", "lost", "interrupted")
    }
    assert states == {
        "kept": StageState.DONE,
        "lost": StageState.PENDING,
        "interrupted": StageState.PENDING,
    }
    outcomes = {(e, a): o for e, _, a, o in ledger.attempt_outcomes()}
    assert outcomes[("interrupted", 1)] == "interrupted"


def test_quarantine_with_reason_and_read_only_access(tmp_path: Path) -> None:
    path = tmp_path / "livestream.sqlite"
    ledger = Ledger(path)
    ledger.record_discovered("bad")
    ledger.quarantine_import("bad", "bad.xml: field 'pixelSize' has value '0'")
    ledger.close()
    reader = Ledger(path, read_only=True)
    (problem,) = reader.problems()
    assert problem.stage == "import"
    assert problem.state is StageState.QUARANTINED
    assert "pixelSize" in (problem.error or "")
    reader.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM exposures").fetchone() == (1,)


def test_quarantined_stages_are_retried_only_when_asked(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    _ready(ledger, "e1", tmp_path)
    ledger.mark_running("e1", "motion")
    ledger.mark_failed("e1", "motion", "bad gain", duration_s=0.1, quarantine=True)
    reconcile_ledger(ledger, tmp_path)
    assert ledger.rows_of("e1")[1].state is StageState.QUARANTINED
    reconcile_ledger(ledger, tmp_path, retry_quarantined=True)
    row = ledger.rows_of("e1")[1]
    assert (row.state, row.attempts, row.error) == (StageState.PENDING, 0, None)
