"""Snapshots of a 2D classification for people: a PNG montage and an event payload.

:func:`write_class_montage` draws the class averages best score first, each tile
contrast-stretched on its own (1st-99th percentile), with a caption ``#class
n=particles score`` and a green frame for selected classes, red for rejected ones.
:func:`class2d_payload` is the body of the ``class2d`` event (schema
``livestream.class2d/1``; fields in ``docs/class2d.md``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.class2d.ranker import ClassRanking
from pipelines.class2d.state import Class2dState
from pipelines.errors import StageInputError
from pipelines.io.outputs import write_bytes_atomic

__all__ = ["class2d_payload", "render_class_montage", "write_class_montage"]

_CAPTION_PX = 14
_FRAME_PX = 2


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    low, high = np.percentile(image, [1.0, 99.0])
    scaled = np.clip((image - low) / max(high - low, 1e-12), 0.0, 1.0)
    grey = Image.fromarray((scaled * 255).astype(np.uint8))
    return np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR))


def render_class_montage(
    averages: np.ndarray,
    ranking: ClassRanking,
    *,
    tile_px: int = 96,
    columns: int | None = None,
) -> bytes:
    """PNG bytes of the montage of ``averages`` ``(K, N, N)`` sorted by score."""
    from PIL import Image, ImageDraw

    k = averages.shape[0]
    if averages.ndim != 3 or ranking.scores.shape != (k,):
        raise StageInputError(
            "<array>", "averages", averages.shape, f"need (K, N, N) with K = {k}"
        )
    cols = columns or max(1, math.ceil(math.sqrt(k)))
    rows = math.ceil(k / cols)
    cell_w = tile_px + 2 * _FRAME_PX
    cell_h = cell_w + _CAPTION_PX
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for slot, cls in enumerate(ranking.order):  # K tiles
        x0, y0 = (slot % cols) * cell_w, (slot // cols) * cell_h
        colour = (0, 200, 0) if ranking.selected[cls] else (200, 0, 0)
        draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + cell_w - 1], fill=colour)
        tile = Image.fromarray(_tile(averages[cls], tile_px)).convert("RGB")
        canvas.paste(tile, (x0 + _FRAME_PX, y0 + _FRAME_PX))
        caption = f"#{cls + 1} n={int(ranking.counts[cls])} {ranking.scores[cls]:.2f}"
        draw.text((x0 + 2, y0 + cell_w), caption, fill=(255, 255, 255))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def write_class_montage(
    path: str | Path,
    averages: np.ndarray,
    ranking: ClassRanking,
    *,
    tile_px: int = 96,
) -> Path:
    """Write :func:`render_class_montage` to ``path`` atomically."""
    return write_bytes_atomic(
        path, render_class_montage(averages, ranking, tile_px=tile_px)
    )


def class2d_payload(
    state: Class2dState,
    ranking: ClassRanking,
    *,
    classes_mrcs: str | Path,
    montage_png: str | Path,
    selected_star: str | Path | None = None,
) -> dict[str, Any]:
    """The ``class2d`` event body (plain JSON values; no NaN or infinity).

    ``selected_particles`` counts the selection after the particle-level stage;
    ``particle_outliers`` is how many particles of selected classes that stage
    dropped (null when it did not run) with its ``particle_outlier_mad``."""
    counts = [int(c) for c in ranking.counts]
    resolution = ranking.features.resolution_a
    active = ranking.counts > 0
    finite = np.isfinite(resolution) & active
    best = float(resolution[finite].min()) if finite.any() else None
    outliers = ranking.particle_outliers
    return {
        "iteration": int(state.minibatch_index),
        "particles_seen": int(state.particles_seen),
        "particles_processed": int(state.particles_processed),
        "active_classes": int(np.count_nonzero(active)),
        "selected_classes": [int(c) + 1 for c in np.nonzero(ranking.selected)[0]],
        "selected_particles": ranking.n_selected_particles,
        "particle_outliers": (
            None if outliers is None else int(np.count_nonzero(outliers.outlier))
        ),
        "particle_outlier_mad": None if outliers is None else outliers.outlier_mad,
        "resolution_a": None if best is None else round(best, 2),
        "class_counts": counts,
        "class_scores": [round(float(s), 4) for s in ranking.scores],
        "class_resolution_a": [
            round(float(r), 2) if np.isfinite(r) else None for r in resolution
        ],
        "score_threshold": float(ranking.threshold),
        "classes_mrcs": str(classes_mrcs),
        "montage_png": str(montage_png),
        "selected_star": None if selected_star is None else str(selected_star),
    }
