"""Interrupted attempts (a stop, a kill, a full disk) are not failures: they do not
count towards ``workers.max_attempts``."""

from __future__ import annotations

from pathlib import Path

from livestream.ledger.reconcile import reconcile_ledger
from livestream.ledger.store import Ledger, StageState
from tests.livestream.ledger.test_ledger import _ready


def test_interrupted_attempt_is_given_back_and_closed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    _ready(ledger, "e1", tmp_path)
    assert ledger.mark_running("e1", "motion") == 1
    assert ledger.mark_interrupted("e1", "motion")
    row = ledger.rows_of("e1")[1]
    assert (row.state, row.attempts) == (StageState.PENDING, 0)
    assert not ledger.mark_interrupted("e1", "motion")  # only a running row
    assert ledger.mark_running("e1", "motion") == 1  # the next try is attempt 1
    outcomes = [o for e, s, _, o in ledger.attempt_outcomes() if s == "motion"]
    assert outcomes == ["interrupted", None]


def test_reconcile_gives_back_the_attempt_of_a_killed_daemon(tmp_path: Path) -> None:
    project = tmp_path / "project"
    ledger = Ledger(project / "livestream.sqlite")
    _ready(ledger, "e1", tmp_path)
    ledger.mark_running("e1", "motion")
    ledger.mark_failed("e1", "motion", "transient", duration_s=1, quarantine=False)
    ledger.mark_running("e1", "motion")  # attempt 2, then the daemon is killed
    ledger.close()

    ledger = Ledger(project / "livestream.sqlite")
    assert reconcile_ledger(ledger, project).running_reset == 1
    row = ledger.rows_of("e1")[1]
    assert (row.state, row.attempts) == (StageState.PENDING, 1)  # the failure only
    outcomes = [o for e, s, _, o in ledger.attempt_outcomes() if s == "motion"]
    assert outcomes == ["failed", "interrupted"]
