"""Movie files: MRC, LZW TIFF and real EER, read back by independent readers."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import mrcfile
import numpy as np
import pytest
import tifffile

from pipelines.errors import StageInputError
from pipelines.io.movies import read_movie
from pipelines.simulate.eer import (
    EER_COMPRESSION,
    encode_eer_frame,
    split_counts_into_subframes,
    write_eer,
)
from pipelines.simulate.writers import MovieFormat, write_gain_reference, write_movie


@pytest.fixture
def counts(rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(1.5, size=(5, 40, 56)).astype(np.uint8)


def test_mrc_movie_round_trip(counts: np.ndarray, tmp_path: Path) -> None:
    path = write_movie(
        counts, tmp_path / "m.mrc", fmt=MovieFormat.MRC, pixel_size_a=0.83
    )
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 0  # int8 counts
        assert float(mrc.voxel_size.x) == pytest.approx(0.83, abs=1e-3)
        np.testing.assert_array_equal(mrc.data, counts)
    big = counts.astype(np.uint16) * 100
    path = write_movie(big, tmp_path / "b.mrc", fmt=MovieFormat.MRC, pixel_size_a=1.0)
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 6
    np.testing.assert_array_equal(read_movie(path), big)


def test_tiff_movie_is_lzw_one_page_per_frame(
    counts: np.ndarray, tmp_path: Path
) -> None:
    path = write_movie(
        counts, tmp_path / "m.tiff", fmt=MovieFormat.TIFF, pixel_size_a=1.0
    )
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 5
        assert all(page.compression == tifffile.COMPRESSION.LZW for page in tif.pages)
        assert tif.pages[0].dtype == np.uint8
        np.testing.assert_array_equal(tif.asarray(), counts)
    np.testing.assert_array_equal(read_movie(path), counts)


def test_eer_events_decode_to_the_same_positions(rng: np.random.Generator) -> None:
    frame = (rng.random((64, 80)) < 0.05).astype(np.uint8)
    frame[0, 0] = 1  # first pixel
    frame[-1, -1] = 1  # last pixel
    frame[10, :] = 0  # a run longer than 127 pixels
    frame[11, :] = 0
    events = np.argwhere(frame)
    subpixel = rng.integers(0, 16, len(events), dtype=np.uint8)
    data = encode_eer_frame(frame, subpixel)
    plain = imagecodecs.eer_decode(data, (64, 80), 7, 2, 2)
    np.testing.assert_array_equal(plain.astype(np.uint8), frame)
    fine = imagecodecs.eer_decode(data, (256, 320), 7, 2, 2, superres=2)
    found = np.argwhere(fine)
    expected = np.column_stack(
        [4 * events[:, 0] + (subpixel >> 2), 4 * events[:, 1] + (subpixel & 3)]
    )
    np.testing.assert_array_equal(
        found[np.lexsort(found.T[::-1])], expected[np.lexsort(expected.T[::-1])]
    )


def test_empty_and_full_eer_frames(rng: np.random.Generator) -> None:
    for frame in (np.zeros((16, 300), np.uint8), np.ones((16, 300), np.uint8)):
        data = encode_eer_frame(frame)
        np.testing.assert_array_equal(
            imagecodecs.eer_decode(data, frame.shape, 7, 2, 2).astype(np.uint8), frame
        )


def test_eer_file_round_trip(
    counts: np.ndarray, tmp_path: Path, rng: np.random.Generator
) -> None:
    path = write_movie(
        counts,
        tmp_path / "m.eer",
        fmt=MovieFormat.EER,
        pixel_size_a=0.74,
        rng=rng,
        eer_subframes_per_frame=20,
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_eer
        assert len(tif.pages) == 100
        assert tif.pages.first.compression == EER_COMPRESSION
        assert tif.eer_metadata["numberOfFrames"] == 100
        assert tif.eer_metadata["sensorPixelSize.width"] == pytest.approx(0.74e-10)
        raw = tif.asarray()
    assert raw.max() <= 1
    np.testing.assert_array_equal(raw.reshape(5, 20, 40, 56).sum(axis=1), counts)
    grouped = read_movie(path, eer_frames_per_group=20)
    np.testing.assert_array_equal(grouped, counts)


def test_subframe_split_is_uniform_and_exact(rng: np.random.Generator) -> None:
    counts = np.full((200, 200), 3)
    sub = split_counts_into_subframes(counts, 10, rng)
    np.testing.assert_array_equal(sub.sum(axis=0), counts)
    per_subframe = sub.reshape(10, -1).mean(axis=1)
    np.testing.assert_allclose(per_subframe, 0.3, atol=0.01)
    with pytest.raises(StageInputError, match="counts"):
        split_counts_into_subframes(counts, 2, rng)


def test_eer_refuses_counts_without_subframes(
    counts: np.ndarray, tmp_path: Path
) -> None:
    with pytest.raises(StageInputError, match="eer_subframes_per_frame"):
        write_movie(counts, tmp_path / "m.eer", fmt=MovieFormat.EER, pixel_size_a=1.0)
    with pytest.raises(StageInputError, match="n_frames"):
        write_eer(
            iter([counts[0] > 1]), tmp_path / "x.eer", pixel_size_a=1.0, n_frames=2
        )
    assert not (tmp_path / "x.eer").exists()  # nothing half-written


def test_gain_reference_file(tmp_path: Path, rng: np.random.Generator) -> None:
    gain = rng.uniform(0.9, 1.1, (32, 48)).astype(np.float32)
    path = write_gain_reference(gain, tmp_path / "gain.mrc", pixel_size_a=1.0)
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, gain)
