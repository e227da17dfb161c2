"""Intake under hostile input (issue #11): symlink loops, files outside the
folders, and quarantined files that change afterwards."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from livestream.config import SessionConfig
from livestream.intake.pairing import MAX_REEXAMINATIONS, Intake
from livestream.intake.settle import FileKind, check_complete, read_signature
from livestream.intake.watcher import SessionWatcher, scan_files
from livestream.ledger.store import Ledger, StageState
from livestream.telemetry.broadcast import Broadcaster
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.recorder import MetricsRecorder
from livestream.telemetry.reporting import Reporter
from mdcatch.records import Exposure
from tests.livestream.service_fixtures import write_session


def test_a_symlink_loop_is_listed_and_has_a_signature(tmp_path: Path) -> None:
    loop = tmp_path / "a_Fractions.mrc"
    loop.symlink_to(loop.name)
    (tmp_path / "b.xml").write_text("x")
    assert sorted(p.name for p in scan_files([tmp_path])) == [
        "a_Fractions.mrc",
        "b.xml",
    ]
    signature = read_signature(loop)
    assert signature is not None
    assert signature.size_bytes == os.lstat(loop).st_size
    problem = check_complete(loop, FileKind.MOVIE)
    assert problem is not None
    assert str(loop) in problem


@pytest.fixture
def intake_parts(
    tmp_path: Path,
) -> tuple[Intake, Ledger, list[Exposure], ServiceMetrics, Path, Path]:
    session, movies, _ = write_session(tmp_path, 1)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    metrics = ServiceMetrics()
    offered: list[Exposure] = []
    intake = Intake(
        ledger,
        chain=("first",),
        offer=offered.append,
        reporter=Reporter(Broadcaster(), metrics=MetricsRecorder(metrics)),
        orphan_timeout_s=60.0,
        folders=(session, movies),
    )
    (xml,) = session.rglob("FoilHole_*.xml")
    (movie,) = movies.rglob("*_Fractions.mrc")
    return intake, ledger, offered, metrics, xml, movie


def _settle(intake: Intake, path: Path, kind: FileKind) -> None:
    signature = read_signature(path)
    assert signature is not None
    intake.on_settled(path, kind, signature)


def _reexamined(metrics: ServiceMetrics) -> float:
    value = metrics.registry.get_sample_value("livestream_intake_reexamined_total")
    return 0.0 if value is None else value


def test_a_stalled_copy_is_examined_again_when_it_changes(
    intake_parts: tuple[Intake, Ledger, list[Exposure], ServiceMetrics, Path, Path],
) -> None:
    intake, ledger, offered, metrics, xml, movie = intake_parts
    whole = movie.read_bytes()
    movie.write_bytes(b"")  # the placeholder
    _settle(intake, xml, FileKind.EPU_XML)
    _settle(intake, movie, FileKind.MOVIE)
    stem = xml.stem
    assert ledger.import_state(stem) is StageState.QUARANTINED
    assert not offered
    movie.write_bytes(whole)  # the copy finishes after the settle time
    _settle(intake, movie, FileKind.MOVIE)
    assert ledger.import_state(stem) is StageState.DONE
    assert [e.exposure_id for e in offered] == [stem]
    assert _reexamined(metrics) == 1


def test_re_examination_is_bounded(
    intake_parts: tuple[Intake, Ledger, list[Exposure], ServiceMetrics, Path, Path],
) -> None:
    intake, ledger, offered, metrics, xml, movie = intake_parts
    _settle(intake, xml, FileKind.EPU_XML)
    for size in range(MAX_REEXAMINATIONS + 3):
        movie.write_bytes(b"x" * size)  # rewritten again and again, never valid
        _settle(intake, movie, FileKind.MOVIE)
    assert ledger.import_state(xml.stem) is StageState.QUARANTINED
    assert _reexamined(metrics) == MAX_REEXAMINATIONS
    assert not offered


def test_a_file_outside_the_folders_is_quarantined_unopened(
    intake_parts: tuple[Intake, Ledger, list[Exposure], ServiceMetrics, Path, Path],
    tmp_path: Path,
) -> None:
    intake, ledger, offered, _, xml, movie = intake_parts
    outside = tmp_path / "outside.mrc"
    movie.rename(outside)
    movie.symlink_to(outside)
    _settle(intake, xml, FileKind.EPU_XML)
    _settle(intake, movie, FileKind.MOVIE)
    assert ledger.import_state(xml.stem) is StageState.QUARANTINED
    with sqlite3.connect(ledger.path) as db:
        (error,) = db.execute(
            "SELECT error FROM stages WHERE exposure_id=? AND stage='import'",
            (xml.stem,),
        ).fetchone()
    assert f"{movie}: field 'movie_path'" in error
    assert f"resolves to {outside.resolve()}, outside the session" in error
    assert not offered


def test_one_file_that_raises_never_stops_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[tuple[Path, str]] = []
    watcher = SessionWatcher(
        SessionConfig(path=tmp_path),
        lambda *args: None,
        on_unreadable=lambda path, reason: reported.append((path, reason)),
    )
    bad, good = (
        tmp_path / f"FoilHole_1_Data_2_3_20200320_09020{i}_Fractions.mrc"
        for i in (0, 1)
    )
    for path in (bad, good):
        path.write_bytes(b"x")
    observe = watcher.tracker.observe

    def failing(path: Path) -> None:
        if path == bad:
            raise OSError(errno.EIO, "Input/output error", str(path))
        observe(path)

    monkeypatch.setattr(watcher.tracker, "observe", failing)
    watcher.observe([bad, good])
    watcher.observe([bad])  # the next rescan: reported once, not on every rescan
    assert [p for p, _ in reported] == [bad]
    assert str(bad) in reported[0][1]
    assert len(watcher.tracker) == 1  # the good one is watched
