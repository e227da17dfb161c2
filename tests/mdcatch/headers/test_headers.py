"""Movie headers, header only: MRC (mrcfile), LZW TIFF and EER (tifffile).

There are no small real movies to copy, so the tests write their own: MRC with
mrcfile, LZW TIFF with tifffile, and EER-like BigTIFFs by hand (tifffile cannot
encode EER: ``write_eer_like`` lays out the IFDs with compression 65000-65002,
a 4096 x 4096 sensor and a few bytes of payload per frame, as Falcon 4 files
do).  The real FEI2 micrograph in ../shared/data/real checks the extended header.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from mdcatch import MetadataError, MovieFormat
from mdcatch.headers.movie import movie_is_complete, read_movie_header

EER_METADATA = b"<metadata><item key='sensorImageWidth'>4096</item></metadata>"


def write_eer_like(
    path: Path, n_frames: int, *, compression: int = 65001, payload: int = 24
) -> Path:
    """A minimal little-endian BigTIFF laid out like an EER movie."""
    data = bytearray(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
    meta_offset = len(data)
    data += EER_METADATA
    previous_next_field = 8  # where the header stores the first IFD offset
    for index in range(n_frames):
        strip_offset = len(data)
        data += bytes((index * 7 + k) % 251 for k in range(payload))
        if len(data) % 2:
            data += b"\x00"
        ifd_offset = len(data)
        struct.pack_into("<Q", data, previous_next_field, ifd_offset)
        entries = [
            (256, 4, 1, struct.pack("<I", 4096)),
            (257, 4, 1, struct.pack("<I", 4096)),
            (258, 3, 1, struct.pack("<H", 1)),
            (259, 3, 1, struct.pack("<H", compression)),
            (262, 3, 1, struct.pack("<H", 1)),
            (273, 16, 1, struct.pack("<Q", strip_offset)),
            (277, 3, 1, struct.pack("<H", 1)),
            (278, 4, 1, struct.pack("<I", 4096)),
            (279, 16, 1, struct.pack("<Q", payload)),
        ]
        if index == 0:
            entries.append(
                (65001, 7, len(EER_METADATA), struct.pack("<Q", meta_offset))
            )
        data += struct.pack("<Q", len(entries))
        for tag, kind, count, value in entries:
            data += struct.pack("<HHQ", tag, kind, count) + value.ljust(8, b"\x00")
        previous_next_field = len(data)
        data += struct.pack("<Q", 0)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def lzw_tiff(tmp_path: Path, rng: np.random.Generator) -> Path:
    frames = rng.poisson(0.8, size=(6, 64, 80)).astype(np.uint8)
    path = tmp_path / "movie_fractions.tiff"
    tifffile.imwrite(path, frames, compression="lzw")
    return path


@pytest.fixture
def mrc_movie(tmp_path: Path, rng: np.random.Generator) -> Path:
    path = tmp_path / "movie_Fractions.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(rng.integers(0, 5, size=(5, 48, 40), dtype=np.int8))
        mrc.voxel_size = 0.83
    return path


def truncations(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [
        data[:cut] for cut in (len(data) - 1, len(data) * 2 // 3, len(data) // 3, 8)
    ]


def test_mrc_header(mrc_movie: Path) -> None:
    header = read_movie_header(mrc_movie)
    assert header.format is MovieFormat.MRC
    assert header.shape == (5, 48, 40)
    assert header.n_frames == 5
    assert header.dtype == "int8"
    assert header.pixel_size_a == pytest.approx(0.83, rel=1e-6)
    assert header.size_bytes == 1024 + 5 * 48 * 40
    assert movie_is_complete(mrc_movie)
    assert movie_is_complete(mrc_movie, expected_frames=5)
    assert not movie_is_complete(mrc_movie, expected_frames=6)


def test_mrc_header_only_on_a_huge_sparse_file(tmp_path: Path) -> None:
    """A 27 GB float32 movie (sparse on disk) is read instantly: no frame is loaded."""
    path = tmp_path / "huge.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((1, 4, 4), dtype=np.float32))
        mrc.header.nx, mrc.header.ny, mrc.header.nz = 4096, 4096, 400
        mrc.header.mx, mrc.header.my, mrc.header.mz = 4096, 4096, 400
    with path.open("r+b") as handle:
        handle.truncate(1024 + 4096 * 4096 * 400 * 4)
    header = read_movie_header(path)
    assert header.shape == (400, 4096, 4096)
    assert header.dtype == "float32"
    assert movie_is_complete(path)


def test_motioncor2_style_mrc_is_read_permissively(mrc_movie: Path) -> None:
    data = bytearray(mrc_movie.read_bytes())
    data[208:216] = bytes(8)  # no map ID, no machine stamp
    mrc_movie.write_bytes(bytes(data))
    header = read_movie_header(mrc_movie)
    assert header.shape == (5, 48, 40)
    assert "Map ID" in header.extra["mrc_warnings"]


def test_truncated_mrc(mrc_movie: Path, tmp_path: Path) -> None:
    for n, data in enumerate(truncations(mrc_movie)):
        path = tmp_path / f"cut_{n}.mrc"
        path.write_bytes(data)
        with pytest.raises(MetadataError) as caught:
            read_movie_header(path)
        assert caught.value.path == path
        assert not movie_is_complete(path)


def test_real_fei2_micrograph(shared_data: Path) -> None:
    path = shared_data / "real/epu2.9_example_crop2048.mrc"
    header = read_movie_header(path)
    assert header.shape == (1, 2048, 2048)
    assert header.dtype == "uint16"
    assert header.size_bytes == 1024 + 909312 + 2048 * 2048 * 2
    assert header.pixel_size_a == pytest.approx(0.66655, abs=1e-5)
    extra = header.extra
    assert float(extra["fei_pixel_size_a"]) == pytest.approx(0.66655, abs=1e-5)
    assert float(extra["fei_dose_e_per_a2"]) == pytest.approx(41.171, abs=1e-3)
    assert float(extra["fei_voltage_kv"]) == 300.0
    assert float(extra["fei_applied_defocus_um"]) == pytest.approx(2.2)
    assert float(extra["fei_defocus_as_written_um"]) == pytest.approx(1.815, abs=1e-3)
    assert float(extra["fei_magnification"]) == 120000.0
    assert float(extra["fei_exposure_time_s"]) == pytest.approx(12.2078, abs=1e-4)
    assert extra["fei_camera_name"] == "BM-Falcon"
    assert extra["fei_application_version"] == "2.9.0.1519"
    assert movie_is_complete(path)


def test_lzw_tiff(lzw_tiff: Path) -> None:
    header = read_movie_header(lzw_tiff)
    assert header.format is MovieFormat.TIFF
    assert header.shape == (6, 64, 80)
    assert header.dtype == "uint8"
    assert header.compression == "LZW"
    assert header.pixel_size_a is None
    assert movie_is_complete(lzw_tiff, expected_frames=6)
    assert not movie_is_complete(lzw_tiff, expected_frames=7)


def test_truncated_tiff(
    lzw_tiff: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="tifffile")
    for n, data in enumerate(truncations(lzw_tiff)):
        path = tmp_path / f"cut_{n}.tif"
        path.write_bytes(data)
        with pytest.raises(MetadataError) as caught:
            read_movie_header(path)
        assert str(path) in str(caught.value)
        assert not movie_is_complete(path)


@pytest.mark.parametrize(
    ("code", "name"), [(65000, "EER_V0"), (65001, "EER_V1"), (65002, "EER_V2")]
)
def test_eer(tmp_path: Path, code: int, name: str) -> None:
    path = write_eer_like(tmp_path / "movie_EER.eer", 300, compression=code)
    header = read_movie_header(path)
    assert header.format is MovieFormat.EER
    assert header.shape == (300, 4096, 4096)
    assert header.compression == name
    assert header.extra["compression_code"] == str(code)
    assert movie_is_complete(path, expected_frames=300)


def test_truncated_eer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="tifffile")
    whole = write_eer_like(tmp_path / "whole.eer", 40)
    for n, data in enumerate(truncations(whole)):
        path = tmp_path / f"cut_{n}.eer"
        path.write_bytes(data)
        with pytest.raises(MetadataError):
            read_movie_header(path)
        assert not movie_is_complete(path)


def test_eer_suffix_without_eer_compression(lzw_tiff: Path, tmp_path: Path) -> None:
    path = tmp_path / "not_really.eer"
    path.write_bytes(lzw_tiff.read_bytes())
    with pytest.raises(MetadataError, match="Compression"):
        read_movie_header(path)


def test_format_sniffed_and_unknown(lzw_tiff: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "movie.dat"
    renamed.write_bytes(lzw_tiff.read_bytes())
    assert read_movie_header(renamed).format is MovieFormat.TIFF
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"hello")
    with pytest.raises(MetadataError, match="format"):
        read_movie_header(junk)
    assert not movie_is_complete(junk)
    with pytest.raises(MetadataError, match="does not exist"):
        read_movie_header(tmp_path / "absent.mrc")
    assert not movie_is_complete(tmp_path / "absent.tif")


def test_byte_flips_raise_only_metadata_error(
    lzw_tiff: Path,
    mrc_movie: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="tifffile")
    eer = write_eer_like(tmp_path / "e.eer", 5)
    for source in (lzw_tiff, mrc_movie, eer):
        original = np.frombuffer(source.read_bytes(), dtype=np.uint8)
        for trial in range(60):
            data = original.copy()
            limit = min(len(data), 1200)  # headers and IFDs live near the start
            spots = rng.integers(0, limit, size=int(rng.integers(1, 6)))
            data[spots] = rng.integers(0, 256, size=spots.size, dtype=np.uint8)
            path = tmp_path / f"flip_{trial}{source.suffix}"
            path.write_bytes(data.tobytes())
            failure: MetadataError | None = None
            try:
                read_movie_header(path)
            except MetadataError as error:
                failure = error
            assert failure is None or failure.path == path
            assert movie_is_complete(path) in {True, False}


def test_mrc_mode_101_packed_4_bit(mrc_movie: Path, tmp_path: Path) -> None:
    """SerialEM's packed 4-bit frames: (nx + 1) // 2 bytes per row."""
    data = bytearray(mrc_movie.read_bytes())
    data[12:16] = (101).to_bytes(4, "little")
    packed = tmp_path / "packed.mrc"
    packed.write_bytes(bytes(data[: 1024 + 5 * 48 * 20]))
    header = read_movie_header(packed)
    assert header.shape == (5, 48, 40)
    assert header.dtype == "uint4"
    assert movie_is_complete(packed)
    packed.write_bytes(bytes(data[: 1024 + 5 * 48 * 20 - 1]))
    assert not movie_is_complete(packed)
