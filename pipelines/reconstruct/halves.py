"""Gold-standard reconstruction: two independent half maps, their FSC and the full map.

The halves are first reconstructed with a nearly flat regulariser (a constant
spectral SNR of :data:`FIRST_PASS_SSNR`); their FSC gives the SSNR of each shell
(RELION's ``tau2`` update: ``FSC / (1 - FSC)``), with which both halves are
reconstructed again, and the full map from both halves' sums with the FSC of the
whole map (``sqrt(2 FSC / (1 + FSC))``).  A fixed ``ssnr`` skips the first pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.errors import StageInputError
from pipelines.reconstruct.backproject import (
    DEFAULT_PADDING,
    FourierSums,
    backproject,
    ssnr_from_fsc,
    weights_to_map,
)
from pipelines.reconstruct.fsc import FscCurve, fourier_shell_correlation
from pipelines.reconstruct.particles import PosedParticles

__all__ = [
    "FIRST_PASS_SSNR",
    "Reconstruction",
    "maps_from_sums",
    "reconstruct_halves",
]

FIRST_PASS_SSNR = 1000.0
"""Spectral SNR of the first, nearly unregularised pass (before the FSC is known)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconstruction:
    """Half maps and full map ``(N, N, N)`` float32 and the FSC of the halves."""

    half1: np.ndarray
    half2: np.ndarray
    full: np.ndarray
    fsc: FscCurve
    pixel_size_a: float
    symmetry: str
    n_half1: int
    n_half2: int

    @property
    def resolution_a(self) -> float:
        """Gold-standard resolution: where the half-map FSC falls below 0.143."""
        return self.fsc.crossing_a()


def reconstruct_halves(
    particles: PosedParticles,
    *,
    symmetry: str = "C1",
    padding: int = DEFAULT_PADDING,
    ctf_correct: bool = True,
    ssnr: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Reconstruction:
    """Reconstruct both halves (``particles.subset``) and the full map.

    ``on_progress(done, total)``, if given, is called after each batch of
    particles inserted (``total`` = both halves).
    """
    rows1 = np.nonzero(particles.subset == 1)[0]
    rows2 = np.nonzero(particles.subset == 2)[0]
    if len(rows1) == 0 or len(rows2) == 0:
        raise StageInputError(
            "<particles>",
            "subset",
            (len(rows1), len(rows2)),
            "both half sets need particles",
        )
    total = len(rows1) + len(rows2)

    def progress_from(offset: int) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None
        report = on_progress
        return lambda done, _: report(offset + done, total)

    sums1, sums2 = (
        backproject(
            particles,
            rows=rows,
            symmetry=symmetry,
            padding=padding,
            ctf_correct=ctf_correct,
            on_progress=progress_from(offset),
        )
        for rows, offset in ((rows1, 0), (rows2, len(rows1)))
    )
    return maps_from_sums(
        sums1, sums2, pixel_size_a=particles.pixel_size_a, symmetry=symmetry, ssnr=ssnr
    )


def maps_from_sums(
    sums1: FourierSums,
    sums2: FourierSums,
    *,
    pixel_size_a: float,
    symmetry: str = "C1",
    ssnr: float | None = None,
    tau2_fudge: float = 1.0,
) -> Reconstruction:
    """Half maps, full map and FSC from the two halves' Fourier sums (see the
    module docstring); ``tau2_fudge`` multiplies the SSNR (RELION's ``T``)."""
    both = sums1 + sums2
    px = pixel_size_a
    if ssnr is not None:
        half1 = weights_to_map(sums1, ssnr=ssnr)
        half2 = weights_to_map(sums2, ssnr=ssnr)
        full = weights_to_map(both, ssnr=ssnr)
    else:
        first = fourier_shell_correlation(
            weights_to_map(sums1, ssnr=FIRST_PASS_SSNR),
            weights_to_map(sums2, ssnr=FIRST_PASS_SSNR),
            px,
        )
        half_ssnr = tau2_fudge * ssnr_from_fsc(first.fsc)
        whole_ssnr = tau2_fudge * ssnr_from_fsc(first.fsc, whole_map=True)
        half1 = weights_to_map(sums1, ssnr=half_ssnr)
        half2 = weights_to_map(sums2, ssnr=half_ssnr)
        full = weights_to_map(both, ssnr=whole_ssnr)
    return Reconstruction(
        half1=half1,
        half2=half2,
        full=full,
        fsc=fourier_shell_correlation(half1, half2, px),
        pixel_size_a=px,
        symmetry=symmetry.strip().upper(),
        n_half1=sums1.n_particles,
        n_half2=sums2.n_particles,
    )
