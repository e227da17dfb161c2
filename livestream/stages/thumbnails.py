"""Small PNG previews for the dashboard: a micrograph with its picks circled
(written by the pick stage, or rendered on demand by :mod:`livestream.dashboard`).

The micrograph is block-averaged to at most ``max_px`` on its long side, clipped
to mean ± 3 σ and drawn in grey; each pick is a circle of its diameter (or the
picker's smallest diameter when a pick has none).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipelines.io.outputs import write_bytes_atomic

__all__ = ["render_pick_overlay", "write_pick_overlay"]


def _bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    cropped = image[:ny, :nx].astype(np.float32)
    binned: np.ndarray = cropped.reshape(
        ny // factor, factor, nx // factor, factor
    ).mean(axis=(1, 3))
    return binned


def render_pick_overlay(
    micrograph: np.ndarray,
    x_px: np.ndarray,
    y_px: np.ndarray,
    diameter_px: np.ndarray,
    *,
    max_px: int = 256,
) -> bytes:
    """PNG bytes of ``micrograph`` ``(ny, nx)`` with circles at ``(x_px, y_px)``."""
    from PIL import Image, ImageDraw

    if micrograph.ndim != 2:
        raise ValueError(f"micrograph must be 2D, got shape {micrograph.shape}")
    factor = max(1, int(np.ceil(max(micrograph.shape) / max_px)))
    small = _bin_image(micrograph, factor)
    mean, sd = float(small.mean()), float(small.std()) or 1.0
    scaled = np.clip((small - mean) / (6.0 * sd) + 0.5, 0.0, 1.0)
    picture = Image.fromarray((scaled * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    radii = np.nan_to_num(diameter_px, nan=0.0) / (2.0 * factor)
    for x, y, r in zip(x_px / factor, y_px / factor, radii, strict=True):
        radius = max(float(r), 2.0)
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius), outline=(255, 64, 64)
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write_pick_overlay(
    path: Path,
    micrograph: np.ndarray,
    x_px: np.ndarray,
    y_px: np.ndarray,
    diameter_px: np.ndarray,
    *,
    max_px: int = 256,
) -> Path:
    """Write :func:`render_pick_overlay` as PNG to ``path``, atomically."""
    if micrograph.ndim != 2:
        raise ValueError(f"{path}: micrograph must be 2D, got shape {micrograph.shape}")
    png = render_pick_overlay(micrograph, x_px, y_px, diameter_px, max_px=max_px)
    return write_bytes_atomic(path, png)
