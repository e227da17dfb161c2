"""Dynamo particle tables (``.tbl``) -> RELION particle STAR.

Dynamo's table convention (its ``dthelp``; the Dynamo wiki "Table convention"),
one particle a row, whitespace-separated numbers, columns counted from 1:

==========  ==================================================================
1           tag (particle number)
4, 5, 6     dx, dy, dz: shift of the particle from the box centre, in pixels
7, 8, 9     tdrot, tilt, narot: Euler angles in degrees, rotation about z, then
            about the new x, then about the new z
20          tomogram number
22          class number
24, 25, 26  x, y, z: the box centre in the tomogram, in pixels
==========  ==================================================================

Rotation: Dynamo's matrix of ``(tdrot, tilt, narot)`` is ``D = Rz(narot)
Rx(tilt) Rz(tdrot)`` (active, counter-clockwise rotations; it maps an aligned
particle onto the reference).  RELION's matrix ``A`` of ``(rot, tilt, psi)``
(:func:`pipelines.reconstruct.geometry.euler_to_matrix`, ``Euler_angles2matrix``)
equals ``D^T`` when ``rot = narot - 90``, ``tilt = tilt`` and ``psi = tdrot + 90``
(``Rx(t) = Rz(90) Ry(t) Rz(-90)``); the known equivalent pair Dynamo (-47.273,
1.1777, -132.3) = RELION (137.7, 1.1777, 42.727) is one case.

Shifts: the particle sits at ``x + dx`` in the tomogram; RELION's origin is the
opposite of the particle's offset from the box centre, so ``rlnOriginX/Y/ZAngst =
-dx, -dy, -dz`` × pixel size and ``rlnCoordinateX/Y/Z = x, y, z`` (the box
centres, as picked), so that ``coordinate - origin`` is the particle's centre.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from mdcatch.crosscheck import DEFAULT_CS_MM
from pipelines.ctf.model import DEFAULT_AMPLITUDE_CONTRAST, DEFAULT_VOLTAGE_KV
from pipelines.errors import StageInputError
from pipelines.particlesets.table import split_rows

__all__ = [
    "DYNAMO_MIN_COLUMNS",
    "dynamo_table_to_star",
    "dynamo_to_relion_angles",
    "read_dynamo_table",
    "read_dynamo_volume_list",
]

# the last column this converter reads is z (26)
DYNAMO_MIN_COLUMNS = 26
_TAG, _DX, _TDROT, _TOMO, _CLASS, _X = 0, 3, 6, 19, 21, 23


def read_dynamo_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(table, lines)``: ``(n, n_columns)`` float64 and each row's file line.

    Every row must have the same number of columns (at least 26) and only finite
    numbers; otherwise the error names the line and column."""
    tbl = Path(path)
    try:
        text = tbl.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StageInputError(tbl, "file", str(tbl), f"cannot be read: {exc}") from None
    # leading blank or comment lines too
    lead = len(text) - len(text.lstrip())
    body, lines = split_rows(text[lead:], 1 + text.count("\n", 0, lead), "%")
    if not len(lines):
        raise StageInputError(tbl, "rows", 0, "the table is empty")
    width = len(body[: body.find("\n") if "\n" in body else len(body)].split())
    if width < DYNAMO_MIN_COLUMNS:
        raise StageInputError(
            tbl,
            f"line {lines[0]}",
            width,
            f"columns: a Dynamo table has at least {DYNAMO_MIN_COLUMNS} "
            "(x, y, z are 24-26)",
        )
    try:
        frame = pd.read_csv(
            io.StringIO(body),
            sep=r"\s+",
            header=None,
            names=range(width + 1),
            dtype=str,
            na_filter=False,
            index_col=False,
            engine="c",
        )
    except pd.errors.ParserError as exc:
        found = re.search(r"line (\d+), saw (\d+)", str(exc))
        row, count = (int(found.group(1)) - 1, int(found.group(2))) if found else (0, 0)
        _wrong_width(tbl, lines[row], count, width)
    extra = frame.pop(width).to_numpy() != ""
    short = frame[width - 1].to_numpy() == ""
    bad = np.flatnonzero(extra | short)
    if len(bad):
        row = int(bad[0])
        _wrong_width(tbl, lines[row], len(body.split("\n")[row].split()), width)
    table = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_at = np.argwhere(~np.isfinite(table))
    if len(bad_at):
        row, column = (int(v) for v in bad_at[0])
        raise StageInputError(
            tbl,
            f"line {lines[row]}, column {column + 1}",
            str(frame.iat[row, column]),
            "not a finite number",
        )
    return table, lines


def _wrong_width(path: Path, line: int, count: int, width: int) -> NoReturn:
    raise StageInputError(
        path,
        f"line {line}, column {min(count, width) + 1}",
        count,
        f"values in the row, the first row has {width}",
    )


def read_dynamo_volume_list(path: str | Path) -> list[str]:
    """A Dynamo ``.vll``: tomogram paths, one a line; tomogram ``k`` is line ``k``."""
    vll = Path(path)
    try:
        text = vll.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StageInputError(vll, "file", str(vll), f"cannot be read: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def dynamo_to_relion_angles(
    tdrot_deg: np.ndarray, tilt_deg: np.ndarray, narot_deg: np.ndarray
) -> np.ndarray:
    """Dynamo's ``(tdrot, tilt, narot)`` -> RELION's ``(rot, tilt, psi)``
    ``(..., 3)`` in degrees, rot and psi wrapped to [-180, 180)."""
    rot = np.asarray(narot_deg, dtype=np.float64) - 90.0
    psi = np.asarray(tdrot_deg, dtype=np.float64) + 90.0
    tilt = np.asarray(tilt_deg, dtype=np.float64)

    def wrap(angle: np.ndarray) -> np.ndarray:
        return np.asarray((angle + 180.0) % 360.0 - 180.0)

    return np.stack(np.broadcast_arrays(wrap(rot), tilt, wrap(psi)), axis=-1)


def dynamo_table_to_star(
    table: np.ndarray,
    *,
    pixel_size_a: float,
    tomogram_names: Sequence[str] | None = None,
    voltage_kv: float = DEFAULT_VOLTAGE_KV,
    cs_mm: float = DEFAULT_CS_MM,
    amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST,
    source: Path = Path("<table>"),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(optics, particles)`` DataFrames of a RELION 3.1+ STAR for 3D particles.

    ``tomogram_names[k - 1]`` names tomogram ``k`` (a ``.vll``); without them the
    tomogram number is written as the micrograph name.  A Dynamo table holds no
    optics; RELION refuses an optics group without voltage, Cs and amplitude
    contrast, so they are written from the arguments (the project's defaults when
    not given)."""
    if pixel_size_a <= 0 or not np.isfinite(pixel_size_a):
        raise StageInputError(source, "pixel_size_a", pixel_size_a, "must be > 0")
    angles = dynamo_to_relion_angles(
        table[:, _TDROT], table[:, _TDROT + 1], table[:, _TDROT + 2]
    )
    tomo = table[:, _TOMO].astype(np.int64)
    if tomogram_names is None:
        names = tomo.astype(str)
    else:
        outside = np.flatnonzero((tomo < 1) | (tomo > len(tomogram_names)))
        if len(outside):
            raise StageInputError(
                source,
                f"row {int(outside[0]) + 1}, column 20 (tomo)",
                int(tomo[outside[0]]),
                f"the volume list has {len(tomogram_names)} tomograms",
            )
        names = np.asarray(tomogram_names, dtype=object)[tomo - 1]
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnVoltage": [float(voltage_kv)],
            "rlnSphericalAberration": [float(cs_mm)],
            "rlnAmplitudeContrast": [float(amplitude_contrast)],
            "rlnImagePixelSize": [float(pixel_size_a)],
            "rlnImageDimensionality": [3],
        }
    )
    shift_px = table[:, _DX : _DX + 3]
    centre_px = table[:, _X : _X + 3]
    particles = pd.DataFrame(
        {
            "rlnMicrographName": names,
            "rlnCoordinateX": centre_px[:, 0],
            "rlnCoordinateY": centre_px[:, 1],
            "rlnCoordinateZ": centre_px[:, 2],
            "rlnOriginXAngst": -shift_px[:, 0] * pixel_size_a,
            "rlnOriginYAngst": -shift_px[:, 1] * pixel_size_a,
            "rlnOriginZAngst": -shift_px[:, 2] * pixel_size_a,
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnClassNumber": table[:, _CLASS].astype(np.int64),
            "rlnOpticsGroup": np.ones(len(table), dtype=np.int64),
            "rlnParticleNumber": table[:, _TAG].astype(np.int64),
        }
    )
    return optics, particles
