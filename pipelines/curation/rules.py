"""Exposure curation: accept or reject each exposure by its figures, with reasons.

Every rule compares one figure of an exposure with one threshold; an exposure is
accepted when no rule fails.  A reason names the figure, its value and the threshold
(``"ctf_resolution_a=7.4 > max 6"``).  A figure that is NaN (the stage that measures
it failed) fails its rule; a figure that is ``None`` (not measured, like the ice
proxy when the CTF stage does not estimate it) is not checked.  A threshold set to
``None`` switches its rule off.

:func:`curate_table` evaluates a whole table of past exposures at once (one vector
comparison per rule), so when an operator changes the thresholds the service
re-evaluates every exposure from its stored figures, without reprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "CurationDecision",
    "CurationThresholds",
    "ExposureFigures",
    "curate",
    "curate_table",
    "rejection_counts",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExposureFigures:
    """What motion correction and CTF estimation measured on one exposure.

    Motions are RELION's accumulated motions (``rlnAccumMotionTotal``/``Early``) in
    Å; ``ctf_figure_of_merit`` is the CTF fit score (``rlnCtfFigureOfMerit``, 0-1);
    ``relative_ice_thickness`` is an ice/contamination proxy (power near the 3.7 Å
    water ring relative to its neighbourhood, 1 = thin ice), ``None`` when not
    measured.
    """

    ctf_resolution_a: float
    defocus_u_a: float
    defocus_v_a: float
    total_motion_a: float
    early_motion_a: float
    ctf_figure_of_merit: float
    relative_ice_thickness: float | None = None

    @property
    def defocus_mean_a(self) -> float:
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)

    @property
    def astigmatism_a(self) -> float:
        return abs(self.defocus_u_a - self.defocus_v_a)


@dataclass(frozen=True, slots=True, kw_only=True)
class CurationThresholds:
    """Limits on :class:`ExposureFigures`; ``None`` switches a rule off.

    ``max_ctf_resolution_a`` = 6 Å is RELION-it's default; the others are lenient
    defaults that reject only clearly broken exposures.
    """

    max_ctf_resolution_a: float | None = 6.0
    min_defocus_a: float | None = 3000.0
    max_defocus_a: float | None = 40000.0
    max_astigmatism_a: float | None = 1000.0
    max_total_motion_a: float | None = 100.0
    max_early_motion_a: float | None = 30.0
    min_ctf_figure_of_merit: float | None = 0.02
    max_relative_ice_thickness: float | None = 1.5


@dataclass(frozen=True, slots=True, kw_only=True)
class CurationDecision:
    accepted: bool
    reasons: tuple[str, ...]


# (figure, threshold field, "max" or "min"): the figure must not exceed / fall below.
RULES: tuple[tuple[str, str, str], ...] = (
    ("ctf_resolution_a", "max_ctf_resolution_a", "max"),
    ("defocus_mean_a", "min_defocus_a", "min"),
    ("defocus_mean_a", "max_defocus_a", "max"),
    ("astigmatism_a", "max_astigmatism_a", "max"),
    ("total_motion_a", "max_total_motion_a", "max"),
    ("early_motion_a", "max_early_motion_a", "max"),
    ("ctf_figure_of_merit", "min_ctf_figure_of_merit", "min"),
    ("relative_ice_thickness", "max_relative_ice_thickness", "max"),
)
OPTIONAL_FIGURES = frozenset({"relative_ice_thickness"})


def _reason(figure: str, value: float, bound: str, limit: float) -> str:
    sign = ">" if bound == "max" else "<"
    return f"{figure}={value:.4g} {sign} {bound} {limit:.4g}"


def curate(
    figures: ExposureFigures, thresholds: CurationThresholds
) -> CurationDecision:
    """Accept or reject one exposure; the reasons list every failed rule."""
    reasons = []
    for figure, field, bound in RULES:
        limit = getattr(thresholds, field)
        value = getattr(figures, figure)
        if limit is None or value is None:
            continue
        failed = (
            math.isnan(value)
            or (bound == "max" and value > limit)
            or (bound == "min" and value < limit)
        )
        if failed:
            reasons.append(_reason(figure, value, bound, limit))
    return CurationDecision(accepted=not reasons, reasons=tuple(reasons))


def curate_table(table: Any, thresholds: CurationThresholds) -> Any:
    """Evaluate every row of a DataFrame of figures (columns named as in
    :class:`ExposureFigures`; the ice column may be absent or hold NaN for "not
    measured").

    Returns a DataFrame on the same index with ``accepted`` (bool), ``reasons``
    (tuple of str, as :func:`curate`) and one boolean column ``rejected_by_<field>``
    per active threshold.
    """
    import pandas as pd

    names = {f.name for f in fields(ExposureFigures)}
    missing = sorted(names - OPTIONAL_FIGURES - set(table.columns))
    if missing:
        raise KeyError(f"curate_table: figure columns missing: {missing}")
    values = {
        "ctf_resolution_a": table["ctf_resolution_a"].to_numpy(dtype=np.float64),
        "defocus_mean_a": 0.5
        * (
            table["defocus_u_a"].to_numpy(dtype=np.float64)
            + table["defocus_v_a"].to_numpy(dtype=np.float64)
        ),
        "astigmatism_a": np.abs(
            table["defocus_u_a"].to_numpy(dtype=np.float64)
            - table["defocus_v_a"].to_numpy(dtype=np.float64)
        ),
        "total_motion_a": table["total_motion_a"].to_numpy(dtype=np.float64),
        "early_motion_a": table["early_motion_a"].to_numpy(dtype=np.float64),
        "ctf_figure_of_merit": table["ctf_figure_of_merit"].to_numpy(dtype=np.float64),
    }
    ice = table.get("relative_ice_thickness")
    values["relative_ice_thickness"] = (
        np.full(len(table), np.nan)
        if ice is None
        else pd.to_numeric(ice, errors="coerce").to_numpy(dtype=np.float64)
    )
    out = pd.DataFrame(index=table.index)
    reasons: list[list[str]] = [[] for _ in range(len(table))]
    for figure, field, bound in RULES:
        limit = getattr(thresholds, field)
        if limit is None:
            continue
        value = values[figure]
        nan = np.isnan(value)
        if figure in OPTIONAL_FIGURES:
            failed = (value > limit) if bound == "max" else (value < limit)
        else:
            failed = nan | ((value > limit) if bound == "max" else (value < limit))
        out[f"rejected_by_{field}"] = failed
        for row in np.flatnonzero(failed):  # failing rows only, to word their reasons
            reasons[row].append(_reason(figure, value[row], bound, limit))
    out["reasons"] = [tuple(r) for r in reasons]
    out["accepted"] = [not r for r in reasons]
    return out


def rejection_counts(
    decisions: Any, fields_: Iterable[str] | None = None
) -> dict[str, int]:
    """``{threshold field: number of exposures it rejects}`` from :func:`curate_table`."""
    columns = [c for c in decisions.columns if c.startswith("rejected_by_")]
    wanted = set(fields_) if fields_ is not None else None
    return {
        c.removeprefix("rejected_by_"): int(decisions[c].sum())
        for c in columns
        if wanted is None or c.removeprefix("rejected_by_") in wanted
    }
