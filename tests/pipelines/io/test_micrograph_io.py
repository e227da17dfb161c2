"""The one micrograph reader: images, header pixel size, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.io.micrographs import read_micrograph


def _write(path: Path, data: np.ndarray, voxel_a: float) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_a
    return path


def test_reads_2d_and_single_section_float16(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    image = rng.standard_normal((48, 64)).astype(np.float16)
    flat, pixel = read_micrograph(_write(tmp_path / "a.mrc", image, 1.37))
    assert flat.dtype == np.float32
    assert flat.shape == (48, 64)
    np.testing.assert_array_equal(flat, image.astype(np.float32))
    assert pixel == pytest.approx(1.37, rel=1e-6)
    stacked, _ = read_micrograph(_write(tmp_path / "b.mrc", image[None], 1.0))
    np.testing.assert_array_equal(stacked, flat)


def test_multi_section_stack_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "stack.mrcs", np.zeros((3, 8, 8), np.float32), 1.0)
    with pytest.raises(StageInputError, match="shape") as info:
        read_micrograph(path)
    assert str(path) in str(info.value)


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.mrc"
    path.write_bytes(b"not an MRC file at all" * 10)
    with pytest.raises(StageInputError, match="unreadable MRC") as info:
        read_micrograph(path)
    assert "broken.mrc" in str(info.value)
