"""MRC movie headers through ``mrcfile`` (header and extended header only).

Files from MotionCor2 and older writers often have a missing map ID or machine
stamp; ``mrcfile`` in permissive mode reads them and its warnings are kept in the
header's ``extra["mrc_warnings"]`` instead of being lost or raised.  Thermo Fisher
(FEI1/FEI2) extended headers give the pixel size, dose, voltage and camera as EPU
wrote them.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mrcfile
import numpy as np

from mdcatch.errors import MetadataError
from mdcatch.records import MovieFormat, MovieHeader

__all__ = [
    "MrcLayout",
    "check_mrc_complete",
    "check_mrc_layout",
    "mrc_is_complete",
    "read_mrc_header",
]

HEADER_BYTES = 1024
# MRC mode -> (dtype name, bytes per value); mode 101 is 4-bit packed (SerialEM).
_MODES: dict[int, tuple[str, float]] = {
    0: ("int8", 1),
    1: ("int16", 2),
    2: ("float32", 4),
    3: ("complex_int16", 4),
    4: ("complex64", 8),
    6: ("uint16", 2),
    12: ("float16", 2),
    101: ("uint4", 0.5),
}
# the modes mrcfile decodes (it tries the other byte order for any other mode)
_MRCFILE_MODES = frozenset({0, 1, 2, 4, 6, 12})
# "MAP " as the standard says; blank in files from older writers (MotionCor2...)
_MAP_FIELDS = frozenset({b"MAP ", b"MAP\x00", bytes(4)})
_M_TO_A = 1e10
_E_PER_M2_TO_E_PER_A2 = 1e-20


@dataclass(frozen=True, slots=True, kw_only=True)
class MrcLayout:
    """The sizes an MRC header claims, already checked against the file's size."""

    nx: int
    ny: int
    nz: int
    mode: int
    nsymbt: int
    size_bytes: int

    @property
    def expected_bytes(self) -> int:
        """Header + extended header + data, as the header promises."""
        row_bytes = (
            (self.nx + 1) // 2
            if self.mode == 101
            else self.nx * int(_MODES[self.mode][1])
        )
        return HEADER_BYTES + self.nsymbt + row_bytes * self.ny * self.nz


def _unpack_layout(head: bytes) -> tuple[int, int, int, int, int]:
    """``(nx, ny, nz, mode, nsymbt)`` in the byte order ``mrcfile`` will use.

    That is the machine stamp's (little-endian when unrecognised), flipped when
    only the other order gives a mode ``mrcfile`` knows; reading the sizes any
    other way would check other numbers than the ones it then trusts.
    """
    big = head[212] == 0x11 and head[213] == 0x11

    def unpack(order: str) -> tuple[int, int, int, int, int]:
        nx, ny, nz, mode = struct.unpack_from(f"{order}4i", head, 0)
        (nsymbt,) = struct.unpack_from(f"{order}i", head, 92)
        return nx, ny, nz, mode, nsymbt

    values = unpack(">" if big else "<")
    if values[3] not in _MRCFILE_MODES:
        flipped = unpack("<" if big else ">")
        if flipped[3] in _MRCFILE_MODES:
            return flipped
    return values


def check_mrc_layout(path: Path) -> MrcLayout:
    """Check the raw 1024-byte header against the file size, before any allocation.

    Raises :class:`MetadataError` naming the field for an empty or short file, a
    MAP field that is neither ``MAP `` nor blank (old writers), an unknown mode,
    non-positive dimensions, an extended header (``nsymbt``) larger than the file,
    or data (``nx * ny * nz * bytes per value``) that the file does not hold.
    """
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(HEADER_BYTES)
    if size == 0:
        raise MetadataError(path, "file size", 0, "empty file")
    if len(head) < HEADER_BYTES:
        raise MetadataError(
            path,
            "file size",
            size,
            f"shorter than the {HEADER_BYTES}-byte MRC header: truncated or not MRC",
        )
    if head[208:212] not in _MAP_FIELDS:
        raise MetadataError(
            path, "MAP", head[208:212], "not an MRC file: expected b'MAP ' at byte 208"
        )
    nx, ny, nz, mode, nsymbt = _unpack_layout(head)
    if mode not in _MODES:
        known = ", ".join(str(m) for m in _MODES)
        raise MetadataError(path, "mode", mode, f"not an MRC movie mode ({known})")
    for name, value in (("nx", nx), ("ny", ny), ("nz", nz)):
        if value <= 0:
            raise MetadataError(path, name, value, "MRC dimensions must be positive")
    if nsymbt < 0 or HEADER_BYTES + nsymbt > size:
        raise MetadataError(
            path,
            "nsymbt",
            nsymbt,
            f"an extended header of this size does not fit in the {size}-byte file",
        )
    layout = MrcLayout(nx=nx, ny=ny, nz=nz, mode=mode, nsymbt=nsymbt, size_bytes=size)
    if layout.expected_bytes > size:
        raise MetadataError(
            path,
            "file size",
            size,
            f"truncated: the header ({nx} x {ny} x {nz}, mode {mode}) promises "
            f"{layout.expected_bytes} bytes",
        )
    return layout


def _open_header(path: Path) -> tuple[MrcLayout, Any, float, list[str]]:
    """Checked layout, FEI extended header (or None), pixel size x, mrcfile notes."""
    layout = check_mrc_layout(path)  # nothing is allocated before this check
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                voxel_x = float(mrc.voxel_size.x)
                indexed = None
                if (
                    bytes(mrc.header.exttyp) in {b"FEI1", b"FEI2"}
                    and mrc.extended_header.nbytes
                ):
                    indexed = mrc.indexed_extended_header
        except (ValueError, OSError, AttributeError, TypeError, IndexError) as error:
            raise MetadataError(
                path, "MRC header", type(error).__name__, str(error)
            ) from error
    notes = [str(item.message) for item in caught]
    return layout, indexed, voxel_x, notes


def read_mrc_header(path: Path) -> MovieHeader:
    """Header of an MRC movie; raises MetadataError if it is truncated."""
    layout, indexed, voxel_x, notes = _open_header(path)
    size, expected = layout.size_bytes, layout.expected_bytes
    extra: dict[str, str] = {"mode": str(layout.mode)}
    if size > expected:
        extra["trailing_bytes"] = str(size - expected)
    if notes:
        extra["mrc_warnings"] = "; ".join(notes)
    pixel = voxel_x if np.isfinite(voxel_x) and voxel_x > 0 else None
    if indexed is not None and len(indexed):
        extra.update(_fei_fields(indexed[0]))
        fei_pixel = float(extra.get("fei_pixel_size_a", "0"))
        if pixel is None and fei_pixel > 0:
            pixel = fei_pixel
    return MovieHeader(
        path=path,
        format=MovieFormat.MRC,
        shape=(layout.nz, layout.ny, layout.nx),
        dtype=_MODES[layout.mode][0],
        pixel_size_a=pixel,
        compression="",
        size_bytes=size,
        extra=MappingProxyType(extra),
    )


def _fei_fields(entry: Any) -> dict[str, str]:
    """The FEI extended-header fields worth keeping, converted to named units."""
    names = set(entry.dtype.names or ())
    fields: dict[str, str] = {}
    conversions = (
        ("Pixel size X", "fei_pixel_size_a", _M_TO_A),
        ("Dose", "fei_dose_e_per_a2", _E_PER_M2_TO_E_PER_A2),
        ("HT", "fei_voltage_kv", 1e-3),
        ("Integration time", "fei_exposure_time_s", 1.0),
        ("Magnification", "fei_magnification", 1.0),
        ("Applied defocus", "fei_applied_defocus_um", -1e6),
        ("Defocus", "fei_defocus_as_written_um", 1e6),
    )
    for source, target, factor in conversions:
        if source in names:
            value = float(entry[source]) * factor
            if np.isfinite(value):
                fields[target] = repr(value + 0.0)
    for source, target in (
        ("Camera name", "fei_camera_name"),
        ("Application version", "fei_application_version"),
        ("D-Number", "fei_d_number"),
    ):
        if source in names:
            fields[target] = bytes(entry[source]).decode("latin-1").strip("\x00 ")
    return fields


def check_mrc_complete(path: Path) -> MrcLayout:
    """The layout of a whole MRC file: exactly header + extended header + data.

    Raises :class:`MetadataError` naming what is wrong (:func:`check_mrc_layout`,
    or bytes past the end the header promises).
    """
    layout = check_mrc_layout(path)
    if layout.size_bytes != layout.expected_bytes:
        raise MetadataError(
            path,
            "file size",
            layout.size_bytes,
            f"{layout.size_bytes - layout.expected_bytes} bytes more than the "
            f"{layout.expected_bytes} the header promises",
        )
    return layout


def mrc_is_complete(path: Path) -> bool:
    """True when the file is exactly header + extended header + data."""
    try:
        check_mrc_complete(path)
    except (MetadataError, OSError):
        return False
    return True
