"""RELION-style outputs of a 2D classification: class averages, model and data STAR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.class2d.assignment import Assignment
from pipelines.class2d.ranker import ClassRanking
from pipelines.class2d.state import Class2dConfig, Class2dState
from pipelines.class2d.vdam import class_resolution_a
from pipelines.io.outputs import write_mrc, write_star

__all__ = ["Class2dOutputs", "write_class2d_outputs"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Class2dOutputs:
    classes_mrcs: Path
    model_star: Path
    data_star: Path
    selected_star: Path


def write_class2d_outputs(
    folder: str | Path,
    config: Class2dConfig,
    state: Class2dState,
    assignment: Assignment,
    optics: Any,
    particles_table: Any,
    *,
    float16: bool = False,
    root: str = "run",
    ranking: ClassRanking | None = None,
) -> Class2dOutputs:
    """Write ``<root>_classes.mrcs``, ``<root>_model.star`` (data_model_classes),
    ``<root>_data.star`` (particles with class, psi, origin, max probability) and
    ``<root>_selected.star``: the particles ``ranking`` selects (classes and the
    particle-level stage), or without a ranking those of non-empty classes."""
    import pandas as pd

    out = Path(folder)
    classes_path = write_mrc(
        out / f"{root}_classes.mrcs",
        state.references,
        pixel_size_a=config.pixel_size_a,
        float16=float16,
        is_stack=True,
    )
    k = config.n_classes
    counts = assignment.class_counts(k)
    resolution = class_resolution_a(config, state)
    model = pd.DataFrame(
        {
            "rlnReferenceImage": [
                f"{i:06d}@{classes_path.name}" for i in range(1, k + 1)
            ],
            "rlnClassDistribution": counts / max(counts.sum(), 1),
            "rlnAccuracyRotations": np.full(k, config.psi_step_deg),
            "rlnAccuracyTranslationsAngst": np.full(
                k, config.offset_step_px * config.pixel_size_a
            ),
            "rlnEstimatedResolution": np.where(
                np.isfinite(resolution), resolution, 999.0
            ),
            "rlnClassPriorOffsetX": np.zeros(k),
            "rlnClassPriorOffsetY": np.zeros(k),
        }
    )
    general = {
        "rlnReferenceDimensionality": 2,
        "rlnOriginalImageSize": config.box_px,
        "rlnPixelSize": config.pixel_size_a,
        "rlnNrClasses": k,
        "rlnCurrentIteration": state.minibatch_index,
    }
    model_path = write_star(
        out / f"{root}_model.star",
        {"model_general": general, "model_classes": model},
    )
    table = assignment.relion_table(particles_table, config.pixel_size_a)
    data_path = write_star(
        out / f"{root}_data.star", {"optics": optics, "particles": table}
    )
    if ranking is None:
        keep = counts[assignment.class_index] > 0
    else:
        keep = ranking.selected_particles(assignment)
    selected_path = write_star(
        out / f"{root}_selected.star", {"optics": optics, "particles": table[keep]}
    )
    return Class2dOutputs(
        classes_mrcs=classes_path,
        model_star=model_path,
        data_star=data_path,
        selected_star=selected_path,
    )
