"""Templates for the template picker from ranked 2D classes (cryoSPARC Live's
blob -> 2D -> template loop): which classes become templates, and their averages.

The service's template loop (``livestream.templates``) and the real-data benchmark
(``benchmarks/bench_pick_real.py``, ``blob-2d-template``) both call these, so the
rule has one source; its defaults are the ``[templates]`` config section's
(``livestream.config.TemplatesSection``), passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.errors import StageInputError

__all__ = ["choose_template_classes", "template_averages"]


def choose_template_classes(
    selected: Sequence[int],
    class_counts: Sequence[int],
    *,
    n_particles: int | None = None,
    min_selected_classes: int,
    min_particles: int,
    max_templates: int,
) -> tuple[tuple[int, ...], int] | None:
    """The template classes (1-based, most populated first, ties by number) and
    the particles behind the selection, or ``None`` while fewer than
    ``min_selected_classes`` classes or ``min_particles`` particles are selected.

    ``selected`` are the ranker's selected classes (1-based), ``class_counts`` the
    particles per class (index ``c - 1``); ``n_particles`` the particles behind
    the selection when the ranker counted them (after dropping outliers), else the
    sum of the selected classes' counts."""
    chosen = [int(c) for c in selected]
    counts = [int(n) for n in class_counts]
    bad = [c for c in chosen if not 1 <= c <= len(counts)]
    if bad:
        raise StageInputError(
            "<class2d selection>",
            "selected_classes",
            bad,
            f"classes are 1..{len(counts)}",
        )
    behind = (
        int(n_particles)
        if n_particles is not None
        else sum(counts[c - 1] for c in chosen)
    )
    if len(chosen) < min_selected_classes or behind < min_particles:
        return None
    ordered = sorted(chosen, key=lambda c: (-counts[c - 1], c))
    return tuple(ordered[:max_templates]), behind


def template_averages(
    averages: np.ndarray, classes: Sequence[int], source: str | Path = "<averages>"
) -> np.ndarray:
    """The averages of ``classes`` (1-based) of a class-average stack ``(K, box,
    box)`` (or one ``(box, box)`` image), as float32 ``(n, box, box)``; a class
    outside the stack is an error naming ``source``."""
    data = averages if averages.ndim == 3 else averages[None]
    rows = np.asarray(classes, dtype=np.int64) - 1
    if rows.size == 0 or rows.min() < 0 or rows.max() >= data.shape[0]:
        raise StageInputError(
            source, "classes", list(classes), f"stack holds {data.shape[0]}"
        )
    return np.asarray(data[rows], dtype=np.float32)
