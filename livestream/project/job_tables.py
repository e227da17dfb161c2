"""The tables of the job index files (see :mod:`livestream.project.job_index`).

Each function takes ledger rows (outputs relative to the project, figures) and
writes one RELION STAR file atomically.  Exposures with different optics (pixel
size, voltage, Cs, amplitude contrast) get separate optics groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["corrected_micrographs", "micrographs_ctf"]

Row = tuple[Mapping[str, str], Mapping[str, float]]

_OPTICS_KEYS = ("original_pixel_size_a", "pixel_size_a", "voltage_kv", "cs_mm")


def _optics_key(figures: Mapping[str, float]) -> tuple[float, ...]:
    defaults = {"voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}
    pixel = figures.get("pixel_size_a", float("nan"))
    values = {**defaults, "original_pixel_size_a": pixel, **figures}
    return (
        *(float(values[k]) for k in _OPTICS_KEYS),
        float(values["amplitude_contrast"]),
    )


def _groups(figures: Sequence[Mapping[str, float]]) -> dict[tuple[float, ...], int]:
    groups: dict[tuple[float, ...], int] = {}
    for f in figures:
        groups.setdefault(_optics_key(f), len(groups) + 1)
    return groups


def corrected_micrographs(path: Path, rows: Sequence[Row]) -> Path:
    """``corrected_micrographs.star`` from motion rows."""
    from pipelines.motion.outputs import (
        CorrectedMicrograph,
        CorrectedOptics,
        write_corrected_micrographs_star,
    )

    groups = _groups([f for _, f in rows])
    optics = [
        CorrectedOptics(
            optics_group=group,
            optics_group_name=f"opticsGroup{group}",
            original_pixel_size_a=key[0],
            micrograph_pixel_size_a=key[1],
            voltage_kv=key[2],
            cs_mm=key[3],
            amplitude_contrast=key[4],
        )
        for key, group in groups.items()
    ]
    micrographs = [
        CorrectedMicrograph(
            micrograph_name=outputs["micrograph"],
            metadata_name=outputs.get("star", ""),
            power_spectrum_name=outputs.get("power_spectrum", ""),
            optics_group=groups[_optics_key(figures)],
            accum_motion_total_a=figures.get("total_motion_a", float("nan")),
            accum_motion_early_a=figures.get("early_motion_a", float("nan")),
            accum_motion_late_a=figures.get("late_motion_a", float("nan")),
        )
        for outputs, figures in rows
    ]
    return write_corrected_micrographs_star(path, micrographs, optics)


def micrographs_ctf(
    path: Path, rows: Sequence[tuple[str, Mapping[str, str], Mapping[str, float]]]
) -> Path:
    """``micrographs_ctf.star`` from ``(micrograph name, ctf outputs, figures)``.

    The labels and their order are those of
    :func:`pipelines.ctf.outputs.write_micrographs_ctf_star`, which needs the full
    fit (spectra); the ledger keeps only its numbers.
    """
    import pandas as pd

    from pipelines.ctf.outputs import make_optics_table
    from pipelines.io.outputs import write_star

    groups = _groups([f for _, _, f in rows])
    optics = pd.concat(
        [
            make_optics_table(
                original_pixel_size_a=key[0],
                pixel_size_a=key[1],
                voltage_kv=key[2],
                cs_mm=key[3],
                amplitude_contrast=key[4],
                group_name=f"opticsGroup{group}",
                group=group,
            )
            for key, group in groups.items()
        ],
        ignore_index=True,
    )

    def column(name: str, default: float = float("nan")) -> list[float]:
        return [float(f.get(name, default)) for _, _, f in rows]

    u, v = column("defocus_u_a"), column("defocus_v_a")
    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": [name for name, _, _ in rows],
            "rlnOpticsGroup": [groups[_optics_key(f)] for _, _, f in rows],
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
