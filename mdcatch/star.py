"""RELION-4 movies STAR (``data_optics`` + ``data_movies``) from exposure records.

Exposures that share voltage, Cs, amplitude contrast, pixel size and detector form
one optics group, numbered in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mdcatch.crosscheck import DEFAULT_CS_MM
from mdcatch.errors import MetadataError
from mdcatch.records import Exposure

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "OpticsKey",
    "movies_star_blocks",
    "optics_group_key",
    "optics_key",
    "write_movies_star",
]

# (voltage kV, Cs mm, amplitude contrast, movie pixel size Å, detector)
OpticsKey = tuple[float, float, float, float, str]


def optics_key(
    *,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    pixel_size_a: float,
    detector: str,
) -> OpticsKey:
    """The optics-group rule: exposures with equal keys share an optics group
    (values rounded so that float noise in the metadata does not split groups)."""
    return (
        round(voltage_kv, 3),
        round(cs_mm, 4),
        round(amplitude_contrast, 4),
        round(pixel_size_a, 5),
        detector,
    )


def optics_group_key(exposure: Exposure) -> OpticsKey:
    """What makes two exposures belong to different optics groups."""
    optics = exposure.optics
    return optics_key(
        voltage_kv=optics.voltage_kv,
        cs_mm=DEFAULT_CS_MM if optics.cs_mm is None else optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
        pixel_size_a=optics.pixel_size_a,
        detector=optics.detector,
    )


def movies_star_blocks(exposures: Sequence[Exposure]) -> dict[str, pd.DataFrame]:
    """The ``optics`` and ``movies`` blocks for exposures that have a movie."""
    groups: dict[OpticsKey, int] = {}
    movie_rows: list[dict[str, object]] = []
    for exposure in exposures:
        if exposure.movie_path is None:
            raise MetadataError(
                exposure.metadata_path,
                "movie_path",
                None,
                "no movie found for exposure",
            )
        key = optics_group_key(exposure)
        group = groups.setdefault(key, len(groups) + 1)
        movie_rows.append(
            {
                "rlnMicrographMovieName": str(exposure.movie_path),
                "rlnOpticsGroup": group,
            }
        )
    optics_rows = [
        {
            "rlnOpticsGroupName": f"opticsGroup{number}",
            "rlnOpticsGroup": number,
            "rlnMicrographOriginalPixelSize": key[3],
            "rlnVoltage": key[0],
            "rlnSphericalAberration": key[1],
            "rlnAmplitudeContrast": key[2],
        }
        for key, number in groups.items()
    ]
    import pandas as pd  # ~0.3 s: loaded on the first table, not with the module

    return {"optics": pd.DataFrame(optics_rows), "movies": pd.DataFrame(movie_rows)}


def write_movies_star(path: Path, exposures: Sequence[Exposure]) -> Path:
    """Write a RELION-4 movies STAR that ``relion_run_motioncorr`` can read."""
    import starfile  # loads pandas (see movies_star_blocks)

    starfile.write(movies_star_blocks(exposures), path, overwrite=True)
    return path
