"""The fit of a CTF² model to a background-subtracted spectrum.

The second half of CTF estimation.  The defocus is parametrised linearly as

    dz(theta) = mean + half_c * cos(2 theta) + half_s * sin(2 theta)

(``half = hypot(half_c, half_s) = (dU - dV) / 2``, ``angle = atan2(half_s, half_c) / 2``),
which has no wrap-around and no U/V swap, so the exhaustive grid and the local
optimiser both work on a smooth, unbounded space.  The phase is
``ctf_model.ctf_phase`` at zero defocus (spherical aberration, amplitude contrast)
plus the defocus term; the score of a candidate is the Pearson correlation between
the spectrum and ``sin²(chi)`` over the pixels of the fitting band.  Candidates are
scored in batches: one ``(n_candidates, n_pixels)`` array per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.ctf.model import CtfParams, ctf_phase, electron_wavelength_a

__all__ = [
    "FitBand",
    "SearchResult",
    "defocus_step_a",
    "make_fit_band",
    "score_candidates",
    "search_astigmatism",
    "search_mean_defocus",
]

_BATCH_VALUES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class FitBand:
    """The pixels of the spectrum between the resolution limits, flattened.

    ``k2`` in 1/Å², ``cos2``/``sin2`` of twice the azimuth, ``chi_static`` the phase
    without defocus and phase shift (radians), ``data`` standardised (mean 0, sd 1).
    """

    k2: np.ndarray
    cos2: np.ndarray
    sin2: np.ndarray
    chi_static: np.ndarray
    data: np.ndarray
    weight: np.ndarray
    wavelength_a: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult:
    """Best parameters: mean defocus and half-astigmatism components (Å), phase (deg)."""

    defocus_mean_a: float
    half_c_a: float
    half_s_a: float
    phase_shift_deg: float
    score: float


def make_fit_band(
    spectrum: np.ndarray,
    ky: np.ndarray,
    kx: np.ndarray,
    mask: np.ndarray,
    *,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
) -> FitBand:
    """Collect the ``mask`` pixels of ``spectrum`` with frequencies ``ky``, ``kx`` (1/Å)."""
    y = ky[mask].astype(np.float64)
    x = kx[mask].astype(np.float64)
    static = CtfParams(
        defocus_u_a=0.0,
        defocus_v_a=0.0,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
    )
    theta2 = 2.0 * np.arctan2(y, x)
    values = spectrum[mask].astype(np.float64)
    values = (values - values.mean()) / max(float(values.std()), 1e-30)
    return FitBand(
        k2=(y * y + x * x).astype(np.float32),
        cos2=np.cos(theta2).astype(np.float32),
        sin2=np.sin(theta2).astype(np.float32),
        chi_static=ctf_phase(y, x, static).astype(np.float32),
        data=values.astype(np.float32),
        weight=np.ones(values.size, dtype=np.float32),
        wavelength_a=electron_wavelength_a(voltage_kv),
    )


def score_candidates(band: FitBand, candidates: np.ndarray) -> np.ndarray:
    """Weighted correlation of ``band.data`` with sin²(chi) for ``(n, 4)`` candidates.

    Columns: mean defocus, half_c, half_s (Å), phase shift (deg).  Returns ``(n,)``.
    """
    cands = np.atleast_2d(np.asarray(candidates, dtype=np.float32))
    # einsum, not BLAS: these are matrix-vector products, too small to gain from
    # BLAS threads and badly slowed by them on a busy machine.
    weight = (band.weight / np.sum(band.weight, dtype=np.float64)).astype(np.float32)
    centred = band.data - np.float32(np.sum(weight * band.data, dtype=np.float64))
    weighted_data = weight * centred
    data_sd = np.sqrt(np.sum(weighted_data * centred, dtype=np.float64))
    scores = np.empty(len(cands), dtype=np.float64)
    step = max(1, _BATCH_VALUES // max(band.data.size, 1))
    pilk2 = np.float32(np.pi * band.wavelength_a) * band.k2
    for first in range(0, len(cands), step):
        c = cands[first : first + step]
        dz = c[:, 0:1] + c[:, 1:2] * band.cos2 + c[:, 2:3] * band.sin2
        chi = band.chi_static - pilk2 * dz - np.deg2rad(c[:, 3:4])
        model = np.sin(chi)
        model *= model
        mean = np.einsum("ij,j->i", model, weight, dtype=np.float64)
        cov = np.einsum("ij,j->i", model, weighted_data, dtype=np.float64)
        second = np.einsum("ij,ij,j->i", model, model, weight, dtype=np.float64)
        var = second - mean**2
        scores[first : first + step] = cov / np.sqrt(np.maximum(var, 1e-30)) / data_sd
    return scores


def defocus_step_a(band: FitBand) -> float:
    """A quarter of a Thon-ring shift at the highest fitted frequency."""
    return 0.25 / (band.wavelength_a * float(band.k2.max()))


def search_mean_defocus(
    profile_band: FitBand,
    *,
    defocus_range_a: tuple[float, float],
    step_a: float,
    phase_plate: bool,
) -> tuple[float, float]:
    """Exhaustive search of mean defocus (and phase shift) on a rotational average.

    ``profile_band`` holds the shells of the average (``cos2 = sin2`` unused since
    the half-astigmatism is zero).  Returns ``(defocus_mean_a, phase_shift_deg)``.
    """
    low, high = defocus_range_a
    means = np.arange(low, high + 0.5 * step_a, step_a)
    phases = np.arange(0.0, 180.0, 10.0) if phase_plate else np.zeros(1)
    grid = np.array([(d, 0.0, 0.0, p) for p in phases for d in means])
    best = grid[int(np.argmax(score_candidates(profile_band, grid)))]
    return float(best[0]), float(best[3])


def search_astigmatism(
    band: FitBand,
    *,
    defocus_mean_a: float,
    phase_shift_deg: float,
    step_a: float,
    max_astigmatism_a: float,
    phase_plate: bool,
) -> SearchResult:
    """Exhaustive astigmatism grid around a mean defocus, then Nelder-Mead.

    The grid covers mean defocus ``± 2 step_a`` and half-astigmatism components in
    a disk of radius ``max_astigmatism_a / 2``; the refinement frees mean defocus,
    both components and, for phase-plate data, the phase shift.
    """
    half = 0.5 * max_astigmatism_a
    offsets = np.arange(-half, half + 0.5 * step_a, step_a)
    hc, hs = np.meshgrid(offsets, offsets, indexing="ij")
    disk = hc**2 + hs**2 <= half**2 + 1e-6
    shifts = np.arange(-2, 3) * step_a
    n_disk = int(disk.sum())
    grid = np.column_stack(
        [
            np.repeat(defocus_mean_a + shifts, n_disk),
            np.tile(hc[disk], shifts.size),
            np.tile(hs[disk], shifts.size),
            np.full(n_disk * shifts.size, phase_shift_deg),
        ]
    )
    start = grid[int(np.argmax(score_candidates(band, grid)))]
    scale = np.array([step_a, step_a, step_a, 10.0])
    free = 4 if phase_plate else 3

    def negative_score(x: np.ndarray) -> float:
        params = start.copy()
        params[:free] = start[:free] + x * scale[:free]
        return -float(score_candidates(band, params[None, :])[0])

    # scipy.optimize costs ~0.4 s to import: loaded on the first refinement, not by
    # every process that imports the CTF package (the service, the CLI)
    from scipy.optimize import minimize

    result = minimize(
        negative_score,
        np.zeros(free),
        method="Nelder-Mead",
        options={
            "xatol": 0.02,
            "fatol": 1e-6,
            "initial_simplex": np.vstack([np.zeros(free), 0.5 * np.eye(free)]),
            "maxiter": 400 * free,
        },
    )
    final = start.copy()
    final[:free] = start[:free] + result.x * scale[:free]
    return SearchResult(
        defocus_mean_a=float(final[0]),
        half_c_a=float(final[1]),
        half_s_a=float(final[2]),
        phase_shift_deg=float(np.mod(final[3], 180.0)),
        score=-float(result.fun),
    )
