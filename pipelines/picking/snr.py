"""Per-particle signal-to-noise ratio, the convention the picker accuracy is stated in.

The conventional cryo-EM definition (Frank & Al-Ali 1975; the one simulation
packages such as ASPIRE use): the variance of the noise-free particle image over the
noise variance, both over the particle's box.  Here the noise-free image is the
micrograph *after* the CTF (and everything else the simulator applies), minus its
background level (the median), and the box is a square of ``box_px`` about each true
centre (for a map, its own box: the box the projections are made in).  The signal
variance is the mean over particles of the variance inside their boxes.
"""

from __future__ import annotations

import numpy as np

from pipelines.errors import StageInputError

__all__ = ["noise_sd_for_snr", "particle_signal_variance"]


def particle_signal_variance(
    clean: np.ndarray, centres_px: np.ndarray, *, box_px: int
) -> float:
    """Mean variance of the noise-free ``clean`` ``(ny, nx)`` image in ``box_px``
    square boxes about ``centres_px`` (``(n, 2)``, ``[x, y]``), clipped at the edges."""
    image = np.asarray(clean, dtype=np.float64)
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if image.ndim != 2 or len(centres) == 0 or box_px < 2:
        raise StageInputError(
            "<array>", "centres_px", centres.shape, "need a 2D image, centres, box ≥ 2"
        )
    image = image - np.median(image)
    offsets = np.arange(box_px) - box_px // 2
    rows = np.clip(np.round(centres[:, 1]).astype(int)[:, None] + offsets, 0, None)
    cols = np.clip(np.round(centres[:, 0]).astype(int)[:, None] + offsets, 0, None)
    rows = np.minimum(rows, image.shape[0] - 1)
    cols = np.minimum(cols, image.shape[1] - 1)
    boxes = image[rows[:, :, None], cols[:, None, :]]  # (n, box, box), one gather
    return float(boxes.var(axis=(1, 2)).mean())


def noise_sd_for_snr(
    clean: np.ndarray, centres_px: np.ndarray, *, box_px: int, snr: float
) -> float:
    """Standard deviation of white noise that gives ``clean`` the per-particle ``snr``."""
    if snr <= 0:
        raise StageInputError("<array>", "snr", snr, "must be positive")
    return float(
        np.sqrt(particle_signal_variance(clean, centres_px, box_px=box_px) / snr)
    )
