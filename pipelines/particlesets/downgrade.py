"""RELION 3.1 / 4 / 5 particle STAR (``data_optics`` + ``data_particles``) ->
RELION 3.0's single table.

What RELION 3.0 expects (its ``reconstructor.cpp`` and ``ml_optimiser.cpp``): the
pixel size of each row as ``10000 * rlnDetectorPixelSize / rlnMagnification`` (we
write ``rlnMagnification`` 10000 and ``rlnDetectorPixelSize`` = the optics group's
``rlnImagePixelSize`` in Å, so the ratio is the pixel size), origins in pixels
(``rlnOriginX/Y/Z`` = ``rlnOriginX/Y/ZAngst`` / pixel size, priors alike), and the
optics (voltage, Cs, amplitude contrast, beam tilt ...) on every row.  RELION 3.0
stops at a label it does not know, so every label it does not read is dropped
(and listed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import StageInputError
from pipelines.particlesets.table import StarTable, relion30_labels

__all__ = ["Downgraded", "downgrade_to_relion30"]

# RELION 3.0 pixel size = 10000 * rlnDetectorPixelSize [µm] / rlnMagnification
RELION30_MAGNIFICATION = 10000.0
_ORIGINS = {
    "rlnOriginXAngst": "rlnOriginX",
    "rlnOriginYAngst": "rlnOriginY",
    "rlnOriginZAngst": "rlnOriginZ",
    "rlnOriginXPriorAngst": "rlnOriginXPrior",
    "rlnOriginYPriorAngst": "rlnOriginYPrior",
}
_PIXEL_SIZE_LABELS = ("rlnImagePixelSize", "rlnMicrographPixelSize")


@dataclass(frozen=True, slots=True, kw_only=True)
class Downgraded:
    """The 3.0 table (values as text) and the labels RELION 3.0 cannot read,
    which were left out."""

    table: pd.DataFrame
    dropped_labels: tuple[str, ...]


def downgrade_to_relion30(
    path: Path, optics: StarTable, particles: StarTable
) -> Downgraded:
    """One RELION 3.0 table from a 3.1+ optics table and particle table of ``path``
    (named in errors)."""
    rows = _optics_rows(path, optics, particles)
    pixel_label = next((k for k in _PIXEL_SIZE_LABELS if k in optics.frame), None)
    if pixel_label is None:
        raise StageInputError(
            path,
            f"data_{optics.name}",
            sorted(optics.frame.columns),
            "no rlnImagePixelSize or rlnMicrographPixelSize: the pixel size is unknown",
        )
    pixel_size_a = optics.numbers(pixel_label)[rows]
    if (pixel_size_a <= 0).any():
        bad = int(np.argmax(optics.numbers(pixel_label) <= 0))
        raise StageInputError(
            path,
            f"line {optics.lines[bad]} ({pixel_label})",
            optics.frame[pixel_label].iloc[bad],
            "pixel size must be > 0",
        )
    out = particles.frame.copy()
    for angst, pixels in _ORIGINS.items():
        if angst in out:
            out[pixels] = particles.numbers(angst) / pixel_size_a
            del out[angst]
    for label in optics.frame.columns:
        if label not in out:
            out[label] = optics.frame[label].to_numpy()[rows]
    out["rlnMagnification"] = RELION30_MAGNIFICATION
    out["rlnDetectorPixelSize"] = pixel_size_a
    known = relion30_labels()
    dropped = tuple(label for label in out.columns if label not in known)
    return Downgraded(table=out.drop(columns=list(dropped)), dropped_labels=dropped)


def _optics_rows(path: Path, optics: StarTable, particles: StarTable) -> np.ndarray:
    """For each particle row, its row in the optics table."""
    if "rlnOpticsGroup" not in optics.frame:
        raise StageInputError(
            path, f"data_{optics.name}", "rlnOpticsGroup", "column missing"
        )
    groups = optics.numbers("rlnOpticsGroup").astype(np.int64)
    n = len(particles.frame)
    if "rlnOpticsGroup" not in particles.frame:
        if len(groups) != 1:
            raise StageInputError(
                path,
                f"data_{particles.name}",
                "rlnOpticsGroup",
                f"column missing and data_{optics.name} has {len(groups)} groups",
            )
        return np.zeros(n, dtype=np.int64)
    wanted = particles.numbers("rlnOpticsGroup").astype(np.int64)
    order = np.argsort(groups)
    found = np.searchsorted(groups[order], wanted)
    found = np.minimum(found, len(groups) - 1)
    rows = order[found]
    missing = np.flatnonzero(groups[rows] != wanted)
    if len(missing):
        row = int(missing[0])
        column = list(particles.frame.columns).index("rlnOpticsGroup") + 1
        raise StageInputError(
            path,
            f"line {particles.lines[row]}, column {column} (rlnOpticsGroup)",
            int(wanted[row]),
            f"no such group in data_{optics.name}",
        )
    return np.asarray(rows, dtype=np.int64)
