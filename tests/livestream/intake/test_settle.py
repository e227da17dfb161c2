"""Settling: size and mtime stable for the settle time, and the file complete."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from livestream.config import SoftwareChoice
from livestream.intake.settle import (
    FileKind,
    SettleTracker,
    check_complete,
    classify_path,
)
from tests.livestream.service_fixtures import write_session


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_file_settles_only_after_the_settle_time(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = SettleTracker(5.0, clock)
    path = tmp_path / "a.bin"
    path.write_bytes(b"12")
    tracker.observe(path)
    tracker.observe(path)  # a duplicate event changes nothing
    clock.now += 4.9
    assert tracker.pop_settled() == []
    clock.now += 0.2
    settled = tracker.pop_settled()
    assert [p for p, _ in settled] == [path]
    assert settled[0][1].size_bytes == 2
    tracker.observe(path)  # seen again unchanged: already accepted
    clock.now += 10
    assert tracker.pop_settled() == []
    assert len(tracker) == 0


def test_a_growing_file_restarts_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = SettleTracker(5.0, clock)
    path = tmp_path / "movie.mrc"
    path.write_bytes(b"1")
    tracker.observe(path)
    clock.now += 4.0
    with open(path, "ab") as fh:
        fh.write(b"2")
    os.utime(path, ns=(0, 123_456_789_000))
    clock.now += 1.5  # first due time: the signature changed, so not settled
    assert tracker.pop_settled() == []
    clock.now += 5.0
    assert [p for p, _ in tracker.pop_settled()] == [path]


def test_a_file_that_vanishes_is_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = SettleTracker(1.0, clock)
    path = tmp_path / "tmp.xml"
    path.write_text("x")
    tracker.observe(path)
    path.unlink()
    clock.now += 2
    assert tracker.pop_settled() == []
    assert tracker.next_due_s() is None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("FoilHole_1_Data_2_3_20200320_090200.xml", FileKind.EPU_XML),
        ("FoilHole_1_Data_2_3_20200320_090200_Fractions.mrc", FileKind.MOVIE),
        ("FoilHole_1_Data_2_3_20200320_090200_EER.eer", FileKind.MOVIE),
        ("FoilHole_1_Data_2_3_20200320_090200.mrc", None),  # EPU's summed image
        ("FoilHole_1_Data_2_3_20200320_090200.jpg", None),
        (".FoilHole_1_Data_2_3_20200320_090200.xml.Ab12", None),  # temporary
        ("FoilHole_1_Data_2_3_20200320_090200_Fractions.mrc.partial", None),
        ("GridSquare_20250108_151151.xml", None),
        ("movie_001.tif.mdoc", FileKind.MDOC),
    ],
)
def test_names_are_classified(tmp_path: Path, name: str, kind: FileKind | None) -> None:
    assert classify_path(tmp_path / name) is kind


def test_a_serialem_movie_counts_only_beside_its_mdoc(tmp_path: Path) -> None:
    movie = tmp_path / "movie_001.tif"
    assert classify_path(movie) is None
    (tmp_path / "movie_001.tif.mdoc").write_text("PixelSpacing = 1\n")
    assert classify_path(movie) is FileKind.MOVIE
    assert classify_path(movie, SoftwareChoice.EPU) is None
    assert (
        classify_path(tmp_path / "x.tif", expected={tmp_path / "x.tif"})
        is FileKind.MOVIE
    )


def test_completeness_names_the_problem(tmp_path: Path) -> None:
    session, movies, _ = write_session(tmp_path, 1)
    (xml,) = session.rglob("FoilHole_*.xml")
    (movie,) = movies.rglob("*.mrc")
    assert check_complete(xml, FileKind.EPU_XML) is None
    assert check_complete(movie, FileKind.MOVIE) is None
    data = movie.read_bytes()
    movie.write_bytes(data[: len(data) // 2])
    assert "truncated" in (check_complete(movie, FileKind.MOVIE) or "")
    text = xml.read_text()
    xml.write_text(text[: len(text) // 2])
    problem = check_complete(xml, FileKind.EPU_XML)
    assert problem is not None
    assert xml.name in problem


def test_random_signatures_never_settle_early(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Invariant: whatever the event order, nothing settles before its last change
    plus the settle time."""
    clock = FakeClock()
    tracker = SettleTracker(2.0, clock)
    paths = [tmp_path / f"f{i}" for i in range(5)]
    last_change = {}
    for step in range(200):
        path = paths[int(rng.integers(len(paths)))]
        if rng.random() < 0.3:
            path.write_bytes(b"x" * int(rng.integers(1, 50)))
            os.utime(path, ns=(0, step * 1_000_000_000))
            last_change[path] = clock.now
        if path.exists():
            tracker.observe(path)
        clock.now += float(rng.uniform(0, 0.8))
        for settled, _ in tracker.pop_settled():
            assert clock.now - last_change[settled] >= 2.0
