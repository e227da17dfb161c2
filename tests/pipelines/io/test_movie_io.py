"""Reading movies: MRC (read, not mapped), LZW TIFF, EER grouping and super-resolution."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import tifffile

from pipelines.errors import StageInputError
from pipelines.io.movies import eer_frames_per_group, read_movie
from tests.pipelines.motion_movies import random_eer_events, write_eer


def test_mrc_stack_reads_as_float32_frames(tmp_path, rng):
    data = rng.integers(0, 5, (6, 40, 56)).astype(np.int8)
    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
    frames = read_movie(path)
    assert frames.dtype == np.float32
    assert frames.shape == (6, 40, 56)
    assert np.array_equal(frames, data)


def test_mrc_with_extended_header_and_other_byte_order_reads_as_written(tmp_path, rng):
    """The frames start after the extended header; a big-endian int16 movie
    keeps its values natively (int16, native order) and as float32 (converted
    through the reused buffer); both equal what mrcfile's own mapping reads."""
    data = rng.integers(-300, 300, (5, 24, 40)).astype(">i2")
    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_extended_header(np.arange(100, dtype=np.int32))
        mrc.set_data(data)
    with mrcfile.mmap(path, mode="r") as mrc:
        assert mrc.header.nsymbt == 400
        assert mrc.data.dtype.byteorder == ">"
        expected = np.array(mrc.data)
    native = read_movie(path, native=True)
    assert native.dtype == np.int16
    assert native.dtype.isnative
    assert np.array_equal(native, expected)
    as_float = read_movie(path)
    assert as_float.dtype == np.float32
    assert np.array_equal(as_float, expected.astype(np.float32))


def test_single_image_mrc_is_one_frame(tmp_path, rng):
    path = tmp_path / "image.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(rng.random((32, 48)).astype(np.float32))
    assert read_movie(path).shape == (1, 32, 48)


def test_lzw_tiff_reads_every_page(tmp_path, rng):
    data = rng.integers(0, 4, (5, 64, 48)).astype(np.uint8)
    path = tmp_path / "movie.tiff"
    tifffile.imwrite(path, data, compression="lzw")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == 5  # LZW
    frames = read_movie(path)
    assert frames.shape == (5, 64, 48)
    assert np.array_equal(frames, data)


def test_eer_frames_are_grouped_and_rendered(tmp_path, rng):
    shape = (32, 40)
    events = random_eer_events(rng, 7, shape, rate=0.2)
    path = tmp_path / "movie.eer"
    write_eer(str(path), events, shape)
    counts = np.zeros((7, 4 * shape[0], 4 * shape[1]))
    for i, frame_events in enumerate(events):
        counts[i, frame_events[:, 0], frame_events[:, 1]] = 1
    native = counts.reshape(7, shape[0], 4, shape[1], 4).sum(axis=(2, 4))
    grouped = read_movie(path, eer_frames_per_group=3)
    # 7 raw frames in groups of 3: two groups, the last raw frame dropped
    assert grouped.shape == (2, *shape)
    assert np.array_equal(grouped[0], native[0:3].sum(axis=0))
    assert np.array_equal(grouped[1], native[3:6].sum(axis=0))
    super_res = read_movie(path, eer_frames_per_group=2, eer_upsampling=2)
    double = counts.reshape(7, 2 * shape[0], 2, 2 * shape[1], 2).sum(axis=(2, 4))
    assert super_res.shape == (3, 2 * shape[0], 2 * shape[1])
    assert np.array_equal(super_res[1], double[2:4].sum(axis=0))


def test_eer_group_size_meets_the_target_dose():
    assert eer_frames_per_group(0.02, 1.0) == 50
    assert eer_frames_per_group(0.03, 1.0) == 33
    assert eer_frames_per_group(2.0, 1.0) == 1
    with pytest.raises(ValueError, match="positive"):
        eer_frames_per_group(0.0, 1.0)


def test_bad_movies_raise_stage_input_errors_naming_the_file(tmp_path):
    with pytest.raises(StageInputError, match="does not exist"):
        read_movie(tmp_path / "missing.mrc")
    odd = tmp_path / "movie.dm4"
    odd.write_bytes(b"\0" * 64)
    with pytest.raises(StageInputError, match="suffix"):
        read_movie(odd)
    truncated = tmp_path / "truncated.mrc"
    with mrcfile.new(truncated) as mrc:
        mrc.set_data(np.zeros((4, 64, 64), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(StageInputError, match=r"truncated\.mrc"):
        read_movie(truncated)
