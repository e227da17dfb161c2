"""TIFF and EER movie headers through ``tifffile``, without decoding any frame.

The frame count comes from walking the IFD chain (``tifffile`` reads only the
tags; ``useframes`` keeps frames after the first as light ``TiffFrame``s).  A file
is complete when the chain ends with a zero next-IFD pointer and the last frame's
last strip lies inside the file; a file still being written fails one of the two.
EER files (Thermo Fisher Falcon 4/4i) are BigTIFFs whose frames use compression
65000, 65001 or 65002, one raw detector readout per page, optionally after an
uncompressed integrated image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import tifffile

from mdcatch.errors import MetadataError
from mdcatch.records import MovieFormat, MovieHeader

__all__ = ["EER_COMPRESSIONS", "read_tiff_header", "tiff_is_complete"]

EER_COMPRESSIONS = frozenset({65000, 65001, 65002})
_ERRORS = (
    RuntimeError,
    AttributeError,
    OverflowError,
    ZeroDivisionError,
    EOFError,
    tifffile.TiffFileError,
    ValueError,
    OSError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
)


@dataclass(frozen=True, slots=True)
class _Chain:
    n_pages: int
    first_compression: int
    compression_name: str
    frame_shape: tuple[int, ...]
    dtype: str
    chain_complete: bool
    data_end: int
    eer_frames: int


def _walk(path: Path) -> _Chain:
    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        pages.useframes = True
        n_pages = len(pages)
        if n_pages == 0:
            raise MetadataError(path, "IFD", 0, "TIFF has no image")
        first = pages.first
        compressions = [int(first.compression)]
        key: tifffile.TiffPage = first
        if n_pages > 1 and int(first.compression) == 1:
            key = pages[1].aspage()
            compressions.append(int(key.compression))
        eer_frames = 0
        if int(key.compression) in EER_COMPRESSIONS:
            eer_frames = n_pages - (1 if key is not first else 0)
        last = pages[n_pages - 1]
        offsets, counts = last.dataoffsets, last.databytecounts
        data_end = max(
            (o + c for o, c in zip(offsets, counts, strict=False)), default=0
        )
        chain_complete = _next_ifd(tif, int(last.offset)) == 0
        code = int(key.compression)
        try:
            name = tifffile.COMPRESSION(code).name
        except ValueError:
            name = str(code)
        return _Chain(
            n_pages=n_pages,
            first_compression=code,
            compression_name=name,
            frame_shape=tuple(int(v) for v in key.shape),
            dtype=str(key.dtype) if key.dtype is not None else "",
            chain_complete=chain_complete,
            data_end=int(data_end),
            eer_frames=eer_frames,
        )


def _next_ifd(tif: tifffile.TiffFile, ifd_offset: int) -> int:
    """The next-IFD pointer stored after the IFD at ``ifd_offset``."""
    handle, tiff = tif.filehandle, tif.tiff
    handle.seek(ifd_offset)
    (count,) = struct.unpack(tiff.tagnoformat, handle.read(tiff.tagnosize))
    handle.seek(ifd_offset + tiff.tagnosize + count * tiff.tagsize)
    raw = handle.read(tiff.offsetsize)
    if len(raw) != tiff.offsetsize:
        return -1
    (pointer,) = struct.unpack(tiff.offsetformat, raw)
    return int(pointer)


def read_tiff_header(path: Path, *, eer: bool) -> MovieHeader:
    """Header of a TIFF (``eer=False``) or EER movie; MetadataError if incomplete."""
    size = path.stat().st_size
    try:
        chain = _walk(path)
    except _ERRORS as error:
        raise MetadataError(
            path, "TIFF structure", type(error).__name__, str(error)
        ) from error
    if not chain.chain_complete:
        raise MetadataError(
            path,
            "IFD chain",
            chain.n_pages,
            "chain broken after this many pages: truncated or still being written",
        )
    if chain.data_end > size:
        raise MetadataError(
            path,
            "strip offsets",
            chain.data_end,
            f"last frame ends past the end of the {size}-byte file",
        )
    if len(chain.frame_shape) != 2:
        raise MetadataError(
            path, "shape", chain.frame_shape, "expected one 2D frame per page"
        )
    is_eer = chain.eer_frames > 0
    if eer and not is_eer:
        raise MetadataError(
            path,
            "Compression",
            chain.first_compression,
            "an EER movie needs compression 65000, 65001 or 65002",
        )
    n_frames = chain.eer_frames if is_eer else chain.n_pages
    ny, nx = chain.frame_shape
    extra = {
        "compression_code": str(chain.first_compression),
        "n_pages": str(chain.n_pages),
    }
    return MovieHeader(
        path=path,
        format=MovieFormat.EER if is_eer else MovieFormat.TIFF,
        shape=(n_frames, ny, nx),
        dtype=chain.dtype,
        pixel_size_a=None,
        compression=chain.compression_name,
        size_bytes=size,
        extra=MappingProxyType(extra),
    )


def tiff_is_complete(path: Path, expected_frames: int | None = None) -> bool:
    """Chain complete, last strip inside the file and, if given, the frame count."""
    try:
        header = read_tiff_header(path, eer=False)
    except (MetadataError, OSError):
        return False
    return expected_frames is None or header.n_frames == expected_frames
