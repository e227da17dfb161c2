"""Fourier shell correlation between two maps, and where it crosses a threshold.

Shell ``i`` holds the Fourier voxels whose radius rounds to ``i`` (in units of
``1 / (N * pixel_size_a)``), ``i = 0 .. N // 2``.  A crossing is the first shell
whose FSC is below the threshold, placed between it and the shell before by linear
interpolation in spectral index; a curve that never falls below it crosses at
Nyquist (``2 * pixel_size_a``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from pipelines.errors import StageInputError

__all__ = ["FscCurve", "fourier_shell_correlation", "shell_index_grid"]

GOLD_STANDARD_THRESHOLD = 0.143
"""FSC threshold of the gold-standard resolution (Rosenthal & Henderson 2003)."""


def shell_index_grid(box_px: int) -> np.ndarray:
    """Rounded radius ``(N, N, N // 2 + 1)`` int of each voxel of ``rfftn`` of a cube."""
    k = np.fft.fftfreq(box_px) * box_px
    kx = np.fft.rfftfreq(box_px) * box_px
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx**2)
    return np.asarray(np.rint(radius), dtype=np.int64)


@dataclass(frozen=True, slots=True, kw_only=True)
class FscCurve:
    """FSC ``(N // 2 + 1,)`` per shell with its resolutions."""

    fsc: np.ndarray
    box_px: int
    pixel_size_a: float

    @property
    def spectral_index(self) -> np.ndarray:
        return np.arange(len(self.fsc))

    @property
    def resolution_per_a(self) -> np.ndarray:
        """Spatial frequency of each shell in 1/Å."""
        return self.spectral_index / (self.box_px * self.pixel_size_a)

    @property
    def resolution_a(self) -> np.ndarray:
        """Resolution of each shell in Å (``inf`` at shell 0)."""
        with np.errstate(divide="ignore"):
            return np.asarray(1.0 / self.resolution_per_a)

    def crossing_index(self, threshold: float) -> float:
        """Fractional spectral index where the FSC first falls below ``threshold``."""
        below = np.nonzero(self.fsc[1:] < threshold)[0]
        if len(below) == 0:
            return float(len(self.fsc) - 1)
        i = int(below[0]) + 1
        high, low = float(self.fsc[i - 1]), float(self.fsc[i])
        return (i - 1) + (high - threshold) / (high - low) if high > low else float(i)

    def crossing_a(self, threshold: float = GOLD_STANDARD_THRESHOLD) -> float:
        """Resolution in Å where the FSC first falls below ``threshold``."""
        index = self.crossing_index(threshold)
        if index <= 0:
            return float("inf")
        return float(self.box_px * self.pixel_size_a / index)


def _cube(volume: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(volume)
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise StageInputError("<array>", name, array.shape, "must be a cube (N, N, N)")
    if not np.issubdtype(array.dtype, np.floating):
        raise StageInputError("<array>", name, array.dtype, "must be real floating")
    return array


def shell_sums(values: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
    """Sum of ``values`` over each shell of an rfft half grid (``n_shells``,).

    The x = 0 plane (and x = Nyquist for even N) holds each value once per
    Hermitian pair; other planes stand for two voxels of the full transform, so
    they count twice, as in a full-grid sum.
    """
    multiplicity = np.full(values.shape[-1], 2.0)
    multiplicity[0] = 1.0
    if values.shape[0] % 2 == 0:
        multiplicity[-1] = 1.0
    weighted = values * multiplicity
    inside = shells < n_shells
    return np.bincount(shells[inside], weighted[inside], minlength=n_shells)


def fourier_shell_correlation(
    map1: np.ndarray, map2: np.ndarray, pixel_size_a: float
) -> FscCurve:
    """FSC of two maps ``(N, N, N)`` per shell ``0 .. N // 2``."""
    a = _cube(map1, "map1")
    b = _cube(map2, "map2")
    if a.shape != b.shape:
        raise StageInputError("<array>", "map2", b.shape, f"must match {a.shape}")
    box = a.shape[0]
    fa = scipy.fft.rfftn(a.astype(np.float64))
    fb = scipy.fft.rfftn(b.astype(np.float64))
    shells = shell_index_grid(box)
    n = box // 2 + 1
    cross = shell_sums((fa * np.conj(fb)).real, shells, n)
    pa = shell_sums(np.abs(fa) ** 2, shells, n)
    pb = shell_sums(np.abs(fb) ** 2, shells, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(pa * pb > 0, cross / np.sqrt(pa * pb), 0.0)
    return FscCurve(fsc=fsc, box_px=box, pixel_size_a=float(pixel_size_a))
