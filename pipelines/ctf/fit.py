"""The record of a CTF fit, its RELION conventions and when not to trust it.

Conventions are RELION's, which takes them from CTFFIND: defocus positive for
underfocus, ``defocus_u_a >= defocus_v_a``, ``astigmatism_angle_deg`` the angle of
the U axis from the x axis in [-90, 90), astigmatism ``U - V``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipelines.ctf.model import CtfParams
from pipelines.ctf.quality import EquiphaseProfile
from pipelines.ctf.search import SearchResult

__all__ = [
    "CtfFit",
    "TrustLimits",
    "candidate_of",
    "full_plane",
    "judge_fit",
    "params_of",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustLimits:
    """When a fit is flagged as not to be trusted."""

    min_figure_of_merit: float = 0.05
    worst_fit_resolution_a: float = 10.0
    edge_fraction: float = 0.02  # of the defocus range, at either end
    max_astigmatism_fraction: float = 0.95  # of the astigmatism search limit


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class CtfFit:
    """The result of :func:`estimate_ctf` (RELION labels in brackets).

    ``spectrum`` and ``model`` are centred ``(tile_px, tile_px)`` images for the
    diagnostic: the background-subtracted amplitude spectrum and the fitted CTF².
    """

    defocus_u_a: float  # rlnDefocusU
    defocus_v_a: float  # rlnDefocusV
    astigmatism_angle_deg: float  # rlnDefocusAngle
    phase_shift_deg: float  # rlnPhaseShift
    figure_of_merit: float  # rlnCtfFigureOfMerit
    fit_resolution_a: float  # rlnCtfMaxResolution
    astigmatism_a: float  # rlnCtfAstigmatism
    trusted: bool
    reasons: tuple[str, ...]
    params: CtfParams
    pixel_size_a: float
    n_tiles: int
    spectrum: np.ndarray = field(repr=False)
    model: np.ndarray = field(repr=False)
    profile: EquiphaseProfile = field(repr=False)


def full_plane(half: np.ndarray) -> np.ndarray:
    """A centred ``(t, t)`` image from an rfft2-layout ``(t, t // 2 + 1)`` array."""
    t = half.shape[0]
    full = np.empty((t, t), dtype=np.float32)
    full[:, : half.shape[1]] = half
    # Centro-symmetry: value(-ky, -kx) = value(ky, kx).
    mirror = half[(-np.arange(t)) % t][:, 1 : t - half.shape[1] + 1]
    full[:, half.shape[1] :] = mirror[:, ::-1]
    return np.fft.fftshift(full)


def candidate_of(result: SearchResult) -> np.ndarray:
    return np.array(
        [
            [
                result.defocus_mean_a,
                result.half_c_a,
                result.half_s_a,
                result.phase_shift_deg,
            ]
        ]
    )


def params_of(result: SearchResult, optics: dict[str, float]) -> CtfParams:
    """RELION's form: U >= V, angle of U from x in [-90, 90)."""
    half = math.hypot(result.half_c_a, result.half_s_a)
    angle = 0.5 * math.degrees(math.atan2(result.half_s_a, result.half_c_a))
    return CtfParams(
        defocus_u_a=result.defocus_mean_a + half,
        defocus_v_a=result.defocus_mean_a - half,
        astigmatism_angle_deg=(angle + 90.0) % 180.0 - 90.0,
        phase_shift_deg=result.phase_shift_deg,
        **optics,
    )


def judge_fit(
    *,
    mean_a: float,
    astigmatism_a: float,
    figure_of_merit: float,
    fit_resolution_a: float,
    defocus_range_a: tuple[float, float],
    max_astigmatism_a: float,
    limits: TrustLimits,
) -> tuple[str, ...]:
    reasons = []
    if not figure_of_merit >= limits.min_figure_of_merit:
        reasons.append(
            f"figure of merit {figure_of_merit:.3f} < {limits.min_figure_of_merit}"
        )
    if not fit_resolution_a <= limits.worst_fit_resolution_a:
        reasons.append(
            f"fit resolution {fit_resolution_a:.1f} Å worse than "
            f"{limits.worst_fit_resolution_a} Å"
        )
    low, high = defocus_range_a
    edge = limits.edge_fraction * (high - low)
    if mean_a <= low + edge or mean_a >= high - edge:
        reasons.append(
            f"mean defocus {mean_a:.0f} Å at the search limit [{low:.0f}, {high:.0f}] Å"
        )
    if astigmatism_a >= limits.max_astigmatism_fraction * max_astigmatism_a:
        reasons.append(
            f"astigmatism {astigmatism_a:.0f} Å at the search limit "
            f"{max_astigmatism_a:.0f} Å"
        )
    return tuple(reasons)
