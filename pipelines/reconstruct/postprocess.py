"""Post-processing of two half maps, as ``relion_postprocess`` does.

1. FSC of the unmasked halves; the shell where it first falls below
   :data:`RANDOMISE_BELOW_FSC` (0.8) is where phase randomisation starts.
2. FSC of the masked halves (``FSC_t``) and of the masked halves whose phases beyond
   that shell were randomised (``FSC_n``); beyond it the true FSC is
   ``(FSC_t - FSC_n) / (1 - FSC_n)`` (Chen et al. 2013), below it ``FSC_t``.
3. Resolution: where the corrected FSC falls below 0.143.
4. The average of the halves, divided by the detector MTF if one is given, has its
   B-factor fitted on the Guinier plot (``ln`` of the mean Fourier amplitude of the
   masked map against ``1/d^2``, from :data:`GUINIER_LOW_A` (10 Å) to the
   resolution); ``bfactor_a2`` is RELION's sign: ``4 * slope``, negative for a map
   whose amplitudes fall off.
5. Sharpening: multiply by ``exp(-bfactor_a2 / 4 * s^2)``, weight each shell by
   ``sqrt(2 FSC / (1 + FSC))`` of the corrected FSC and low-pass at the resolution
   (raised cosine, :data:`~pipelines.reconstruct.mask.LOWPASS_EDGE_SHELLS` wide).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import starfile

from pipelines.errors import StageInputError
from pipelines.reconstruct.fsc import (
    GOLD_STANDARD_THRESHOLD,
    FscCurve,
    fourier_shell_correlation,
    shell_index_grid,
    shell_sums,
)
from pipelines.reconstruct.mask import raised_cosine_filter

__all__ = [
    "GUINIER_LOW_A",
    "RANDOMISE_BELOW_FSC",
    "DetectorMtf",
    "PostprocessResult",
    "postprocess",
    "randomise_phases",
    "read_mtf_star",
]

RANDOMISE_BELOW_FSC = 0.8
"""Phases are randomised beyond the shell where the unmasked FSC falls below this."""
GUINIER_LOW_A = 10.0
"""Lowest resolution (Å) of the Guinier fit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorMtf:
    """A detector MTF: ``value`` at ``frequency_per_px`` (1 / detector pixel, 0-0.5)."""

    frequency_per_px: np.ndarray
    value: np.ndarray
    detector_pixel_size_a: float

    def at(self, frequency_per_a: np.ndarray) -> np.ndarray:
        """The MTF at spatial frequencies in 1/Å (held at its last value beyond)."""
        f = np.asarray(frequency_per_a) * self.detector_pixel_size_a
        return np.asarray(np.interp(f, self.frequency_per_px, self.value))


def read_mtf_star(path: str | Path, *, detector_pixel_size_a: float) -> DetectorMtf:
    """Read a RELION MTF STAR (``rlnResolutionInversePixel``, ``rlnMtfValue``)."""
    path = Path(path)
    if not path.is_file():
        raise StageInputError(path, "file", str(path), "no such MTF STAR file")
    table = starfile.read(path)
    if isinstance(table, dict):
        table = next(iter(table.values()))
    for column in ("rlnResolutionInversePixel", "rlnMtfValue"):
        if column not in table.columns:
            raise StageInputError(path, column, None, "column missing")
    value = table["rlnMtfValue"].to_numpy(dtype=np.float64)
    if (value <= 0).any():
        raise StageInputError(path, "rlnMtfValue", value.min(), "must be > 0")
    return DetectorMtf(
        frequency_per_px=table["rlnResolutionInversePixel"].to_numpy(dtype=np.float64),
        value=value,
        detector_pixel_size_a=float(detector_pixel_size_a),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PostprocessResult:
    """FSC curves, resolution, B-factor and the sharpened maps ``(N, N, N)``."""

    fsc_unmasked: FscCurve
    fsc_masked: FscCurve
    fsc_phase_randomised: FscCurve
    fsc_corrected: FscCurve
    randomise_from_shell: int
    resolution_a: float
    bfactor_a2: float
    guinier_s2_per_a2: np.ndarray
    guinier_ln_amplitude: np.ndarray
    sharpened: np.ndarray
    sharpened_masked: np.ndarray


def randomise_phases(
    volume: np.ndarray, from_shell: int, rng: np.random.Generator
) -> np.ndarray:
    """``volume`` with uniformly random phases in every shell ``> from_shell``."""
    vol = np.asarray(volume, dtype=np.float64)
    ft = scipy.fft.rfftn(vol)
    beyond = shell_index_grid(vol.shape[0]) > from_shell
    phases = rng.uniform(0.0, 2.0 * np.pi, int(beyond.sum()))
    ft[beyond] = np.abs(ft[beyond]) * np.exp(1j * phases)
    return np.asarray(scipy.fft.irfftn(ft, s=vol.shape), dtype=np.float32)


def _guinier(
    volume: np.ndarray, pixel_size_a: float, mtf: DetectorMtf | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transform (MTF-divided), s^2 per shell and ln mean amplitude per shell."""
    box = volume.shape[0]
    ft = scipy.fft.rfftn(np.asarray(volume, dtype=np.float64))
    shells = shell_index_grid(box)
    frequency = np.minimum(shells, box // 2) / (box * pixel_size_a)
    if mtf is not None:
        ft = ft / mtf.at(frequency)
    n = box // 2 + 1
    amplitude = shell_sums(np.abs(ft), shells, n) / np.maximum(
        shell_sums(np.ones(ft.shape), shells, n), 1.0
    )
    s2 = (np.arange(n) / (box * pixel_size_a)) ** 2
    with np.errstate(divide="ignore"):
        return ft, s2, np.log(amplitude)


def postprocess(
    half1: np.ndarray,
    half2: np.ndarray,
    mask: np.ndarray,
    *,
    pixel_size_a: float,
    mtf: DetectorMtf | None = None,
    bfactor_a2: float | None = None,
    rng: np.random.Generator | None = None,
) -> PostprocessResult:
    """Masked, phase-randomisation-corrected FSC, B-factor and sharpened map.

    ``bfactor_a2`` forces the sharpening B-factor (RELION's ``--adhoc_bfac``); by
    default it is fitted.  ``rng`` draws the random phases (default: seeded 0, so
    a result is reproducible).
    """
    shapes = {np.shape(half1), np.shape(half2), np.shape(mask)}
    if len(shapes) != 1:
        raise StageInputError(
            "<array>", "half1/half2/mask", sorted(shapes), "must all be one shape"
        )
    generator = np.random.default_rng(0) if rng is None else rng
    px = float(pixel_size_a)
    h1 = np.asarray(half1, dtype=np.float64)
    h2 = np.asarray(half2, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    box = h1.shape[0]
    unmasked = fourier_shell_correlation(h1, h2, px)
    masked = fourier_shell_correlation(h1 * m, h2 * m, px)
    below = np.nonzero(unmasked.fsc[1:] < RANDOMISE_BELOW_FSC)[0]
    start = int(below[0]) + 1 if len(below) else len(unmasked.fsc) - 1
    randomised = fourier_shell_correlation(
        randomise_phases(h1, start, generator) * m,
        randomise_phases(h2, start, generator) * m,
        px,
    )
    corrected_values = masked.fsc.copy()
    tail = slice(start + 1, None)
    fsc_n = np.minimum(randomised.fsc[tail], 0.999)
    corrected_values[tail] = (masked.fsc[tail] - fsc_n) / (1.0 - fsc_n)
    corrected = FscCurve(fsc=corrected_values, box_px=box, pixel_size_a=px)
    resolution_a = corrected.crossing_a(GOLD_STANDARD_THRESHOLD)
    average = 0.5 * (h1 + h2)
    _, s2, ln_amplitude = _guinier(average * m, px, mtf)
    ft, _, _ = _guinier(average, px, mtf)
    if bfactor_a2 is None:
        fit = (s2 >= 1.0 / GUINIER_LOW_A**2) & (s2 <= 1.0 / resolution_a**2)
        fit &= np.isfinite(ln_amplitude)
        if fit.sum() < 3:
            raise StageInputError(
                "<maps>",
                "resolution_a",
                round(resolution_a, 2),
                f"too few shells between {GUINIER_LOW_A} Å and it for a Guinier fit",
            )
        slope = np.polyfit(s2[fit], ln_amplitude[fit], 1)[0]
        bfactor_a2 = float(4.0 * slope)
    shells = shell_index_grid(box)
    s2_grid = (shells / (box * px)) ** 2
    weight_per_shell = np.sqrt(
        np.clip(2.0 * corrected.fsc / (1.0 + corrected.fsc), 0.0, None)
    )
    weight_per_shell = np.append(weight_per_shell, 0.0)  # corners beyond Nyquist
    filt = (
        np.exp(-0.25 * bfactor_a2 * s2_grid)
        * weight_per_shell[np.minimum(shells, box // 2 + 1)]
        * raised_cosine_filter(shells, box * px / resolution_a)
    )
    sharpened = np.asarray(scipy.fft.irfftn(ft * filt, s=h1.shape), dtype=np.float32)
    return PostprocessResult(
        fsc_unmasked=unmasked,
        fsc_masked=masked,
        fsc_phase_randomised=randomised,
        fsc_corrected=corrected,
        randomise_from_shell=start,
        resolution_a=resolution_a,
        bfactor_a2=float(bfactor_a2),
        guinier_s2_per_a2=s2,
        guinier_ln_amplitude=ln_amplitude,
        sharpened=sharpened,
        sharpened_masked=(sharpened * m).astype(np.float32),
    )
