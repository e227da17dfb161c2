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


def test_remove_partials_finds_only_temporaries(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    stray = tmp_path / "sub" / f".x.mrc.abcd{PARTIAL_SUFFIX}"
    stray.write_bytes(b"")
    keep = tmp_path / "sub" / "x.mrc"
    keep.write_bytes(b"1")
    assert remove_partials(tmp_path) == [stray]
    assert keep.exists()
    assert not stray.exists()
