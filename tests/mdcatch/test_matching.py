"""Movie <-> metadata pairing by name stem, whichever file arrives first."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdcatch.matching import (
    exposure_stem,
    find_movie,
    index_movies,
    is_epu_exposure_xml,
    is_movie_name,
)

STEM = "FoilHole_18890345_Data_18881924_18881926_20200320_090200"


@pytest.mark.parametrize(
    "name",
    [
        f"{STEM}.xml",
        f"{STEM}_Fractions.mrc",
        f"{STEM}_fractions.tiff",
        f"{STEM}_Fractions.tiff",
        f"{STEM}_fractions.mrc",
        f"{STEM}_Fractions.tif",
        f"{STEM}_EER.eer",
        f"{STEM}.eer",
    ],
)
def test_shared_stem(name: str) -> None:
    assert exposure_stem(name) == STEM
    assert exposure_stem(Path("/some/where") / name) == STEM
    assert exposure_stem("Z:\\DoseFractions\\s\\" + name) == STEM


@pytest.mark.parametrize(
    "name",
    [
        f"{STEM}.mrc",  # EPU's summed image beside the XML, not a movie
        f"{STEM}.jpg",
        f"{STEM}.xml.tmp",
        f".{STEM}.xml.Ab12Cd",  # rsync
        f".{STEM}_Fractions.tiff.x1y2",
        f"~{STEM}_Fractions.mrc",
        f"{STEM}_Fractions.mrc.part",
        f"{STEM}_Fractions.mrc~",
        "GridSquare_20250108_151151.xml",
        "FoilHole_9015889_20250108_154725.xml",
        "EpuSession.dm",
        "gain.mrc",
    ],
)
def test_unrelated_and_temporary_names(name: str) -> None:
    assert exposure_stem(name) is None
    assert not is_movie_name(name)


def test_kinds_of_names() -> None:
    assert is_epu_exposure_xml(f"{STEM}.xml")
    assert is_epu_exposure_xml("FoilHole_9015883_Data_9017347_6_20250108_154915.xml")
    assert not is_epu_exposure_xml(f"{STEM}_Fractions.mrc")
    assert not is_epu_exposure_xml("FoilHole_9015889_20250108_154725.xml")
    assert is_movie_name(f"{STEM}_Fractions.tiff")
    assert not is_movie_name(f"{STEM}.xml")


def test_pairing_is_order_independent() -> None:
    """The pairing a watcher builds does not depend on arrival order."""
    names = [f"{STEM}.xml", f"{STEM}_Fractions.tiff", "other.txt", f"{STEM}.jpg"]

    def pair(order: list[str]) -> dict[str, set[str]]:
        pairs: dict[str, set[str]] = {}
        for name in order:
            stem = exposure_stem(name)
            if stem is not None:
                pairs.setdefault(stem, set()).add(name)
        return pairs

    expected = {STEM: {f"{STEM}.xml", f"{STEM}_Fractions.tiff"}}
    assert pair(names) == expected
    assert pair(list(reversed(names))) == expected


def test_find_movie_in_another_tree(tmp_path: Path) -> None:
    epu = tmp_path / "epu" / "Images-Disc1" / "GridSquare_1" / "Data"
    fractions = tmp_path / "DoseFractions" / "Images-Disc1" / "GridSquare_1" / "Data"
    epu.mkdir(parents=True)
    fractions.mkdir(parents=True)
    (epu / f"{STEM}.xml").write_text("<x/>")
    (epu / f"{STEM}.mrc").write_bytes(b"")  # summed image: never the movie
    roots = [tmp_path / "epu", tmp_path / "DoseFractions"]
    assert find_movie(STEM, roots) is None
    movie = fractions / f"{STEM}_Fractions.tiff"
    movie.write_bytes(b"")
    (fractions / f".{STEM}_Fractions.tiff.tmp").write_bytes(b"")
    assert find_movie(STEM, roots) == movie
    assert index_movies(roots) == {STEM: movie}
    assert find_movie("FoilHole_1_Data_2_3_20200101_000000", roots) is None


def test_first_root_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / f"{STEM}_EER.eer").write_bytes(b"")
    (first / f"{STEM}_Fractions.mrc").write_bytes(b"")
    assert find_movie(STEM, [first, second]) == first / f"{STEM}_Fractions.mrc"
    assert find_movie(STEM, [second, first]) == second / f"{STEM}_EER.eer"
