"""CTF estimation per micrograph, CTFFIND4-class (Rohou & Grigorieff 2015).

Steps: an amplitude spectrum averaged over overlapping tiles, a smooth radial
background removed, an exhaustive 1D search over mean defocus (and phase shift) on
the rotational average, an exhaustive grid over astigmatism on the 2D spectrum, a
local refinement (Nelder-Mead) of defocus U, V, angle (and phase shift); then the fit
score (``rlnCtfFigureOfMerit``: correlation of spectrum and CTF² in the fitting
band), the resolution to which the Thon rings fit (``rlnCtfMaxResolution``) and a
trust flag with its reasons.

Conventions are RELION's (see :mod:`pipelines.ctf.fit`): ``defocus_u_a >=
defocus_v_a``, ``astigmatism_angle_deg`` of the U axis from x in [-90, 90).

Example::

    fit = estimate_ctf(image, pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7)
    print(fit.defocus_u_a, fit.defocus_v_a, fit.fit_resolution_a, fit.trusted)
"""

from __future__ import annotations

import functools
import math
import time
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.ctf.fit import (
    CtfFit,
    TrustLimits,
    candidate_of,
    full_plane,
    judge_fit,
    params_of,
)
from pipelines.ctf.model import DEFAULT_AMPLITUDE_CONTRAST, ctf_2d
from pipelines.ctf.quality import equiphase_profile, weight_band_by_rings
from pipelines.ctf.search import (
    defocus_step_a,
    make_fit_band,
    score_candidates,
    search_astigmatism,
    search_mean_defocus,
)
from pipelines.ctf.spectrum import (
    average_amplitude_spectrum,
    radial_index,
    refine_background,
    subtract_background,
)
from pipelines.errors import StageInputError

__all__ = ["CtfFit", "TrustLimits", "estimate_ctf"]


class _StepClock:
    """Adds the seconds since the previous mark to ``timings[step]``."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[step] = self.timings.get(step, 0.0) + now - self.last
        self.last = now


def _check_inputs(micrograph: Any, pixel_size_a: float, tile_px: int) -> None:
    if micrograph.ndim != 2:
        raise StageInputError(
            "<array>", "micrograph.shape", micrograph.shape, "expected (ny, nx)"
        )
    if min(micrograph.shape) < 64:
        raise StageInputError(
            "<array>", "micrograph.shape", micrograph.shape, "smaller than 64 px"
        )
    if not pixel_size_a > 0:
        raise StageInputError("<array>", "pixel_size_a", pixel_size_a, "must be > 0")
    if tile_px < 64 or tile_px % 2:
        raise StageInputError("<array>", "tile_px", tile_px, "must be even and >= 64")


def estimate_ctf(
    micrograph: np.ndarray,
    *,
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST,
    defocus_range_a: tuple[float, float] = (3000.0, 50000.0),
    resolution_range_a: tuple[float, float] = (30.0, 5.0),
    tile_px: int = 512,
    phase_plate: bool = False,
    max_astigmatism_a: float = 3000.0,
    limits: TrustLimits | None = None,
    workers: int = -1,
    xp: ModuleType = np,
    timings: dict[str, float] | None = None,
) -> CtfFit:
    """Fit defocus U, V, angle (and phase shift) to the Thon rings of ``micrograph``.

    ``micrograph`` is ``(ny, nx)``, any real dtype; ``resolution_range_a`` is
    (low, high) resolution in Å of the fitting band (the high limit is raised to
    Nyquist when it lies beyond it); ``tile_px`` is reduced to the largest even
    size that fits in the micrograph.  ``timings``, when given, receives the
    seconds spent per step (spectrum, background, search_1d, search_2d, refine,
    quality).
    """
    clock = _StepClock(timings)
    limits = limits or TrustLimits()
    tile = min(int(tile_px), *(s - s % 2 for s in micrograph.shape))
    _check_inputs(micrograph, pixel_size_a, tile)
    low_res_a, high_res_a = resolution_range_a
    if not low_res_a > high_res_a > 0:
        raise StageInputError(
            "<argument>",
            "resolution_range_a",
            resolution_range_a,
            "need low > high > 0",
        )
    if not 0 < defocus_range_a[0] < defocus_range_a[1]:
        raise StageInputError(
            "<argument>", "defocus_range_a", defocus_range_a, "need 0 < min < max"
        )
    high_res_a = max(high_res_a, 2.0 * pixel_size_a)

    amplitude, n_tiles = average_amplitude_spectrum(
        micrograph, tile, workers=workers, xp=xp
    )
    clock.mark("spectrum")
    box_px = round(tile * pixel_size_a / low_res_a * math.sqrt(2.0))
    spectrum = subtract_background(amplitude, box_px=box_px)

    radius_px, ky_px, kx_px = radial_index(tile)
    to_per_a = 1.0 / (tile * pixel_size_a)
    ky, kx = ky_px * to_per_a, kx_px * to_per_a
    k = radius_px * to_per_a
    off_axes = (ky_px != 0) & (kx_px != 0)
    band_mask = off_axes & (k >= 1.0 / low_res_a) & (k <= 1.0 / high_res_a)
    optics = {
        "voltage_kv": voltage_kv,
        "cs_mm": cs_mm,
        "amplitude_contrast": amplitude_contrast,
    }
    band = make_fit_band(spectrum, ky, kx, band_mask, **optics)

    # Rotational average over integer shells for the 1D search.
    shell = np.rint(radius_px).astype(np.int64)
    n_shells = int(shell.max()) + 1
    counts = np.bincount(shell[off_axes], minlength=n_shells)
    sums = np.bincount(shell[off_axes], weights=spectrum[off_axes], minlength=n_shells)
    shell_k = np.arange(n_shells) * to_per_a
    in_band = (counts > 0) & (shell_k >= 1.0 / low_res_a) & (shell_k <= 1 / high_res_a)
    average = np.divide(sums, counts, out=np.zeros(n_shells), where=counts > 0)
    profile_band = make_fit_band(
        average[None, :],
        np.zeros((1, n_shells)),
        shell_k[None, :],
        in_band[None, :],
        **optics,
    )

    clock.mark("background")
    step_a = defocus_step_a(band)
    mean_a, phase_deg = search_mean_defocus(
        profile_band,
        defocus_range_a=defocus_range_a,
        step_a=step_a,
        phase_plate=phase_plate,
    )
    clock.mark("search_1d")
    search = functools.partial(
        search_astigmatism,
        step_a=step_a,
        max_astigmatism_a=max_astigmatism_a,
        phase_plate=phase_plate,
    )
    first = search(band, defocus_mean_a=mean_a, phase_shift_deg=phase_deg)
    clock.mark("search_2d")
    # Second pass: the background refined under the first fit's rings, and each
    # pixel weighted by the ring contrast found at its frequency.
    model_1 = ctf_2d(
        (tile, tile), pixel_size_a, params_of(first, optics), dtype=np.float64
    )
    spectrum = refine_background(
        amplitude,
        model_1**2,
        first_shell=max(1, int(tile * pixel_size_a / low_res_a) - box_px // 2),
        knot_spacing_px=box_px,
    )
    refined_band = make_fit_band(spectrum, ky, kx, band_mask, **optics)
    nyquist_mask = off_axes & (radius_px <= tile // 2)
    profile = equiphase_profile(
        spectrum,
        ky,
        kx,
        nyquist_mask,
        params_of(first, optics),
        low_resolution_a=low_res_a,
    )
    best = search(
        weight_band_by_rings(refined_band, profile),
        defocus_mean_a=first.defocus_mean_a,
        phase_shift_deg=first.phase_shift_deg,
    )
    # The refined pass may only polish the first fit, not jump to another optimum.
    first_score = float(score_candidates(band, candidate_of(first))[0])
    if (
        abs(best.defocus_mean_a - first.defocus_mean_a) > 3.0 * step_a
        or float(score_candidates(band, candidate_of(best))[0]) < 0.9 * first_score
    ):
        best = first
    params = params_of(best, optics)
    clock.mark("refine")
    half = 0.5 * (params.defocus_u_a - params.defocus_v_a)
    angle = params.astigmatism_angle_deg
    figure_of_merit = float(score_candidates(band, candidate_of(best))[0])
    profile = equiphase_profile(
        spectrum, ky, kx, nyquist_mask, params, low_resolution_a=low_res_a
    )
    model = ctf_2d((tile, tile), pixel_size_a, params, dtype=np.float64) ** 2
    reasons = judge_fit(
        mean_a=best.defocus_mean_a,
        astigmatism_a=2.0 * half,
        figure_of_merit=figure_of_merit,
        fit_resolution_a=profile.fit_resolution_a,
        defocus_range_a=defocus_range_a,
        max_astigmatism_a=max_astigmatism_a,
        limits=limits,
    )
    clock.mark("quality")
    return CtfFit(
        defocus_u_a=params.defocus_u_a,
        defocus_v_a=params.defocus_v_a,
        astigmatism_angle_deg=angle,
        phase_shift_deg=params.phase_shift_deg,
        figure_of_merit=figure_of_merit,
        fit_resolution_a=profile.fit_resolution_a,
        astigmatism_a=2.0 * half,
        trusted=not reasons,
        reasons=reasons,
        params=params,
        pixel_size_a=float(pixel_size_a),
        n_tiles=n_tiles,
        spectrum=full_plane(spectrum),
        model=full_plane(model),
        profile=profile,
    )
