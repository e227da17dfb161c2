"""The tables of the job index files (see :mod:`livestream.project.job_index`).

Each function takes ledger rows (outputs relative to the project, figures) and
writes one RELION STAR file atomically.  Optics groups follow mdcatch's rule
(:func:`mdcatch.star.optics_key`: voltage, Cs, amplitude contrast, movie pixel
size; the ledger does not record the detector) and are numbered in order of first
appearance; each group's values are those of its first row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mdcatch.crosscheck import DEFAULT_CS_MM
from mdcatch.records import Optics
from mdcatch.serialem.section import DEFAULT_VOLTAGE_KV
from mdcatch.star import OpticsKey, optics_key
from pipelines.ctf.outputs import make_optics_table
from pipelines.io.outputs import write_star
from pipelines.motion.outputs import (
    CorrectedMicrograph,
    CorrectedOptics,
    write_corrected_micrographs_star,
)

__all__ = ["corrected_micrographs", "micrographs_ctf", "movies_table"]

Row = tuple[Mapping[str, str], Mapping[str, float]]

# rows written before the motion stage recorded its optics: mdcatch's defaults
_LEGACY_OPTICS = Optics(
    voltage_kv=DEFAULT_VOLTAGE_KV, pixel_size_a=math.nan, cs_mm=DEFAULT_CS_MM
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _GroupOptics:
    original_pixel_size_a: float
    pixel_size_a: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float

    @classmethod
    def of(cls, figures: Mapping[str, float]) -> _GroupOptics:
        pixel = float(figures.get("pixel_size_a", math.nan))
        return cls(
            original_pixel_size_a=float(figures.get("original_pixel_size_a", pixel)),
            pixel_size_a=pixel,
            voltage_kv=float(figures.get("voltage_kv", _LEGACY_OPTICS.voltage_kv)),
            cs_mm=float(figures.get("cs_mm", DEFAULT_CS_MM)),
            amplitude_contrast=float(
                figures.get("amplitude_contrast", _LEGACY_OPTICS.amplitude_contrast)
            ),
        )

    @property
    def key(self) -> OpticsKey:
        return optics_key(
            voltage_kv=self.voltage_kv,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
            pixel_size_a=self.original_pixel_size_a,
            detector="",
        )


class _Groups:
    """Optics groups of rows, numbered from 1 in order of first appearance."""

    def __init__(self, path: Path, figures: Sequence[Mapping[str, float]]) -> None:
        self.optics: dict[OpticsKey, tuple[int, _GroupOptics]] = {}
        self.numbers: list[int] = []
        for f in figures:
            row = _GroupOptics.of(f)
            number, first = self.optics.setdefault(row.key, (len(self.optics) + 1, row))
            if not _same(row.pixel_size_a, first.pixel_size_a):
                raise ValueError(
                    f"{path}: optics group {number} holds micrographs of pixel size "
                    f"{first.pixel_size_a} and {row.pixel_size_a} Å "
                    "(figure 'pixel_size_a')"
                )
            self.numbers.append(number)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def corrected_micrographs(path: Path, rows: Sequence[Row]) -> Path:
    """``corrected_micrographs.star`` from motion rows."""
    groups = _Groups(path, [f for _, f in rows])
    optics = [
        CorrectedOptics(
            optics_group=group,
            optics_group_name=f"opticsGroup{group}",
            original_pixel_size_a=o.original_pixel_size_a,
            micrograph_pixel_size_a=o.pixel_size_a,
            voltage_kv=o.voltage_kv,
            cs_mm=o.cs_mm,
            amplitude_contrast=o.amplitude_contrast,
        )
        for group, o in groups.optics.values()
    ]
    micrographs = [
        CorrectedMicrograph(
            micrograph_name=outputs["micrograph"],
            metadata_name=outputs.get("star", ""),
            power_spectrum_name=outputs.get("power_spectrum", ""),
            optics_group=group,
            accum_motion_total_a=figures.get("total_motion_a", float("nan")),
            accum_motion_early_a=figures.get("early_motion_a", float("nan")),
            accum_motion_late_a=figures.get("late_motion_a", float("nan")),
        )
        for (outputs, figures), group in zip(rows, groups.numbers, strict=True)
    ]
    return write_corrected_micrographs_star(path, micrographs, optics)


def movies_table(path: Path, rows: Sequence[tuple[str, Mapping[str, float]]]) -> Path:
    """``movies.star`` from ``(movie name, motion figures)``: the labels of
    :func:`mdcatch.star.movies_star_blocks`, the groups of
    :func:`corrected_micrographs` (the same rule on the same rows)."""
    import pandas as pd  # ~0.3 s: loaded on the first table, not at service start

    groups = _Groups(path, [f for _, f in rows])
    optics = pd.DataFrame(
        [
            {
                "rlnOpticsGroupName": f"opticsGroup{group}",
                "rlnOpticsGroup": group,
                "rlnMicrographOriginalPixelSize": o.original_pixel_size_a,
                "rlnVoltage": o.voltage_kv,
                "rlnSphericalAberration": o.cs_mm,
                "rlnAmplitudeContrast": o.amplitude_contrast,
            }
            for group, o in groups.optics.values()
        ]
    )
    movies = pd.DataFrame(
        {
            "rlnMicrographMovieName": [name for name, _ in rows],
            "rlnOpticsGroup": groups.numbers,
        }
    )
    return write_star(path, {"optics": optics, "movies": movies})


def micrographs_ctf(
    path: Path, rows: Sequence[tuple[str, Mapping[str, str], Mapping[str, float]]]
) -> Path:
    """``micrographs_ctf.star`` from ``(micrograph name, ctf outputs, figures)``.

    The labels and their order are those of
    :func:`pipelines.ctf.outputs.write_micrographs_ctf_star`, which needs the full
    fit (spectra); the ledger keeps only its numbers.
    """
    import pandas as pd  # as in movies_table

    groups = _Groups(path, [f for _, _, f in rows])
    optics = pd.concat(
        [
            make_optics_table(
                original_pixel_size_a=o.original_pixel_size_a,
                pixel_size_a=o.pixel_size_a,
                voltage_kv=o.voltage_kv,
                cs_mm=o.cs_mm,
                amplitude_contrast=o.amplitude_contrast,
                group_name=f"opticsGroup{group}",
                group=group,
            )
            for group, o in groups.optics.values()
        ],
        ignore_index=True,
    )

    def column(name: str, default: float = float("nan")) -> list[float]:
        return [float(f.get(name, default)) for _, _, f in rows]

    u, v = column("defocus_u_a"), column("defocus_v_a")
    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": [name for name, _, _ in rows],
            "rlnOpticsGroup": groups.numbers,
            "rlnCtfImage": [f"{o['ctf_image']}:mrc" for _, o, _ in rows],
            "rlnDefocusU": u,
            "rlnDefocusV": v,
            "rlnCtfAstigmatism": [
                float(f.get("astigmatism_a", abs(a - b)))
                for (_, _, f), a, b in zip(rows, u, v, strict=True)
            ],
            "rlnDefocusAngle": column("astigmatism_angle_deg"),
            "rlnCtfFigureOfMerit": column("figure_of_merit"),
            "rlnCtfMaxResolution": column("fit_resolution_a"),
            "rlnPhaseShift": column("phase_shift_deg", 0.0),
        }
    )
    return write_star(path, {"optics": optics, "micrographs": micrographs})
