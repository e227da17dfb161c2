"""The one header sanity check: sizes a header claims against the file's size,
before anything is allocated, with errors that say what is wrong (issue #11)."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from mdcatch import MetadataError
from mdcatch.headers.movie import (
    check_movie_complete,
    check_movie_header,
    movie_is_complete,
    read_movie_header,
)
from pipelines.errors import StageInputError
from pipelines.io.micrographs import read_micrograph
from pipelines.io.movies import read_movie
from tests.mdcatch.headers.test_headers import write_eer_like


def write_mrc(
    path: Path, *, nsymbt: int | None = None, mode: int | None = None
) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 8, 8), dtype=np.int8))
    data = bytearray(path.read_bytes())
    if nsymbt is not None:
        struct.pack_into("<i", data, 92, nsymbt)
        data += bytes(4000)  # a 5 KB file
    if mode is not None:
        struct.pack_into("<i", data, 12, mode)
    path.write_bytes(bytes(data))
    return path


def test_a_huge_extended_header_is_refused_before_allocation(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "hostile.mrc", nsymbt=2**31 - 1)
    tracemalloc.start()
    try:
        for read in (read_movie_header, check_movie_complete):
            with pytest.raises(MetadataError) as caught:
                read(path)
            assert (caught.value.field, caught.value.value) == ("nsymbt", 2**31 - 1)
        for frames in (read_movie, read_micrograph):
            with pytest.raises(StageInputError) as stage_error:
                frames(path)
            assert stage_error.value.field == "nsymbt"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_data_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "big.mrc")
    data = bytearray(path.read_bytes())
    struct.pack_into("<3i", data, 0, 4096, 4096, 100_000)
    path.write_bytes(bytes(data))
    with pytest.raises(MetadataError, match="truncated") as caught:
        check_movie_header(path)
    assert caught.value.field == "file size"


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(5).bytes(5000))
    return path


@pytest.mark.parametrize(
    ("name", "make", "field", "reason"),
    [
        ("empty.mrc", lambda p: p.write_bytes(b"") or p, "file size", "empty file"),
        ("empty.tiff", lambda p: p.write_bytes(b"") or p, "file size", "empty file"),
        ("empty.eer", lambda p: p.write_bytes(b"") or p, "file size", "empty file"),
        ("random.mrc", random_bytes, "MAP", "not an MRC file"),
        ("random.tiff", random_bytes, "magic", "not a TIFF or EER file"),
        ("random.eer", random_bytes, "magic", "not a TIFF or EER file"),
        ("mode.mrc", lambda p: write_mrc(p, mode=77), "mode", "not an MRC movie mode"),
        ("ext.mrc", lambda p: write_mrc(p, nsymbt=10**6), "nsymbt", "does not fit"),
    ],
)
def test_errors_say_what_is_wrong(
    tmp_path: Path, name: str, make: object, field: str, reason: str
) -> None:
    path = make(tmp_path / name)  # type: ignore[operator]
    for check in (check_movie_complete, read_movie_header):
        with pytest.raises(MetadataError) as caught:
            check(path)
        assert caught.value.path == path
        assert caught.value.field == field
        assert reason in caught.value.reason
        assert "header promises more frames" not in str(caught.value)
    assert not movie_is_complete(path)


def test_trailing_bytes_are_named(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "long.mrc")
    path.write_bytes(path.read_bytes() + b"x" * 10)
    with pytest.raises(MetadataError, match="10 bytes more") as caught:
        check_movie_complete(path)
    assert caught.value.field == "file size"
    assert read_movie_header(path).extra["trailing_bytes"] == "10"


def test_tiff_strips_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "movie.tiff"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["StripByteCounts"]
        where, kind, count = tag.valueoffset, tag.dtype, tag.count
    assert (count, kind) == (1, 4)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, where, 2**31)  # a 2 GB strip in a 1 KB file
    path.write_bytes(bytes(data))
    with pytest.raises(MetadataError) as caught:
        read_movie_header(path)
    assert caught.value.field == "strip offsets"
    with pytest.raises(StageInputError, match="strip offsets"):
        read_movie(path)


def test_an_ifd_chain_that_loops_is_refused(tmp_path: Path) -> None:
    path = write_eer_like(tmp_path / "loop.eer", 2)
    data = bytearray(path.read_bytes())
    (first,) = struct.unpack_from("<Q", data, 8)
    struct.pack_into("<Q", data, len(data) - 8, first)  # last IFD -> first IFD
    path.write_bytes(bytes(data))
    with pytest.raises(MetadataError, match="loops") as caught:
        check_movie_header(path)
    assert caught.value.field == "IFD offset"


def test_valid_movies_pass(tmp_path: Path) -> None:
    eer = write_eer_like(tmp_path / "m_EER.eer", 30)
    mrc = write_mrc(tmp_path / "m.mrc")
    for path in (eer, mrc):
        check_movie_header(path)
        check_movie_complete(path)


def test_an_absurd_number_of_strips_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "strips.tiff"
    image = np.zeros((600, 600), np.uint8)  # 360 KB: room for a 70000-entry array
    tifffile.imwrite(path, image, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages.first.tags["StripOffsets"].offset
    data = bytearray(path.read_bytes())
    struct.pack_into("<HII", data, entry + 2, 4, 70_000, 8)  # 70000 LONGs at byte 8
    path.write_bytes(bytes(data))
    with pytest.raises(MetadataError, match="more than 65536 strips") as caught:
        check_movie_header(path)
    assert (caught.value.field, caught.value.value) == ("tag 273", 70_000)
