"""Electron Event Representation (EER) files, written for real.

An EER file is a little-endian BigTIFF; every page is one detector readout (a
sub-frame with few electrons, at most one per pixel) stored as one strip with
compression 65001: a bit stream, least significant bit first, of codes made of a
7-bit run of empty pixels (raster order) and, unless the run is 127 (which only
skips), 2 + 2 bits of sub-pixel position of the electron on the pixel the run
reached.  Sub-pixel bits are stored XOR 2 (as the decoders read them).  The first
page carries the acquisition metadata as XML in tag 65001, which is how tifffile
recognises EER.  ``imagecodecs.eer_decode`` and tifffile read these files.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipelines.errors import StageInputError
from pipelines.io.outputs import atomic_path
from pipelines.simulate import _eer_kernels

__all__ = [
    "EER_COMPRESSION",
    "encode_eer_frame",
    "split_counts_into_subframes",
    "write_eer",
]

EER_COMPRESSION = 65001  # 7-bit runs, 2 + 2 sub-pixel bits
_SUBPIXEL_XOR = 0b1010

# TIFF types
_SHORT, _LONG, _UNDEFINED, _LONG8 = 3, 4, 7, 16


def encode_eer_frame(frame: np.ndarray, subpixel: np.ndarray | None = None) -> bytes:
    """The compression-65001 strip of one sub-frame ``(ny, nx)`` holding 0 or 1 per pixel.

    ``subpixel`` ``(n_events,)`` gives each event's true sub-pixel position as
    ``h + 4 * v`` (h, v in 0..3, raster order of the events); default 0.
    """
    events = np.flatnonzero(np.asarray(frame).ravel())
    values = np.asarray(frame).ravel()[events]
    if values.size and values.max() > 1:
        raise StageInputError(
            "<array>",
            "frame",
            int(values.max()),
            "an EER sub-frame holds at most 1 event per pixel",
        )
    if subpixel is None:
        bits = np.full(events.size, _SUBPIXEL_XOR, dtype=np.uint8)
    else:
        sub = np.asarray(subpixel, dtype=np.uint8)
        if sub.shape != events.shape or (sub.size and sub.max() > 15):
            raise StageInputError(
                "<array>",
                "subpixel",
                sub.shape,
                f"must be ({events.size},) values 0..15",
            )
        bits = sub ^ np.uint8(_SUBPIXEL_XOR)
    n_pixels = int(np.asarray(frame).size)
    capacity = (events.size * 11 + (n_pixels // 127 + 2) * 7) // 8 + 8
    out = np.zeros(capacity, dtype=np.uint8)
    n_bytes = _eer_kernels.encode_eer_frame(
        events.astype(np.int64), bits, n_pixels, out
    )
    return out[:n_bytes].tobytes()


def split_counts_into_subframes(
    counts: np.ndarray, n_subframes: int, rng: np.random.Generator
) -> np.ndarray:
    """Spread counts ``(ny, nx)`` over ``n_subframes`` 0/1 sub-frames, uniformly.

    Each pixel's ``c`` electrons go to ``c`` distinct sub-frames chosen uniformly
    (selection sampling, one whole-array step per sub-frame).  Returns
    ``(n_subframes, ny, nx)`` uint8.
    """
    remaining = np.asarray(counts).astype(np.int32)
    if remaining.size and remaining.max() > n_subframes:
        raise StageInputError(
            "<array>",
            "counts",
            int(remaining.max()),
            f"more than {n_subframes} sub-frames hold",
        )
    out = np.zeros((n_subframes, *remaining.shape), dtype=np.uint8)
    for s in range(n_subframes):
        take = rng.random(remaining.shape) * (n_subframes - s) < remaining
        out[s] = take
        remaining -= take
    return out


def _metadata_xml(n_frames: int, shape: tuple[int, int], pixel_size_a: float) -> bytes:
    ny, nx = shape
    items = [
        ("acquisitionID", "", "livestream-simulator"),
        ("numberOfFrames", "", str(n_frames)),
        ("sensorImageHeight", "pixel", str(ny)),
        ("sensorImageWidth", "pixel", str(nx)),
        ("sensorPixelSize.height", "m", f"{pixel_size_a * 1e-10:.6e}"),
        ("sensorPixelSize.width", "m", f"{pixel_size_a * 1e-10:.6e}"),
    ]
    body = "".join(
        f'<item name="{name}"'
        + (f' unit="{unit}"' if unit else "")
        + f">{value}</item>"
        for name, unit, value in items
    )
    return f"<metadata>{body}</metadata>".encode()


def _write_ifd(
    fh: BinaryIO,
    shape: tuple[int, int],
    strip_offset: int,
    strip_bytes: int,
    xml: bytes | None,
) -> tuple[int, int]:
    """Write one IFD at the current position; return (its offset, offset of next-pointer)."""
    ny, nx = shape
    entries: list[tuple[int, int, int, bytes]] = [
        (256, _LONG, 1, struct.pack("<I", nx)),
        (257, _LONG, 1, struct.pack("<I", ny)),
        (259, _SHORT, 1, struct.pack("<H", EER_COMPRESSION)),
        (262, _SHORT, 1, struct.pack("<H", 1)),
        (273, _LONG8, 1, struct.pack("<Q", strip_offset)),
        (277, _SHORT, 1, struct.pack("<H", 1)),
        (278, _LONG, 1, struct.pack("<I", ny)),
        (279, _LONG8, 1, struct.pack("<Q", strip_bytes)),
    ]
    extra_offset = 0
    if xml is not None:
        entries.append((65001, _UNDEFINED, len(xml), b""))
    ifd_offset = fh.tell()
    size = 8 + 20 * len(entries) + 8
    extra_offset = ifd_offset + size
    blob = bytearray(struct.pack("<Q", len(entries)))
    for tag, kind, count, value in entries:
        if tag == 65001 and xml is not None:
            value = struct.pack("<Q", extra_offset) if len(xml) > 8 else xml
        blob += struct.pack("<HHQ", tag, kind, count) + value.ljust(8, b"\0")
    blob += struct.pack("<Q", 0)
    fh.write(bytes(blob))
    if xml is not None and len(xml) > 8:
        fh.write(xml)
    return ifd_offset, ifd_offset + size - 8


def write_eer(
    subframes: np.ndarray | Iterable[np.ndarray],
    path: str | Path,
    *,
    pixel_size_a: float,
    rng: np.random.Generator | None = None,
    n_frames: int | None = None,
) -> Path:
    """Write 0/1 sub-frames ``(n, ny, nx)`` as an EER file (atomically); return the path.

    ``subframes`` may also be an iterable of ``(ny, nx)`` frames (streamed, for
    long movies); then ``n_frames`` must say how many.  With ``rng`` each event
    gets a random sub-pixel position, else 0.
    """
    if isinstance(subframes, np.ndarray):
        if subframes.ndim != 3:
            raise StageInputError(
                path, "subframes", subframes.shape, "must be (n, ny, nx)"
            )
        n_frames = subframes.shape[0]
    if n_frames is None or n_frames < 1:
        raise StageInputError(
            path, "n_frames", n_frames, "needed (>= 1) for an iterable"
        )
    iterator = iter(subframes)
    xml: bytes | None = None
    written = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
        pointer_at = 8
        for frame in iterator:
            frame = np.asarray(frame)
            shape = (int(frame.shape[0]), int(frame.shape[1]))
            if xml is None:
                xml = _metadata_xml(n_frames, shape, pixel_size_a)
                first_shape = shape
            elif shape != first_shape:
                raise StageInputError(
                    path, "subframes", shape, f"differs from {first_shape}"
                )
            n_events = int(np.count_nonzero(frame))
            sub = None if rng is None else rng.integers(0, 16, n_events, dtype=np.uint8)
            strip = encode_eer_frame(frame, sub)
            strip_offset = fh.tell()
            fh.write(strip)
            if fh.tell() % 2:
                fh.write(b"\0")
            ifd_offset, next_at = _write_ifd(
                fh, shape, strip_offset, len(strip), xml if written == 0 else None
            )
            end = fh.tell()
            fh.seek(pointer_at)
            fh.write(struct.pack("<Q", ifd_offset))
            fh.seek(end)
            pointer_at = next_at
            written += 1
        if written != n_frames:
            raise StageInputError(
                path, "n_frames", n_frames, f"but {written} frames came"
            )
    return Path(path)
