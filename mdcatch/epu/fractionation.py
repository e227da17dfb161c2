"""EPU fractionation settings: how the raw detector frames were summed into the
fractions written to the movie.

``EquidistantFractionation`` gives ``NumberOffractions``; ``VaridistantFractionation``
(Falcon 3) lists each fraction's first and last raw frame in ``DoseFractions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from mdcatch.epu.xml_values import ARR, OMP, XSI, element_text, is_nil, parse_int
from mdcatch.errors import MetadataError

__all__ = ["Fractionation", "fraction_doses", "read_fractionation"]


@dataclass(frozen=True, slots=True)
class Fractionation:
    """``kind`` is EPU's type name; ``ranges`` the raw-frame ranges (varidistant)."""

    kind: str
    n_frames: int
    ranges: tuple[tuple[int, int], ...] = ()


def read_fractionation(
    value: etree._Element | None, path: Path
) -> Fractionation | None:
    """Equidistant (NumberOffractions) or varidistant (DoseFractions) settings."""
    if value is None or is_nil(value):
        return None
    kind = (value.get(f"{{{XSI}}}type") or "").rsplit(":", 1)[-1]
    field = "FractionationSettings"
    fractions = value.find(f"{{{OMP}}}DoseFractions")
    if fractions is not None:
        ranges = []
        for item in fractions.iterfind(f"{{{ARR}}}anyType"):
            start = parse_int(
                element_text(item.find(f"{{{OMP}}}StartFrameNumber")),
                path,
                f"{field}.StartFrameNumber",
            )
            end = parse_int(
                element_text(item.find(f"{{{OMP}}}EndFrameNumber")),
                path,
                f"{field}.EndFrameNumber",
            )
            if start < 0 or end < start:
                raise MetadataError(
                    path, f"{field}.DoseFractions", f"{start}-{end}", "impossible range"
                )
            ranges.append((start, end))
        if not ranges:
            raise MetadataError(path, f"{field}.DoseFractions", 0, "zero fractions")
        return Fractionation(
            kind or "VaridistantFractionation", len(ranges), tuple(ranges)
        )
    number = value.find(f"{{{OMP}}}NumberOffractions")
    if number is None:
        raise MetadataError(
            path, field, kind, "neither NumberOffractions nor DoseFractions"
        )
    n = parse_int(element_text(number), path, f"{field}.NumberOffractions")
    if n < 1:
        raise MetadataError(path, f"{field}.NumberOffractions", n, "zero fractions")
    return Fractionation(kind or "EquidistantFractionation", n)


def fraction_doses(
    ranges: tuple[tuple[int, int], ...], total_dose: float
) -> tuple[tuple[int, float], ...]:
    """(number of fractions, dose per fraction e/Å²) runs for varidistant settings.

    Raw frames are equally long, so each fraction's dose is proportional to how many
    raw frames it sums."""
    counts = [end - start + 1 for start, end in ranges]
    total_frames = sum(counts)
    runs: list[tuple[int, float]] = []
    for count in counts:
        dose = total_dose * count / total_frames
        if runs and runs[-1][1] == dose:
            runs[-1] = (runs[-1][0] + 1, dose)
        else:
            runs.append((1, dose))
    return tuple(runs)
