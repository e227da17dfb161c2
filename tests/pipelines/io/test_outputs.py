"""Crash-safe outputs: a failure leaves no file and no temporary file."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from pipelines.io.outputs import (
    PARTIAL_SUFFIX,
    atomic_path,
    remove_partials,
    write_mrc,
    write_star,
    write_star_text,
    write_text_atomic,
)


def test_failure_inside_atomic_path_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"

    def crash_while_writing() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        crash_while_writing()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced_whole(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "a.txt", "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_mrc_float16_stack_and_volume(tmp_path: Path, rng: np.random.Generator) -> None:
    stack = rng.standard_normal((3, 16, 16)).astype(np.float32)
    path = write_mrc(tmp_path / "p.mrcs", stack, pixel_size_a=1.5)
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 12
        assert mrc.is_image_stack()
        assert float(mrc.voxel_size.x) == pytest.approx(1.5)
        np.testing.assert_allclose(mrc.data, stack, atol=2e-3)
    vol = write_mrc(
        tmp_path / "v.mrc", stack, pixel_size_a=2.0, float16=False, is_stack=False
    )
    with mrcfile.open(vol) as mrc:
        assert mrc.header.mode == 2
        assert mrc.is_volume()


def test_star_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"rlnMicrographName": ["a.mrc", "b.mrc"], "rlnOpticsGroup": [1, 1]}
    )
    path = write_star(tmp_path / "m.star", {"micrographs": frame})
    back = starfile.read(path, always_dict=True)
    pd.testing.assert_frame_equal(back["micrographs"], frame)


def test_mrc_header_statistics_match_mrcfiles(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """write_mrc fills a mapped file and computes the header's statistics itself;
    they agree with mrcfile's own (computed on the stored values) and the data,
    shape and header fields are those set_data writes."""
    image = (rng.standard_normal((64, 48)) * 6 + 40).astype(np.float32)
    for float16 in (True, False):
        ours = write_mrc(
            tmp_path / "ours.mrc", image, pixel_size_a=0.8, float16=float16
        )
        reference = tmp_path / "reference.mrc"
        with mrcfile.new(reference, overwrite=True) as mrc:
            mrc.set_data(image.astype(np.float16 if float16 else np.float32))
            mrc.voxel_size = 0.8
        with mrcfile.open(ours) as mine, mrcfile.open(reference) as theirs:
            np.testing.assert_array_equal(mine.data, theirs.data)
            for field in ("mode", "nx", "ny", "nz", "mx", "my", "mz", "ispg", "cella"):
                assert mine.header[field] == theirs.header[field], field
            assert mine.header.dmin == theirs.header.dmin
            assert mine.header.dmax == theirs.header.dmax
            assert float(mine.header.dmean) == pytest.approx(
                float(theirs.header.dmean), rel=1e-4
            )
            assert float(mine.header.rms) == pytest.approx(
                float(theirs.header.rms), rel=1e-3
            )


def test_star_text_reads_back_with_starfile(tmp_path: Path) -> None:
    """The pandas-free STAR writer: a key-value block and a loop, read back by
    starfile with their types and values."""
    path = write_star_text(
        tmp_path / "movie.star",
        {
            "general": {"rlnImageSizeX": 4096, "rlnMicrographMovieName": "a b.mrc"},
            "global_shift": {
                "rlnMicrographFrameNumber": np.arange(1, 4),
                "rlnMicrographShiftX": np.array([0.0, -1.25, 2.5e-7]),
                "rlnMicrographName": ["x.mrc", "y.mrc", ""],
            },
        },
    )
    back = starfile.read(path, always_dict=True)
    assert back["general"] == {
        "rlnImageSizeX": 4096,
        "rlnMicrographMovieName": "a b.mrc",
    }
    table = back["global_shift"]
    assert list(table["rlnMicrographFrameNumber"]) == [1, 2, 3]
    np.testing.assert_allclose(table["rlnMicrographShiftX"], [0.0, -1.25, 0.0])
    assert list(table["rlnMicrographName"].fillna("")) == ["x.mrc", "y.mrc", ""]
    with pytest.raises(ValueError, match="lengths"):
        write_star_text(tmp_path / "bad.star", {"t": {"a": [1, 2], "b": [1]}})


def test_remove_partials_finds_only_temporaries(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    stray = tmp_path / "sub" / f".x.mrc.abcd{PARTIAL_SUFFIX}"
    stray.write_bytes(b"")
    keep = tmp_path / "sub" / "x.mrc"
    keep.write_bytes(b"1")
    assert remove_partials(tmp_path) == [stray]
    assert keep.exists()
    assert not stray.exists()
