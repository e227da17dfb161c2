"""The one path-containment rule (issue #11 item 2): a resolved path must lie in
the session or movie folders; mdoc paths are held to it before anything is read."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mdcatch import MetadataError
from mdcatch.containment import check_inside
from mdcatch.matching import find_movie, index_movies
from mdcatch.records import Software
from mdcatch.serialem.mdoc import read_mdoc
from tests.livestream.service_fixtures import write_session


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    session, movies, outside = tmp_path / "s", tmp_path / "m", tmp_path / "out"
    for folder in (session, movies, outside):
        folder.mkdir()
    (outside / "secret.mrc").write_bytes(b"x")
    return session, movies, outside


def test_inside_paths_resolve(folders: tuple[Path, Path, Path]) -> None:
    session, movies, _ = folders
    (movies / "a.mrc").write_bytes(b"a")
    (session / "link.mrc").symlink_to(movies / "a.mrc")
    source = session / "link.mrc"
    got = check_inside(source, [session, movies], source=source, field="movie_path")
    assert got == (movies / "a.mrc").resolve()


@pytest.mark.parametrize("how", ["symlink", "dotdot", "absolute", "loop"])
def test_outside_paths_are_refused(folders: tuple[Path, Path, Path], how: str) -> None:
    session, movies, outside = folders
    path = session / "x.mrc"
    if how == "symlink":
        path.symlink_to(outside / "secret.mrc")
    elif how == "dotdot":
        path = session / ".." / "out" / "secret.mrc"
    elif how == "absolute":
        path = outside / "secret.mrc"
    else:
        path.symlink_to(path)
    with pytest.raises(MetadataError) as caught:
        check_inside(path, [session, movies], source=session / "a.mdoc", field="F")
    error = caught.value
    assert (error.path, error.field, error.value) == (
        session / "a.mdoc",
        "F",
        str(path),
    )
    expected = "symbolic link loop" if how == "loop" else "outside the session"
    assert expected in error.reason


@pytest.mark.parametrize("raw", ["absolute", "../out/../out/secret.mrc"])
def test_an_mdoc_naming_a_movie_outside_is_refused(tmp_path: Path, raw: str) -> None:
    session, _, _ = write_session(tmp_path, 1, software=Software.SERIALEM)
    outside = tmp_path / "out"
    outside.mkdir()
    (outside / "secret.mrc").write_bytes(b"x")
    (mdoc,) = session.glob("*.mdoc")
    value = str(outside / "secret.mrc") if raw == "absolute" else raw
    text = re.sub(r"SubFramePath = .*", f"SubFramePath = {value}", mdoc.read_text())
    mdoc.write_text(text)
    (session / next(session.glob("*.mrc")).name).unlink()  # no name-alike inside
    _, exposures = read_mdoc(mdoc)  # offline: read as written
    assert exposures[0].movie_path is not None
    with pytest.raises(MetadataError) as caught:
        read_mdoc(mdoc, folders=[session])
    assert caught.value.path == mdoc
    assert caught.value.field == "SubFramePath"
    assert caught.value.value == value
    assert "outside the session" in caught.value.reason
    assert os.fspath(outside / "secret.mrc") in caught.value.reason


def test_epu_movie_lookup_skips_links_leaving_the_roots(
    folders: tuple[Path, Path, Path],
) -> None:
    session, movies, outside = folders
    stem = "FoilHole_1_Data_2_3_20200320_090200"
    (movies / f"{stem}_Fractions.mrc").symlink_to(outside / "secret.mrc")
    (movies / "FoilHole_1_Data_2_3_20200320_090201_Fractions.mrc").write_bytes(b"a")
    assert find_movie(stem, [session, movies]) is None
    assert list(index_movies([session, movies])) == [
        "FoilHole_1_Data_2_3_20200320_090201"
    ]
