"""Initial references (Gaussian blobs, different per class) and the solvent mask."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import StageInputError

__all__ = ["circular_mask", "gaussian_blob_references"]


def circular_mask(
    box_px: int, radius_px: float, *, edge_px: float = 3.0
) -> NDArray[np.float32]:
    """A soft disc ``(N, N)`` float32 centred on pixel ``N // 2``: 1 inside
    ``radius_px``, a raised-cosine edge of ``edge_px``, 0 beyond."""
    c = box_px // 2
    y, x = np.mgrid[:box_px, :box_px]
    r: NDArray[np.float64] = np.hypot(x - c, y - c)
    edge = np.clip((r - radius_px) / max(edge_px, 1e-6), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * edge)).astype(np.float32)


def gaussian_blob_references(
    n_classes: int,
    box_px: int,
    radius_px: float,
    rng: np.random.Generator,
    *,
    n_blobs: int = 6,
) -> NDArray[np.float32]:
    """``(K, N, N)`` float32: per class a sum of ``n_blobs`` random Gaussians inside
    the particle radius, each reference scaled to unit peak."""
    if n_classes < 1 or radius_px <= 1:
        raise StageInputError(
            "<argument>", "n_classes/radius_px", (n_classes, radius_px), "need K >= 1"
        )
    c = box_px // 2
    angle = rng.uniform(0, 2 * np.pi, (n_classes, n_blobs))
    dist = 0.6 * radius_px * np.sqrt(rng.uniform(0, 1, (n_classes, n_blobs)))
    cx = c + dist * np.cos(angle)
    cy = c + dist * np.sin(angle)
    sigma = radius_px * rng.uniform(0.15, 0.35, (n_classes, n_blobs))
    amplitude = rng.uniform(0.5, 1.0, (n_classes, n_blobs))
    y, x = np.mgrid[:box_px, :box_px].astype(np.float64)
    d2 = (x[None, None] - cx[..., None, None]) ** 2 + (
        y[None, None] - cy[..., None, None]
    ) ** 2
    blobs = amplitude[..., None, None] * np.exp(-0.5 * d2 / sigma[..., None, None] ** 2)
    refs: NDArray[np.float64] = blobs.sum(axis=1)
    refs /= refs.max(axis=(1, 2), keepdims=True)
    return refs.astype(np.float32)
