"""The SQLite ledger: transitions, history, and reconciliation after a crash."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from livestream.ledger.reconcile import reconcile_ledger
from livestream.ledger.schema import SCHEMA_VERSION, rejections_of
from livestream.ledger.store import (
    Curation,
    Ledger,
    StageResult,
    StageState,
    curation_of,
)

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


# -- typed results in the ledger's figures JSON ------------------------------------
def test_a_row_in_the_stored_format_loads_as_typed_fields(tmp_path: Path) -> None:
    """Rows written before the typed fields (figures with float ``accepted`` and
    ``skipped``) load with the same meaning, and are written back byte for byte."""
    chain = ("motion", "ctf", "curate", "pick")
    ledger = Ledger(tmp_path / "livestream.sqlite")
    ledger.record_discovered("e1")
    ledger.mark_ready(
        "e1",
        chain=chain,
        acquired_unix_s=1.7e9,
        metadata_path=tmp_path / "e1.xml",
        movie_path=tmp_path / "e1.mrc",
        movie_size_bytes=1,
        movie_mtime_ns=0,
    )
    stored = {
        "curate": '{"accepted": 0.0, "rejected_astigmatism_a": 1200.0}',
        "pick": '{"skipped": 1.0, "n_picks": 0.0}',
        "ctf": '{"defocus_u_a": 15000.0, "fit_resolution_a": NaN}',
    }
    with ledger.transaction() as db:
        db.executemany(
            "UPDATE stages SET state='done', figures=? WHERE exposure_id='e1'"
            " AND stage=?",
            [(text, stage) for stage, text in stored.items()],
        )
    results = {r.stage: r.result for r in ledger.rows_of("e1")}
    curate, pick, ctf = results["curate"], results["pick"], results["ctf"]
    assert curate.accepted is False
    assert not curate.skipped
    assert curation_of(curate) is Curation.REJECTED
    assert dict(curate.figures) == {"rejected_astigmatism_a": 1200.0}
    assert rejections_of(curate) == {"astigmatism_a": 1200.0}
    assert pick.skipped
    assert pick.accepted is None
    assert dict(pick.figures) == {"n_picks": 0.0}
    assert curation_of(ctf) is Curation.UNDECIDED
    assert not ctf.skipped
    for stage in stored:
        ledger.mark_running("e1", stage)
        ledger.mark_done("e1", results[stage], duration_s=0.0, last=False)
    with ledger.transaction() as db:
        again = dict(
            db.execute("SELECT stage, figures FROM stages WHERE exposure_id='e1'")
        )
    assert {stage: again[stage] for stage in stored} == stored
    ledger.close()


def test_a_missing_decision_is_undecided_not_accepted() -> None:
    assert curation_of(None) is Curation.UNDECIDED
    assert curation_of(StageResult(stage="curate")) is Curation.UNDECIDED
    assert curation_of(StageResult(stage="curate", accepted=True)) is (
        Curation.ACCEPTED
    )


def test_a_boolean_cannot_hide_among_the_figures() -> None:
    with pytest.raises(ValueError, match="'accepted' is a typed field"):
        StageResult(stage="curate", figures={"accepted": 1.0})
    with pytest.raises(ValueError, match="'skipped' is a typed field"):
        StageResult(stage="pick", figures={"skipped": 1.0})


def test_done_results_are_in_acquisition_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    for eid, acquired in (("late", 2e9), ("early", 1e9), ("pending", 1.5e9)):
        ledger.record_discovered(eid)
        ledger.mark_ready(
            eid,
            chain=CHAIN,
            acquired_unix_s=acquired,
            metadata_path=tmp_path / "x.xml",
            movie_path=tmp_path / "x.mrc",
            movie_size_bytes=1,
            movie_mtime_ns=0,
        )
        if eid != "pending":
            ledger.mark_running(eid, "motion")
            result = StageResult(stage="motion", figures={"total_motion_a": acquired})
            ledger.mark_done(eid, result, duration_s=0.0, last=False)
    done = ledger.done_results("motion")
    assert [eid for eid, _ in done] == ["early", "late"]
    assert done[0][1].figures == {"total_motion_a": 1e9}
    ledger.close()


def test_a_schema_1_ledger_keeps_opening_and_gains_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "livestream.sqlite"
    ledger = Ledger(path)
    _ready(ledger, "e1", tmp_path)
    ledger.close()
    with sqlite3.connect(path) as db:  # what a schema-1 ledger looks like
        db.execute("DROP TABLE outbox")
        db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.close()

    ledger = Ledger(path)
    assert [r.stage for r in ledger.rows_of("e1")] == ["import", *CHAIN]
    assert ledger.stored_messages() == []
    row_id = ledger.store_message("t/e1", b'{"message_id":"m1"}', retain=False)
    version = ledger._db.execute("SELECT value FROM meta WHERE key='schema'")
    assert version.fetchone() == (str(SCHEMA_VERSION),)
    ledger.close()
    # a newer ledger opened by this version keeps its number
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='3' WHERE key='schema'")
    db.close()
    ledger = Ledger(path)
    version = ledger._db.execute("SELECT value FROM meta WHERE key='schema'")
    assert version.fetchone() == ("3",)
    assert [m.row_id for m in ledger.stored_messages()] == [row_id]
    ledger.close()


def test_outbox_rows_come_back_oldest_first_until_deleted(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    ids = [
        ledger.store_message(f"t/{i}", f"payload {i}".encode(), retain=i == 1)
        for i in range(4)
    ]
    ledger.delete_messages([ids[0], ids[2]])
    ledger.close()
    ledger = Ledger(tmp_path / "livestream.sqlite", read_only=True)
    stored = ledger.stored_messages()
    assert [(m.row_id, m.topic, m.payload, m.retain) for m in stored] == [
        (ids[1], "t/1", b"payload 1", True),
        (ids[3], "t/3", b"payload 3", False),
    ]
    assert all(m.created_unix_s > 1.7e9 for m in stored)
    ledger.close()
