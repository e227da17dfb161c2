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

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import tifffile

from mdcatch.errors import MetadataError
from mdcatch.records import MovieFormat, MovieHeader

__all__ = [
    "EER_COMPRESSIONS",
    "check_tiff_layout",
    "read_tiff_header",
    "tiff_is_complete",
]

EER_COMPRESSIONS = frozenset({65000, 65001, 65002})
MAX_TAGS_PER_IFD = 4096  # tifffile's own limit for a plausible IFD
MAX_STRIPS_PER_PAGE = 2**16  # one per row of the largest sensor, with room to spare
_CLASSIC = {b"II*\x00": "<", b"MM\x00*": ">"}
_BIG = {b"II+\x00": "<", b"MM\x00+": ">"}
# TIFF field type -> bytes per value (unknown types count one byte)
_TYPE_BYTES = {
    3: 2,
    4: 4,
    5: 8,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_INTEGER_FORMATS = {3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}
_DATA_TAGS = ((273, 279), (324, 325))  # (strip offsets, byte counts), tiles likewise
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
class _Format:
    """Byte order and the sizes that differ between classic TIFF and BigTIFF."""

    order: str
    big: bool

    @property
    def offset_format(self) -> str:
        return self.order + ("Q" if self.big else "I")

    @property
    def offset_bytes(self) -> int:
        return 8 if self.big else 4

    @property
    def count_format(self) -> str:
        return self.order + ("Q" if self.big else "H")

    @property
    def count_bytes(self) -> int:
        return 8 if self.big else 2

    @property
    def entry_format(self) -> str:
        return self.order + ("HHQ8s" if self.big else "HHI4s")


def _tiff_format(path: Path, head: bytes, size: int) -> _Format:
    if size == 0:
        raise MetadataError(path, "file size", 0, "empty file")
    magic = head[:4]
    if magic not in _CLASSIC and magic not in _BIG:
        raise MetadataError(
            path,
            "magic",
            magic,
            "not a TIFF or EER file: expected b'II*\\x00', b'MM\\x00*' or BigTIFF",
        )
    big = magic in _BIG
    needed = 16 if big else 8
    if len(head) < needed:
        raise MetadataError(
            path, "file size", size, f"shorter than the {needed}-byte TIFF header"
        )
    return _Format(order=_BIG[magic] if big else _CLASSIC[magic], big=big)


def check_tiff_layout(path: Path) -> int:
    """Walk the raw IFD chain and check every size it claims against the file size.

    Before ``tifffile`` allocates anything: each IFD, each tag value stored out of
    line and each frame's strips (or tiles) must lie inside the file, the chain
    must not loop, an IFD holds at most :data:`MAX_TAGS_PER_IFD` tags and a page
    at most :data:`MAX_STRIPS_PER_PAGE` strips.
    Returns the number of pages.  Raises :class:`MetadataError` naming the field,
    the value and what is wrong (empty file, bad magic, truncated chain...).
    """
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(16)
        fmt = _tiff_format(path, head, size)
        (offset,) = struct.unpack_from(fmt.offset_format, head, 8 if fmt.big else 4)
        if offset == 0:
            raise MetadataError(path, "IFD offset", 0, "TIFF has no image")
        seen: set[int] = set()
        while offset != 0:
            seen.add(offset)
            offset = _check_ifd(path, handle, fmt, offset, size, len(seen) - 1)
            if offset in seen:
                raise MetadataError(
                    path, "IFD offset", offset, "the IFD chain loops back on itself"
                )
    return len(seen)


def _check_ifd(
    path: Path, handle: BinaryIO, fmt: _Format, offset: int, size: int, page: int
) -> int:
    """One IFD: its entries, out-of-line values and frame data inside the file;
    returns the offset of the next IFD (0 after the last)."""
    if offset < 8 or offset + fmt.count_bytes > size:
        raise MetadataError(
            path,
            "IFD offset",
            offset,
            f"page {page} lies past the end of the {size}-byte file: truncated",
        )
    handle.seek(offset)
    (count,) = struct.unpack(fmt.count_format, handle.read(fmt.count_bytes))
    entry_bytes = struct.calcsize(fmt.entry_format)
    end = offset + fmt.count_bytes + count * entry_bytes + fmt.offset_bytes
    if count > MAX_TAGS_PER_IFD:
        raise MetadataError(
            path, "IFD tag count", count, f"page {page}: more than {MAX_TAGS_PER_IFD}"
        )
    if end > size:
        raise MetadataError(
            path,
            "IFD tag count",
            count,
            f"page {page}'s IFD ends at byte {end}, past the end of the "
            f"{size}-byte file: truncated",
        )
    raw = handle.read(count * entry_bytes)
    arrays: dict[int, tuple[int, ...]] = {}
    for tag, kind, n, value in struct.iter_unpack(fmt.entry_format, raw):
        n_bytes = n * _TYPE_BYTES.get(kind, 1)
        inline = n_bytes <= fmt.offset_bytes
        (where,) = (0,) if inline else struct.unpack(fmt.offset_format, value)
        if not inline and where + n_bytes > size:
            raise MetadataError(
                path,
                f"tag {tag}",
                n,
                f"page {page}: {n_bytes} bytes of values at byte {where} run past "
                f"the end of the {size}-byte file",
            )
        if any(tag in pair for pair in _DATA_TAGS) and kind in _INTEGER_FORMATS:
            if n > MAX_STRIPS_PER_PAGE:
                raise MetadataError(
                    path,
                    f"tag {tag}",
                    n,
                    f"page {page}: more than {MAX_STRIPS_PER_PAGE} strips or tiles",
                )
            if inline:
                data = value[:n_bytes]
            else:
                handle.seek(where)
                data = handle.read(n_bytes)
            arrays[tag] = struct.unpack(f"{fmt.order}{n}{_INTEGER_FORMATS[kind]}", data)
    for offsets_tag, counts_tag in _DATA_TAGS:
        offsets, counts = arrays.get(offsets_tag, ()), arrays.get(counts_tag, ())
        ends = [o + c for o, c in zip(offsets, counts, strict=False)]
        if ends and max(ends) > size:
            raise MetadataError(
                path,
                "strip offsets",
                max(ends),
                f"page {page}'s data ends past the end of the {size}-byte file: "
                "truncated",
            )
    handle.seek(end - fmt.offset_bytes)
    (next_offset,) = struct.unpack(fmt.offset_format, handle.read(fmt.offset_bytes))
    return int(next_offset)


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
    check_tiff_layout(path)  # nothing is allocated before this check
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
