"""MRC movie headers through ``mrcfile`` (header and extended header only).

Files from MotionCor2 and older writers often have a missing map ID or machine
stamp; ``mrcfile`` in permissive mode reads them and its warnings are kept in the
header's ``extra["mrc_warnings"]`` instead of being lost or raised.  Thermo Fisher
(FEI1/FEI2) extended headers give the pixel size, dose, voltage and camera as EPU
wrote them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mrcfile
import numpy as np

from mdcatch.errors import MetadataError
from mdcatch.records import MovieFormat, MovieHeader

__all__ = ["mrc_is_complete", "read_mrc_header"]

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
_M_TO_A = 1e10
_E_PER_M2_TO_E_PER_A2 = 1e-20


def _open_header(path: Path) -> tuple[Any, Any, tuple[float, float, float], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header.copy()
                voxel = mrc.voxel_size
                voxel_xyz = (float(voxel.x), float(voxel.y), float(voxel.z))
                indexed = None
                if (
                    bytes(header.exttyp) in {b"FEI1", b"FEI2"}
                    and mrc.extended_header.nbytes
                ):
                    indexed = mrc.indexed_extended_header
        except (ValueError, OSError, AttributeError, TypeError, IndexError) as error:
            raise MetadataError(
                path, "MRC header", type(error).__name__, str(error)
            ) from error
    notes = [str(item.message) for item in caught]
    return header, indexed, voxel_xyz, notes


def _geometry(path: Path, header: Any) -> tuple[int, int, int, int, int]:
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    mode, nsymbt = int(header.mode), int(header.nsymbt)
    for name, value in (("nx", nx), ("ny", ny), ("nz", nz)):
        if value <= 0:
            raise MetadataError(path, name, value, "MRC dimensions must be positive")
    if nsymbt < 0:
        raise MetadataError(path, "nsymbt", nsymbt, "extended header size must be >= 0")
    if mode not in _MODES:
        raise MetadataError(path, "mode", mode, "unknown MRC mode")
    return nx, ny, nz, mode, nsymbt


def _expected_size(nx: int, ny: int, nz: int, mode: int, nsymbt: int) -> int:
    row_bytes = (nx + 1) // 2 if mode == 101 else nx * int(_MODES[mode][1])
    return HEADER_BYTES + nsymbt + row_bytes * ny * nz


def read_mrc_header(path: Path) -> MovieHeader:
    """Header of an MRC movie; raises MetadataError if it is truncated."""
    size = path.stat().st_size
    header, indexed, voxel, notes = _open_header(path)
    nx, ny, nz, mode, nsymbt = _geometry(path, header)
    expected = _expected_size(nx, ny, nz, mode, nsymbt)
    if size < expected:
        raise MetadataError(
            path, "file size", size, f"truncated: the header promises {expected} bytes"
        )
    extra: dict[str, str] = {"mode": str(mode)}
    if size > expected:
        extra["trailing_bytes"] = str(size - expected)
    if notes:
        extra["mrc_warnings"] = "; ".join(notes)
    pixel = voxel[0] if np.isfinite(voxel[0]) and voxel[0] > 0 else None
    if indexed is not None and len(indexed):
        extra.update(_fei_fields(indexed[0]))
        fei_pixel = float(extra.get("fei_pixel_size_a", "0"))
        if pixel is None and fei_pixel > 0:
            pixel = fei_pixel
    return MovieHeader(
        path=path,
        format=MovieFormat.MRC,
        shape=(nz, ny, nx),
        dtype=_MODES[mode][0],
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


def mrc_is_complete(path: Path) -> bool:
    """True when the file is exactly header + extended header + data."""
    try:
        size = path.stat().st_size
        if size < HEADER_BYTES:
            return False
        header, _, _, _ = _open_header(path)
        nx, ny, nz, mode, nsymbt = _geometry(path, header)
    except (MetadataError, OSError):
        return False
    return size == _expected_size(nx, ny, nz, mode, nsymbt)
