"""RELION particle STAR files (``data_optics`` + ``data_particles``).

What ``relion_preprocess`` writes after extraction, with the per-particle CTF, so
RELION 4 and cryoSPARC's import read it unchanged.  :func:`append_particles_star`
grows the session's append-only particle pool: it reads the existing file, adds the
new rows (and optics group if new) and writes the whole file to a temporary name,
fsyncs and renames it -- a crash leaves the old file or the new one, never a torn
one.  Its cost grows with the file (one read and one write per append); the live
service appends per batch of exposures, not per particle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.ctf.model import CtfParams
from pipelines.errors import StageInputError
from pipelines.extraction.extract import ExtractedParticles
from pipelines.io.outputs import write_star

__all__ = [
    "append_particles_star",
    "optics_table",
    "particles_table",
    "read_particles_star",
    "write_particles_star",
]

OPTICS_KEYS = (
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnVoltage",
    "rlnSphericalAberration",
)


def optics_table(
    *,
    ctf: CtfParams,
    image_pixel_size_a: float,
    image_size_px: int,
    micrograph_original_pixel_size_a: float,
    optics_group: int = 1,
    optics_group_name: str = "opticsGroup1",
) -> Any:
    """One-row ``data_optics`` DataFrame."""
    import pandas as pd

    return pd.DataFrame(
        {
            "rlnOpticsGroupName": [optics_group_name],
            "rlnOpticsGroup": [int(optics_group)],
            "rlnMicrographOriginalPixelSize": [float(micrograph_original_pixel_size_a)],
            "rlnVoltage": [float(ctf.voltage_kv)],
            "rlnSphericalAberration": [float(ctf.cs_mm)],
            "rlnAmplitudeContrast": [float(ctf.amplitude_contrast)],
            "rlnImagePixelSize": [float(image_pixel_size_a)],
            "rlnImageSize": [int(image_size_px)],
            "rlnImageDimensionality": [2],
            "rlnCtfDataAreCtfPremultiplied": [0],
        }
    )


def particles_table(
    particles: ExtractedParticles,
    *,
    stack_name: str,
    micrograph_name: str,
    ctf: CtfParams,
    ctf_max_resolution_a: float = float("nan"),
    ctf_figure_of_merit: float = float("nan"),
    optics_group: int = 1,
    group_number: int = 1,
) -> Any:
    """``data_particles`` rows; ``stack_name`` is the ``.mrcs`` path as RELION should
    read it (relative to the project folder): ``rlnImageName`` = ``000001@stack``."""
    import pandas as pd

    n = len(particles.x_px)
    return pd.DataFrame(
        {
            "rlnCoordinateX": particles.x_px.astype(np.float64),
            "rlnCoordinateY": particles.y_px.astype(np.float64),
            "rlnAutopickFigureOfMerit": particles.score.astype(np.float64),
            "rlnClassNumber": np.ones(n, dtype=np.int64),
            "rlnAnglePsi": np.full(n, -999.0),
            "rlnImageName": [f"{i:06d}@{stack_name}" for i in range(1, n + 1)],
            "rlnMicrographName": [micrograph_name] * n,
            "rlnOpticsGroup": np.full(n, int(optics_group), dtype=np.int64),
            "rlnGroupNumber": np.full(n, int(group_number), dtype=np.int64),
            "rlnCtfMaxResolution": np.full(n, float(ctf_max_resolution_a)),
            "rlnCtfFigureOfMerit": np.full(n, float(ctf_figure_of_merit)),
            "rlnDefocusU": np.full(n, float(ctf.defocus_u_a)),
            "rlnDefocusV": np.full(n, float(ctf.defocus_v_a)),
            "rlnDefocusAngle": np.full(n, float(ctf.astigmatism_angle_deg)),
            "rlnCtfBfactor": np.full(n, float(ctf.bfactor_a2)),
            "rlnCtfScalefactor": np.ones(n),
            "rlnPhaseShift": np.full(n, float(ctf.phase_shift_deg)),
        }
    )


def write_particles_star(path: str | Path, optics: Any, particles: Any) -> Path:
    """Write ``data_optics`` and ``data_particles`` atomically."""
    return write_star(path, {"optics": optics, "particles": particles})


def read_particles_star(path: str | Path) -> tuple[Any, Any]:
    """``(optics, particles)`` DataFrames of a RELION 3.1+ particle STAR file."""
    import starfile

    blocks = starfile.read(path, always_dict=True)
    if "optics" not in blocks or "particles" not in blocks:
        raise StageInputError(
            path, "data blocks", sorted(blocks), "need data_optics and data_particles"
        )
    return blocks["optics"], blocks["particles"]


def append_particles_star(path: str | Path, optics: Any, particles: Any) -> Path:
    """Add ``particles`` (with their one-row ``optics``) to the STAR at ``path``.

    An optics group already in the file (same ``rlnOpticsGroupName``) must agree on
    pixel size, box, voltage and Cs; the new rows take its number.  A new group gets
    the next free number.
    """
    import pandas as pd

    target = Path(path)
    if not target.exists():
        return write_particles_star(target, optics, particles)
    old_optics, old_particles = read_particles_star(target)
    new_group = optics.iloc[0]
    same = old_optics[
        old_optics["rlnOpticsGroupName"] == new_group["rlnOpticsGroupName"]
    ]
    particles = particles.copy()
    if len(same):
        row = same.iloc[0]
        for key in OPTICS_KEYS:
            if not np.isclose(float(row[key]), float(new_group[key])):
                raise StageInputError(
                    target,
                    key,
                    new_group[key],
                    f"optics group {row['rlnOpticsGroupName']!r} has {row[key]}",
                )
        particles["rlnOpticsGroup"] = int(row["rlnOpticsGroup"])
        merged_optics = old_optics
    else:
        number = int(old_optics["rlnOpticsGroup"].max()) + 1
        added = optics.copy()
        added["rlnOpticsGroup"] = number
        particles["rlnOpticsGroup"] = number
        merged_optics = pd.concat([old_optics, added], ignore_index=True)
    merged = pd.concat([old_particles, particles], ignore_index=True)
    return write_particles_star(target, merged_optics, merged)
