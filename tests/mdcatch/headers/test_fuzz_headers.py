"""Fuzz the movie-header readers (MRC, TIFF, EER): random bytes and mutated
headers of valid movies the simulator writes.

Only MetadataError (naming the file) may escape, and no read may allocate more
than a few MB whatever sizes the header claims (issue #11 items 3 and 6).
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcatch import MetadataError
from mdcatch.headers.movie import (
    check_movie_complete,
    check_movie_header,
    read_movie_header,
)
from mdcatch.records import MovieFormat
from pipelines.simulate.writers import write_movie

PEAK_LIMIT_BYTES = 4 * 2**20
SUFFIXES = (".mrc", ".tiff", ".eer")
HOSTILE_INTS = (0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1)


def size_fields(suffix: str, data: bytes) -> tuple[int, ...]:
    """Byte offsets of the integers a reader trusts for sizes: MRC ``nx``,
    ``ny``, ``nz``, ``mode``, ``nsymbt``; TIFF/EER the first IFD pointer and each
    of the first page's tags' count and value/offset."""
    if suffix == ".mrc":
        return (0, 4, 8, 12, 92)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        offsets = [8 if tif.is_bigtiff else 4]
        for tag in tif.pages.first.tags:
            offsets += [tag.offset + 4, tag.valueoffset]
    return tuple(offsets)


@functools.cache
def valid_movies() -> tuple[tuple[str, bytes, tuple[int, ...]], ...]:
    """(suffix, bytes) of a small MRC, LZW TIFF and EER from the simulator."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(0.7, size=(3, 32, 32))
    movies = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, fmt, frames in (
            (".mrc", MovieFormat.MRC, counts),
            (".tiff", MovieFormat.TIFF, counts),
            (".eer", MovieFormat.EER, np.minimum(counts, 1)),
        ):
            path = write_movie(
                frames, Path(tmp) / f"m{suffix}", fmt=fmt, pixel_size_a=1
            )
            check_movie_complete(path)  # the seeds themselves are valid
            data = path.read_bytes()
            movies.append((suffix, data, size_fields(suffix, data)))
    return tuple(movies)


def read_all_ways(data: bytes, suffix: str) -> None:
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        for read in (check_movie_header, check_movie_complete, read_movie_header):
            failure: MetadataError | None = None
            tracemalloc.start()
            try:
                read(path)
            except MetadataError as error:
                failure = error
            finally:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            assert failure is None or failure.path == path
            assert peak < PEAK_LIMIT_BYTES, f"{read.__name__} allocated {peak} bytes"


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(SUFFIXES), st.binary(max_size=3000))
def test_random_bytes(suffix: str, data: bytes) -> None:
    read_all_ways(data, suffix)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix, original, fields = draw(st.sampled_from(valid_movies()))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["int32", "int64", "bytes", "truncate", "append"]))
        if op in ("int32", "int64") and draw(st.booleans()):
            where = draw(st.sampled_from(fields))  # a size the reader trusts
        else:
            where = draw(st.integers(0, min(len(data), 1400)))
        if op in ("int32", "int64") and where + 8 <= len(data):
            value = draw(st.sampled_from(HOSTILE_INTS))
            order = draw(st.sampled_from("<>"))
            if op == "int32":
                struct.pack_into(f"{order}I", data, where, value % 2**32)
            else:
                struct.pack_into(f"{order}Q", data, where, value % 2**64)
        elif op == "bytes":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[where : where + len(chunk)] = chunk
        elif op == "truncate":
            del data[where:]
        else:
            data += draw(st.binary(max_size=64))
    return suffix, bytes(data)


@settings(max_examples=150, deadline=None)
@given(mutated())
def test_mutated_headers(movie: tuple[str, bytes]) -> None:
    suffix, data = movie
    read_all_ways(data, suffix)


def test_every_size_field_set_to_every_hostile_value() -> None:
    """The exhaustive sweep hypothesis may miss: each size field of each seed set
    to each hostile value (a 2**31-byte ``nsymbt`` among them)."""
    for suffix, original, fields in valid_movies():
        width = 8 if original[:4] in (b"II+\x00", b"MM\x00+") else 4
        for where in fields:
            for value in HOSTILE_INTS:
                data = bytearray(original)
                if where + width <= len(data):
                    struct.pack_into(
                        "<Q" if width == 8 else "<I",
                        data,
                        where,
                        value % 2 ** (8 * width),
                    )
                    read_all_ways(bytes(data), suffix)
