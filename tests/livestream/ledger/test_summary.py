"""The ledger summary: a typed record whose JSON is what ``livestream status`` prints."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from livestream.ledger.store import Ledger, StageResult
from livestream.ledger.summary import LedgerSummary, summarize_ledger


def _done(ledger: Ledger, eid: str, tmp_path: Path) -> None:
    ledger.record_discovered(eid, metadata_path=tmp_path / f"{eid}.xml")
    ledger.mark_ready(
        eid,
        chain=("motion",),
        acquired_unix_s=1.7e9,
        metadata_path=tmp_path / f"{eid}.xml",
        movie_path=tmp_path / f"{eid}.mrc",
        movie_size_bytes=1024,
        movie_mtime_ns=5,
    )
    ledger.mark_running(eid, "motion")
    ledger.mark_done(eid, StageResult(stage="motion"), duration_s=0.1, last=True)


def test_empty_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    summary = summarize_ledger(ledger, now_unix_s=1.7e9)
    ledger.close()
    assert summary == LedgerSummary(
        exposures={},
        n_exposures=0,
        n_done=0,
        newest_exposure_age_s=None,
        exposures_per_hour=0.0,
    )


def test_counts_rate_and_json_fields_in_status_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    _done(ledger, "e1", tmp_path)
    _done(ledger, "e2", tmp_path)
    ledger.record_discovered("e3")
    now = time.time() + 10.0
    summary = summarize_ledger(ledger, now_unix_s=now)
    ledger.close()
    assert summary.n_exposures == 3
    assert summary.n_done == 2
    assert summary.exposures["motion"] == {"done": 2}
    assert summary.exposures["import"] == {"done": 2, "pending": 1}
    assert summary.newest_exposure_age_s == pytest.approx(10.0, abs=5.0)
    # two exposures within the first minute: the span counts as 60 s
    assert summary.exposures_per_hour == pytest.approx(120.0)
    document = summary.to_json()
    assert list(document) == [
        "exposures",
        "n_exposures",
        "n_done",
        "newest_exposure_age_s",
        "exposures_per_hour",
    ]
    assert json.loads(json.dumps(document)) == document  # plain JSON values
    assert document["exposures"] == {
        "import": {"done": 2, "pending": 1},
        "motion": {"done": 2},
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.n_done = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        summary.exposures["motion"]["done"] = 7  # type: ignore[index]
