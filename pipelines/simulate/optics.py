"""Optics and detector response: CTF, detector MTF, radiation damage by dose.

- CTF: :mod:`pipelines.ctf.model` (RELION conventions).  A raw micrograph has dark
  particles, so the simulator forms contrast with ``-ctf`` (:func:`apply_ctf`).
- MTF: RELION MTF STAR files (``rlnResolutionInversePixel``, ``rlnMtfValue``; the
  frequency is in 1/pixel, Nyquist = 0.5) read by :func:`read_mtf`.
- Damage: Grant & Grigorieff (2015) critical exposure
  ``N_e(k) = a k^b + c`` (a = 0.245, b = -1.665, c = 2.81, k in 1/Å, e/Å²) at 300 kV,
  times 0.8 at 200 kV (linear in between, clamped outside); a frame whose
  accumulated dose is N keeps ``exp(-N / (2 N_e(k)))`` of its amplitude.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from pipelines.ctf.model import CtfParams, ctf_2d, frequency_grid
from pipelines.errors import StageInputError

__all__ = [
    "apply_ctf",
    "apply_mtf",
    "critical_exposure_e_per_a2",
    "damage_filter",
    "mtf_2d",
    "read_mtf",
]

_GG_A = 0.245
_GG_B = -1.665
_GG_C = 2.81


def apply_ctf(
    image: np.ndarray, pixel_size_a: float, params: CtfParams, *, workers: int = -1
) -> NDArray[np.float32]:
    """``image`` ``(..., ny, nx)`` filtered by ``-ctf`` (raw-micrograph sign), float32."""
    img = np.asarray(image, dtype=np.float32)
    ctf = ctf_2d(img.shape[-2:], pixel_size_a, params)
    ft = scipy.fft.rfft2(img, workers=workers)
    filtered: NDArray[np.float32] = scipy.fft.irfft2(
        -ctf * ft, s=img.shape[-2:], workers=workers
    )
    return filtered.astype(np.float32)


def read_mtf(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A RELION MTF STAR file -> ``(frequency as a fraction of Nyquist, mtf)``.

    RELION stores the frequency in 1/pixel (``rlnResolutionInversePixel``, 0..0.5);
    the first array is twice that (0..1 = Nyquist).
    """
    import starfile

    path = Path(path)
    try:
        table = starfile.read(path, always_dict=True)
    except (OSError, ValueError) as error:
        raise StageInputError(
            path, "file", None, f"cannot read STAR: {error}"
        ) from error
    for block in table.values():
        if hasattr(block, "columns") and "rlnResolutionInversePixel" in block.columns:
            if "rlnMtfValue" not in block.columns:
                raise StageInputError(path, "rlnMtfValue", None, "column missing")
            freq = 2.0 * block["rlnResolutionInversePixel"].to_numpy(dtype=np.float64)
            mtf = block["rlnMtfValue"].to_numpy(dtype=np.float64)
            if freq.size < 2 or np.any(np.diff(freq) <= 0):
                raise StageInputError(
                    path,
                    "rlnResolutionInversePixel",
                    freq.size,
                    "needs increasing values",
                )
            return freq, mtf
    raise StageInputError(
        path, "rlnResolutionInversePixel", None, "no MTF table in file"
    )


def mtf_2d(
    shape: tuple[int, int], freq_fraction_nyquist: np.ndarray, mtf: np.ndarray
) -> NDArray[np.float32]:
    """The MTF on the ``rfft2`` grid of ``shape`` (ny, nx), float32 (radial, linear interp)."""
    ky, kx = frequency_grid(shape, 1.0)  # cycles per pixel
    radius = 2.0 * np.sqrt(ky * ky + kx * kx)  # fraction of Nyquist
    grid: NDArray[np.float64] = np.interp(
        radius, freq_fraction_nyquist, mtf, right=mtf[-1]
    )
    return grid.astype(np.float32)


def apply_mtf(
    image: np.ndarray,
    freq_fraction_nyquist: np.ndarray,
    mtf: np.ndarray,
    *,
    workers: int = -1,
) -> NDArray[np.float32]:
    """``image`` ``(..., ny, nx)`` blurred by the detector MTF, float32."""
    img = np.asarray(image, dtype=np.float32)
    ft = scipy.fft.rfft2(img, workers=workers)
    ft *= mtf_2d(img.shape[-2:], freq_fraction_nyquist, mtf)
    blurred: NDArray[np.float32] = scipy.fft.irfft2(
        ft, s=img.shape[-2:], workers=workers
    )
    return blurred.astype(np.float32)


def _voltage_factor(voltage_kv: float) -> float:
    return float(np.clip(0.8 + 0.2 * (voltage_kv - 200.0) / 100.0, 0.8, 1.0))


def critical_exposure_e_per_a2(k_per_a: np.ndarray, voltage_kv: float) -> np.ndarray:
    """Grant & Grigorieff critical exposure (e/Å²) at spatial frequency ``k`` (1/Å).

    Infinite at k = 0 (no damage to the mean).
    """
    k = np.asarray(k_per_a, dtype=np.float64)
    with np.errstate(divide="ignore"):
        ne = _GG_A * np.power(np.where(k > 0, k, 1.0), _GG_B) + _GG_C
    return np.where(k > 0, ne * _voltage_factor(voltage_kv), np.inf)


def damage_filter(
    shape: tuple[int, int],
    pixel_size_a: float,
    accumulated_dose_e_per_a2: float | np.ndarray,
    voltage_kv: float,
) -> np.ndarray:
    """``exp(-N / (2 N_e(k)))`` on the ``rfft2`` grid of ``shape``, float32.

    With an array of doses ``(n,)`` the result is ``(n, ny, nx // 2 + 1)``.
    """
    ky, kx = frequency_grid(shape, pixel_size_a)
    ne = critical_exposure_e_per_a2(np.sqrt(ky * ky + kx * kx), voltage_kv)
    dose = np.asarray(accumulated_dose_e_per_a2, dtype=np.float64)
    if np.any(dose < 0):
        raise StageInputError(
            "<argument>", "accumulated_dose_e_per_a2", dose, "must be >= 0"
        )
    out = np.exp(-dose[..., None, None] / (2.0 * ne))
    return out.astype(np.float32)
